"""Datasets view, genomics and expression kinds: import through the report command, show, remember."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

import gui.views.modality_datasets as md  # noqa: E402
from gui.cli_job import CliResult, CommandError  # noqa: E402
from gui.modalities import EXPRESSION_MATRIX, GENOMICS_STUDY  # noqa: E402
from gui.views.datasets_view import DatasetsView  # noqa: E402

WAIT_MS = 30_000

STUDY_REPORT = {
    "n_samples": 40, "n_patients": 31, "label_balance": {"Primary": 25, "Metastasis": 15},
    "missing": {"TMB": 0.05, "AGE": 2}, "panels": {"IMPACT341": 10, "IMPACT468": 30},
    "dropped_leaks": [{"column": "MET_COUNT", "reason": "almost determines the label"}],
    "warnings": ["no protein positions in this MAF"],
}


def _view(qtbot) -> DatasetsView:  # noqa: ANN001
    view = DatasetsView()
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    return view


def test_study_import_shows_the_report_and_is_remembered(qtbot, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    study = tmp_path / "msk_study"
    study.mkdir()
    calls: list[list[str]] = []

    def fake_run_cli(args, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(list(args))
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.html").write_text("<html></html>", encoding="utf-8")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(2, 2))
        fig.savefig(out / "missing_values.png")
        plt.close(fig)
        return CliResult(tuple(args), "40 samples, 31 patients\n", "", STUDY_REPORT)

    monkeypatch.setattr(md, "run_cli", fake_run_cli)
    view = _view(qtbot)
    view.modality_import.set_kind(GENOMICS_STUDY)
    with qtbot.waitSignal(view.import_finished, timeout=WAIT_MS):
        view.modality_import.start_import(GENOMICS_STUDY, str(study))
    assert calls[0][:3] == ["genomics", "report", str(study)] and calls[0][-1] == "--json"
    assert view.dataset_list.count() == 1
    assert "Mutation study" in view.dataset_list.item(0).text() and "40 samples" in view.dataset_list.item(0).text()
    assert view.detail_stack.currentWidget() is view.modality_report
    text = view.modality_report.summary.text()
    assert "Primary: 25 (62%)" in text and "TMB 5.0%" in text and "MET_COUNT" in text and "31" in text and "protein positions" in text
    assert view.modality_report.plot_combo.count() == 1 and view.modality_report.html_button.isEnabled()
    assert view.train_button.isEnabled()
    # remembered: a new view lists it again
    again = _view(qtbot)
    again.reload()
    assert again.current_item()["kind"] == GENOMICS_STUDY
    assert again.current_item()["report"]["n_patients"] == 31


def test_bad_input_is_a_dialog_and_adds_nothing(qtbot, tmp_path: Path, monkeypatch, dialogs) -> None:  # noqa: ANN001
    def failing(args, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise CommandError("the MAF names 3 samples that are not in the clinical table")

    monkeypatch.setattr(md, "run_cli", failing)
    view = _view(qtbot)
    with qtbot.waitSignal(view.modality_import.failed, timeout=WAIT_MS):
        view.modality_import.start_import(EXPRESSION_MATRIX, str(tmp_path / "m.tsv"), str(tmp_path / "s.tsv"))
    assert view.dataset_list.count() == 0
    assert dialogs and "not in the clinical table" in dialogs[-1][1]
    assert view.modality_import.message.kind == "error"


def test_matrix_import_end_to_end(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    from gui.cli_job import has_command

    assert has_command(["expression", "info"]), "metascope has the command"
    from tests.gui.modality_data import write_expression

    matrix, samples = write_expression(tmp_path)
    view = _view(qtbot)
    with qtbot.waitSignal(view.import_finished, timeout=120_000):
        view.modality_import.start_import(EXPRESSION_MATRIX, str(matrix), str(samples))
    item = view.current_item()
    assert item["kind"] == EXPRESSION_MATRIX and item["report"]["n_samples"] == 24
    assert "type" in item["report"].get("label_columns", {})
    assert "24 samples" in view.dataset_list.item(0).text()


@pytest.mark.slow  # the report draws a t-SNE and the EDA plots: ~10 s
def test_study_import_end_to_end(qtbot, tmp_path: Path, dialogs) -> None:  # noqa: ANN001
    from gui.cli_job import has_command

    assert has_command(["genomics", "report"]), "metascope has the command"
    from tests.gui.modality_data import write_study

    study = write_study(tmp_path / "tiny_study")
    view = _view(qtbot)
    with qtbot.waitSignal(view.import_finished, timeout=180_000):
        view.modality_import.start_import(GENOMICS_STUDY, str(study))
    item = view.current_item()
    assert item["kind"] == GENOMICS_STUDY and item["report"], "the report JSON was read"
    assert "40" in view.modality_report.summary.text()
    assert "MET_COUNT" in json.dumps(item["report"])  # a label leak, listed as dropped
    assert view.modality_report.plot_combo.count() >= 1
    # a folder that is not a study: a dialog, nothing added
    with qtbot.waitSignal(view.modality_import.failed, timeout=60_000):
        view.modality_import.start_import(GENOMICS_STUDY, str(tmp_path / "nowhere"))
    assert view.dataset_list.count() == 1 and "not found" in dialogs[-1][1]


@pytest.mark.slow
@pytest.mark.realdata
def test_real_msk_met_study_import(qtbot, shared_data: Path) -> None:  # noqa: ANN001
    """The shared MSK-MET study through the Datasets view (~1 min: the EDA report of 12,622 samples)."""
    from gui.cli_job import has_command

    assert has_command(["genomics", "report"]), "metascope has the command"
    study = shared_data / "cbioportal" / "msk_met_2021"
    view = _view(qtbot)
    with qtbot.waitSignal(view.import_finished, timeout=600_000):
        view.modality_import.start_import(GENOMICS_STUDY, str(study))
    text = view.modality_report.summary.text()
    assert "12,622" in text and "Primary: 7,657" in text and "Metastasis: 4,965" in text
    assert "MET_COUNT" in text and "METASTATIC_SITE" in text  # leaks listed as dropped
    assert view.modality_report.plot_combo.count() >= 3
