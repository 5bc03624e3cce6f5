from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import Cancelled, OutputError
from engine.fileio import atomic_dir, atomic_write_json, ensure_writable_dir
from engine.jobs import CancelToken, ProgressEvent, Throttle


def test_cancel_token_raises_after_cancel() -> None:
    tok = CancelToken()
    tok.raise_if_cancelled()
    tok.cancel()
    with pytest.raises(Cancelled):
        tok.raise_if_cancelled()


def test_throttle_passes_final_event() -> None:
    seen: list[ProgressEvent] = []
    th = Throttle(seen.append, interval_s=10.0)
    for i in range(1, 101):
        th(ProgressEvent("x", i, 100))
    assert seen[0].step == 1 and seen[-1].step == 100 and len(seen) == 2


def test_atomic_json_interrupted_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_failure_keeps_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as d:
        (d / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_dir_is_output_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError):
        ensure_writable_dir(f / "sub")


def test_atomic_outputs_get_normal_permissions(tmp_path: Path) -> None:
    """Results land with the permissions of a plain write (lab colleagues can read them)."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_json(tmp_path / "a.json", {"v": 1})
    with atomic_dir(tmp_path / "slide") as d:
        (d / "x.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "slide").stat().st_mode) == 0o777 & ~umask
