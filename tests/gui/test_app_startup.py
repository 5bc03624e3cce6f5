"""The app starts in a fresh process (offscreen): the window shows, and torch is never imported
on the slide viewing path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.slides.synthetic import SyntheticSlide

ROOT = Path(__file__).resolve().parents[2]


def _launch(args: list[str], home: Path, probe: str = "1") -> dict[str, str]:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "METASCOPE_HOME": str(home),
        "METASCOPE_TEST": "1",
        "METASCOPE_NO_DEMO": "1",
        "METASCOPE_STARTUP_PROBE": probe,
    }
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert "startup_window_shown_s" in facts, proc.stdout + proc.stderr
    return facts


def test_app_starts_without_torch(tmp_path: Path) -> None:
    facts = _launch([], tmp_path)
    assert facts["startup_visible"] == "1"
    assert facts["startup_views"].split(",")[0] == "Slides"
    assert "torch" not in facts["startup_heavy_modules"].split(",")
    assert float(facts["startup_window_shown_s"]) < 20


def test_app_opens_a_slide_given_on_the_command_line(tmp_path: Path, synthetic_svs: SyntheticSlide) -> None:
    # stay up for two seconds, and in any case until the slide (read in a worker) is shown: its
    # tiles are read, still without torch
    facts = _launch([str(synthetic_svs.path)], tmp_path, probe="2")
    assert facts["startup_visible"] == "1"
    assert facts["startup_slide"] == str(synthetic_svs.path.resolve())
    assert facts["later_torch_imported"] == "0"
    recent = (tmp_path / "settings.ini").read_text()
    assert "synthetic.svs" in recent
