"""Samples view: predictions beside the truth, filters, errors first, per-sample explanations."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from gui.views.samples_view import SamplesView  # noqa: E402


def write_predictions(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        ("S1", "Metastasis", "Metastasis", 0.91, "Lung", 1),
        ("S2", "Primary", "Metastasis", 0.80, "Lung", 0),
        ("S3", "Primary", "Primary", 0.12, "Breast", 1),
        ("S4", "Metastasis", "Primary", 0.40, "Breast", 0),
        ("S5", "Primary", "Primary", 0.05, "Colon", 1),
    ]
    lines = ["sample,truth,predicted,score,group,correct,patient"]
    lines += [f"{s},{t},{p},{sc},{g},{c},P{s}" for s, t, p, sc, g, c in rows]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "explanations.csv").write_text(
        "sample,feature,value,contribution,method\nS2,TMB,12.5,0.30,shap\nS2,TP53,1,-0.10,shap\nS2,AGE,61,0.05,shap\n",
        encoding="utf-8",
    )
    return folder / "predictions.csv"


def _loaded(qtbot, view: SamplesView, path: Path) -> None:  # noqa: ANN001
    with qtbot.waitSignal(view.loaded, timeout=10_000):
        view.load(path)


def test_samples_filters_errors_first_and_explanation(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    path = write_predictions(tmp_path / "run")
    view = SamplesView()
    qtbot.addWidget(view)
    view.show()
    _loaded(qtbot, view, path.parent)  # a run folder works as well as the file
    assert len(view.visible_rows()) == 5
    assert "2 errors" in view.summary_label.text()

    view.errors_check.setChecked(True)
    first = view.visible_rows()[:2]
    assert {r.sample for r in first} == {"S2", "S4"} and not any(r.correct for r in first)

    view.set_group("Breast")
    assert [r.sample for r in view.visible_rows()] == ["S4", "S3"]
    view.set_group(None)
    view.search_edit.setText("s5")
    assert [r.sample for r in view.visible_rows()] == ["S5"]
    view.search_edit.setText("")

    assert view.select_sample("S2")
    assert view.selected_row().sample == "S2"
    assert [c.feature for c in view.explanations["S2"]] == ["TMB", "TP53", "AGE"]  # largest effect first
    assert "S2" in view.explain_title.text() and "wrong" in view.explain_title.text()
    assert "method: shap" in view.explain_title.text()
    assert view.group_combo.itemText(view.group_combo.findData("Breast")) == "Breast (2, accuracy 0.50)"
    assert view.selected_row().extra["patient"] == "PS2"


def test_samples_bad_file_says_why(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    bad = tmp_path / "predictions.csv"
    bad.write_text("id,label\nA,1\n", encoding="utf-8")
    view = SamplesView()
    qtbot.addWidget(view)
    with qtbot.waitSignal(view.load_failed, timeout=10_000) as blocker:
        view.load(bad)
    assert "sample" in blocker.args[0] or "predicted" in blocker.args[0]
    assert view.message.kind == "error"


def test_main_window_routes_to_samples_and_generator(qtbot, window, tmp_path: Path) -> None:  # noqa: ANN001
    assert {"Samples", "Generator"} <= set(window.view_names())
    path = write_predictions(tmp_path / "eval")
    with qtbot.waitSignal(window.samples_view.loaded, timeout=10_000):
        window.models_view.review_samples_requested.emit(str(path))
    assert window.stack.currentWidget() is window.samples_view
    assert len(window.samples_view.visible_rows()) == 5
    run = tmp_path / "wgan-run"
    run.mkdir()
    window.models_view.generator_requested.emit(str(run))
    assert window.stack.currentWidget() is window.generator_view
    assert window.generator_view.current_run() == run


def test_siamese_run_opens_the_oneshot_dialog(qtbot, window, tmp_path: Path) -> None:  # noqa: ANN001
    from engine.paths import runs_dir
    from gui.views.oneshot_panel import OneShotPanel
    from tests.gui.modality_data import write_run

    if window.training_view is None:
        pytest.skip("viewer edition: no Training view")
    run = write_run(runs_dir() / "20260101-siamese", "siamese", metrics={"ways": {"6": {"siamese": 0.9, "nn1": 0.85}}})
    (run / "model.onnx").write_bytes(b"x")
    training = window.training_view
    training.refresh_runs()
    training.select_run(run)
    window.show_view("Training")
    qtbot.waitUntil(lambda: training.modality_results.oneshot_button.isVisible(), timeout=10_000)
    assert "6-way" in training.modality_results.metrics_label.text()
    training.modality_results.oneshot_button.click()
    panels = [p for p in window.findChildren(OneShotPanel) if p.model is not None]  # not the Models view's
    assert len(panels) == 1 and panels[0].model == run / "model.onnx" and panels[0].run_edit.text() == str(run)


def test_oneshot_trials_say_their_candidates(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "predictions.csv").write_text(
        "sample,truth,predicted,score,group,correct,ways,trial,nn1_predicted,nn1_correct,support,candidates\n"
        "E-06,E,F,0.61,E,0,2,1,E,1,F-02;E-05,F;E\n", encoding="utf-8")
    view = SamplesView()
    qtbot.addWidget(view)
    view.show()
    _loaded(qtbot, view, tmp_path / "predictions.csv")
    assert view.select_sample("E-06")
    texts = [t.get_text() for t in view.explain_plot.figure.texts]
    assert any("F (F-02), E (E-05)" in t and "1-NN answered E" in t for t in texts)
