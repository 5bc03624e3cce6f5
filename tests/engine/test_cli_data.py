"""``metascope dataset validate|info`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main


def test_validate_ok(pcam_h5_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "validate", str(pcam_h5_dataset)]) == 0
    out = capsys.readouterr().out
    assert "pcam_h5" in out and "exact duplicates: 2 groups, 4 files" in out and out.rstrip().endswith("ok")


def test_validate_json_and_errors_exit_2(broken_datasets: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "validate", str(broken_datasets["unreadable"]), "--json"]) == 2
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] is False and d["unreadable"]["count"] == 2 and d["counts"] == {"0": 4, "1": 4}
    assert main(["dataset", "validate", str(broken_datasets["missing_file"])]) == 2
    captured = capsys.readouterr()
    assert "ERROR: 2 files named in the dataset do not exist" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("error:")


def test_bad_input_is_one_line(broken_datasets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "info", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: dataset not found: {tmp_path / 'missing'}"
    assert main(["dataset", "info", str(broken_datasets["bad_csv"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: CSV") and "\n" not in err


def test_info(folder_dataset: Path, annotated_slide_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "info", str(folder_dataset), "--mpp", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "folders" in out and "positive: tumor" in out and "0.5 um/px (user)" in out
    assert main(["dataset", "info", str(annotated_slide_dataset), "--mpp", "1", "--patch-size", "32", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "annotated_slides" and d["patch_size"] == [32, 32] and set(d["slides"]) == {"slide_a.tif", "slide_b.tif"}
