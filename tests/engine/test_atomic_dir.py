"""Atomic folder replacement survives a crash between its two renames."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import engine.fileio as fileio
from engine.fileio import atomic_dir, old_dir, recover_dir


def _write(path: Path, text: str) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "result.txt").write_text(text)


def _crash_between_renames(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Run a replacement whose process "dies" right after the first rename."""
    real = os.replace
    calls: list[tuple] = []

    def replace(src: os.PathLike, dst: os.PathLike) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    monkeypatch.setattr(fileio, "recover_dir", lambda p: Path(p))  # a real crash runs no cleanup
    with pytest.raises(KeyboardInterrupt):
        _write(path, "new")
    monkeypatch.undo()


def test_crash_between_renames_is_recovered_on_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "slide_1"
    _write(target, "old")
    _crash_between_renames(monkeypatch, target)
    # the crash state: the complete previous result only under the hidden name
    assert not target.exists() and (old_dir(target) / "result.txt").read_text() == "old"
    assert recover_dir(target) == target
    assert (target / "result.txt").read_text() == "old" and not old_dir(target).exists()


def test_crash_between_renames_is_recovered_on_next_write(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "slide_1"
    _write(target, "old")
    _crash_between_renames(monkeypatch, target)
    _write(target, "newer")
    assert (target / "result.txt").read_text() == "newer" and not old_dir(target).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide_1"]


def test_error_between_renames_puts_the_previous_folder_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "slide_1"
    _write(target, "old")
    real = os.replace
    calls: list[int] = []

    def replace(src: os.PathLike, dst: os.PathLike) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        _write(target, "new")
    monkeypatch.undo()
    assert (target / "result.txt").read_text() == "old" and not old_dir(target).exists()


def test_renames_are_made_durable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(fileio, "_fsync_dir", lambda p: synced.append(Path(p)))
    _write(tmp_path / "a", "1")
    _write(tmp_path / "a", "2")
    assert synced.count(tmp_path) == 2  # the parent, after each replacement


def test_heatmap_reader_recovers_the_previous_result(tmp_path: Path) -> None:
    from engine.infer.outputs import HeatmapFileError, load_heatmap_result

    target = tmp_path / "slide_1"
    old_dir(target).mkdir()
    (old_dir(target) / "heatmap.json").write_text("{}")
    with pytest.raises(HeatmapFileError, match="missing heatmap.npy"):
        load_heatmap_result(target)  # recovered first, then judged on its content
    assert (target / "heatmap.json").is_file() and not old_dir(target).exists()


def test_heatmap_cache_lookup_recovers_the_previous_result(tmp_path: Path) -> None:
    from engine.infer import cache
    from engine.infer.outputs import HeatmapFileError

    slide = tmp_path / "case.tif"
    slide.write_bytes(b"slide")
    folder = cache.cache_folder(slide, "ab" * 32, 0.5, root=tmp_path / "cache")
    old_dir(folder).mkdir(parents=True)
    (old_dir(folder) / "heatmap.json").write_text("{}")
    # before: the entry was taken for missing and recomputed; now it is renamed back and read
    with pytest.raises(HeatmapFileError):
        cache.load_cached(slide, "ab" * 32, 0.5, root=tmp_path / "cache")
    assert (folder / "heatmap.json").is_file() and not old_dir(folder).exists()
