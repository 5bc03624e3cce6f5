"""File > pN Stage of a Heatmap Folder…: the patients' pN categories, CSV export, errors as dialogs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog

from gui.pn_stage_dialog import PnStageDialog


def _heatmaps(root: Path) -> Path:
    """heatmap.json files with just the fields the pN stage reads: two CAMELYON17 patients."""
    cats = {
        "patient_004_node_0": ("macrometastasis", 2.6),
        "patient_004_node_1": ("isolated tumour cells", 0.1),
        "patient_004_node_2": ("no tumour", None),
        "patient_009_node_0": ("micrometastasis", 0.9),
        "patient_009_node_1": ("no tumour", None),
    }
    for name, (category, largest) in cats.items():
        (root / name).mkdir(parents=True)
        meta = {"slide": {"path": f"/s/{name}.tif", "name": name}, "category": category,
                "lesions": {"category": category, "largest_diameter_mm": largest}}
        (root / name / "heatmap.json").write_text(json.dumps(meta))
    return root


def _column(dialog: PnStageDialog, col: int) -> list[str]:
    return [dialog.table.item(r, col).text() for r in range(dialog.table.rowCount())]


def test_menu_action_opens_the_dialog_and_shows_patients(window, qtbot, tmp_path: Path) -> None:
    window.pn_stage_action.trigger()
    dialog = window.findChild(PnStageDialog)
    assert dialog is not None and dialog.isVisible()
    assert not dialog.export_button.isEnabled()
    folder = _heatmaps(tmp_path / "hm")
    with qtbot.waitSignal(dialog.staged, timeout=5000) as blocker:  # listening before the work starts
        assert dialog.stage(folder)
    assert blocker.args == [2]
    assert _column(dialog, 0) == ["patient_004", "patient_009"]
    assert _column(dialog, 1) == ["pN1", "pN1mi"]
    assert _column(dialog, 2)[0] == "1 of 3 with metastasis"
    assert _column(dialog, 4)[0].startswith("patient_004_node_0: macrometastasis; patient_004_node_1: isolated")
    window.pn_stage_action.trigger()  # the same dialog again
    assert window.findChildren(PnStageDialog) == [dialog]


def test_patients_csv_and_export(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dialog = PnStageDialog()
    qtbot.addWidget(dialog)
    folder = _heatmaps(tmp_path / "hm")
    patients = tmp_path / "patients.csv"
    patients.write_text(
        "slide,patient\n" + "\n".join(f"patient_004_node_{i}.tif,anna" for i in range(3))
        + "\npatient_009_node_0,bob\npatient_009_node_1,bob\n"
    )
    assert dialog.stage(folder, patients)
    assert _column(dialog, 0) == ["anna", "bob"] and dialog.export_button.isEnabled()
    out = tmp_path / "export" / "stages.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), "CSV files (*.csv)"))
    dialog.export_button.click()
    rows = list(csv.DictReader(out.open()))
    assert [(r["patient"], r["pn_stage"], r["nodes"]) for r in rows] == [("anna", "pN1", "3"), ("bob", "pN1mi", "2")]


def test_errors_are_shown_as_dialogs(qtbot, dialogs, tmp_path: Path) -> None:
    dialog = PnStageDialog()
    qtbot.addWidget(dialog)
    assert dialog.stage(_heatmaps(tmp_path / "hm"))
    assert not dialog.stage(tmp_path / "nowhere")
    assert dialogs and dialogs[-1][0] == "pN stage" and "not found" in dialogs[-1][1]
    assert dialog.table.rowCount() == 0 and not dialog.export_button.isEnabled()
    (tmp_path / "other" / "slide_a").mkdir(parents=True)
    (tmp_path / "other" / "slide_a" / "heatmap.json").write_text(json.dumps({"category": "no tumour"}))
    assert not dialog.stage(tmp_path / "other")
    assert "CAMELYON17" in dialogs[-1][1]
