"""A first word that is neither a command nor a file is an error with a hint, never the app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import main as entry
from engine.cli import command_names, unknown_command_error

REPO = Path(__file__).resolve().parents[2]


def test_the_closest_command_is_suggested() -> None:
    commands = ["train", "genomics", "expression", "dataset"]
    assert unknown_command_error("genomcs", commands) == "unknown command 'genomcs' (did you mean 'genomics'?)"
    assert unknown_command_error("Trian", commands) == "unknown command 'Trian' (did you mean 'train'?)"
    msg = unknown_command_error("xyzzy", commands)
    assert msg.startswith("unknown command 'xyzzy'; commands: ") and "genomics" in msg
    assert unknown_command_error("scans/missing.svs", commands) == "no such file or command: 'scans/missing.svs'"


def test_main_refuses_a_typo_without_opening_the_app(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import gui.app

    monkeypatch.setattr(gui.app, "run_gui", lambda paths: pytest.fail(f"the app was opened for {paths}"))
    assert "train" in command_names()
    assert entry.main(["trian", "--help"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown command 'trian' (did you mean 'train'?)\n"


def test_an_existing_file_still_opens_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gui.app

    slide = tmp_path / "slide.svs"
    slide.write_bytes(b"x")
    opened: list[list[str]] = []
    monkeypatch.setattr(gui.app, "run_gui", lambda paths: opened.append(paths) or 0)
    assert entry.main([str(slide)]) == 0 and opened == [[str(slide)]]


def test_the_installed_command_exits_2_at_once() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "genomcs", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown command 'genomcs'") and proc.stderr.count("\n") == 1
    assert proc.stdout == ""
