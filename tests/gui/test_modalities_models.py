"""Models view and Generator view actions of the genomics / expression tasks (CLI replaced by a fake)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

import gui.views.cli_runner as cli_runner  # noqa: E402
from engine.library import ModelLibrary  # noqa: E402
from engine.modelpkg import ModelMetadata, write_metadata  # noqa: E402
from engine.paths import runs_dir  # noqa: E402
from gui.modalities import EXPRESSION_MATRIX, GENOMICS_STUDY  # noqa: E402
from gui.views.datasets_view import DatasetStore  # noqa: E402
from gui.views.generator_view import GeneratorView  # noqa: E402
from gui.views.models_view import ModelsView  # noqa: E402
from tests.gui import fake_cli  # noqa: E402
from tests.gui.modality_data import write_expression, write_run  # noqa: E402

WAIT_MS = 20_000


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    fake_cli.calls.clear()
    monkeypatch.setattr(cli_runner, "run_cli", fake_cli.fake_run_cli)
    return fake_cli.calls


def _package(demo_onnx: Path, tmp: Path, task: str, name: str) -> Path:
    classes = ("Primary", "Metastasis") if task == "genomics_classifier" else ()
    meta = ModelMetadata(name=name, task=task, class_names=classes, metrics={"auc": 0.8} if classes else {})
    return write_metadata(demo_onnx, meta, tmp / f"{name}.onnx")


def _models_view(qtbot) -> ModelsView:  # noqa: ANN001
    view = ModelsView()
    qtbot.addWidget(view)
    view.resize(1200, 900)
    view.show()
    return view


def _select(view: ModelsView, name: str) -> None:
    row = next(i for i, e in enumerate(view.entries) if e.name == name)
    view.table.selectRow(row)


def test_genomics_model_evaluate_and_review(qtbot, tmp_path: Path, demo_onnx: Path, fake) -> None:  # noqa: ANN001
    DatasetStore().upsert({"path": str(tmp_path / "study"), "kind": GENOMICS_STUDY, "name": "study", "report": {}})
    ModelLibrary().add(_package(demo_onnx, tmp_path, "genomics_classifier", "met"))
    ModelLibrary().add(demo_onnx)
    view = _models_view(qtbot)
    reviews: list[str] = []
    view.review_samples_requested.connect(reviews.append)
    _select(view, "met")
    row = next(i for i, e in enumerate(view.entries) if e.name == "met")
    assert view.table.item(row, 1).text() == "Mutations: primary vs metastasis"
    actions = view.actions.genomics
    assert view.actions.isVisible() and view.actions.stack.currentWidget() is actions
    with qtbot.waitSignal(actions.runner.finished, timeout=WAIT_MS):
        actions.evaluate()
    assert fake[-1][:2] == ["genomics", "evaluate"] and fake[-1][fake[-1].index("--study") + 1] == str(tmp_path / "study")
    assert "0.800" in actions.metrics_label.text() and actions.gallery.count() == 1
    actions.samples_button.click()
    assert reviews and reviews[-1].endswith("predictions.csv") and Path(reviews[-1]).is_file()
    with qtbot.waitSignal(actions.runner.finished, timeout=WAIT_MS):
        actions.predict()
    assert fake[-1][:2] == ["genomics", "predict"]
    # a patch model offers its own: evaluate on a patch dataset, review the patches
    _select(view, next(e.name for e in view.entries if e.metadata.task == "patch_classification"))
    assert view.actions.isVisible() and view.actions.stack.currentWidget() is view.actions.patches


def test_embedding_model_oneshot_classify_markers(qtbot, tmp_path: Path, demo_onnx: Path, fake) -> None:  # noqa: ANN001
    matrix, samples = write_expression(tmp_path)
    DatasetStore().upsert({"path": str(matrix), "samples": str(samples), "kind": EXPRESSION_MATRIX, "name": "m",
                           "report": {"label_columns": {"type": {"distinct": 4, "counts": {
                               "BRCA": 6, "LUAD": 6, "KIRC": 6, "COAD": 6}}, "age": {"distinct": 6}}}})
    ModelLibrary().add(_package(demo_onnx, tmp_path, "expression_embedding", "emb"))
    view = _models_view(qtbot)
    _select(view, "emb")
    panel = view.actions.oneshot
    assert view.actions.stack.currentWidget() is panel
    assert panel.label_combo.currentData() == "type" and panel.types_edit.text() == "" and "KIRC" in panel.types_edit.toolTip()
    panel.ways_edit.setText("2,3")
    panel.types_edit.setText("KIRC, COAD")
    panel.trials_spin.setValue(100)
    with qtbot.waitSignal(panel.runner.finished, timeout=WAIT_MS):
        panel.run_oneshot()
    args = fake[-1]
    assert args[:2] == ["expression", "oneshot"] and args[args.index("--ways") + 1] == "2,3"
    assert args[args.index("--types") + 1] == "KIRC,COAD"
    assert "Siamese" in panel.test_metrics.text() and panel.samples_button.isEnabled()
    lines = {ln.get_label() for ax in panel.accuracy_plot.figure.axes for ln in ax.get_lines()}
    assert {"Siamese", "1-NN (Pearson)"} <= lines

    qtbot.waitUntil(lambda: panel.query_combo.count() == 24, timeout=WAIT_MS)  # the sample table, read in a worker
    panel.query_combo.setCurrentText("LUAD-03")
    support = panel.support()
    assert support["BRCA"] == "BRCA-00" and len(support) == 4
    with qtbot.waitSignal(panel.runner.finished, timeout=WAIT_MS):
        panel.run_classify()
    assert fake[-1][fake[-1].index("--query") + 1] == "LUAD-03"
    predicted, sims = panel.last_classification
    assert predicted == "BRCA" and sims[0][0] == "BRCA-00" and [s[2] for s in sims] == sorted((s[2] for s in sims), reverse=True)
    assert "BRCA" in panel.classify_result.text()

    run = write_run(runs_dir() / "siamese-run", "siamese", predictions=False)
    panel.run_edit.setText(str(run))
    with qtbot.waitSignal(panel.runner.finished, timeout=WAIT_MS):
        panel.run_markers()
    assert panel.markers_table.rowCount() == 2 and panel.markers_table.item(0, 1).text() == "GENE3"


def test_generator_view_generate_realism_export(qtbot, tmp_path: Path, fake) -> None:  # noqa: ANN001
    matrix, samples = write_expression(tmp_path)
    DatasetStore().upsert({"path": str(matrix), "samples": str(samples), "kind": EXPRESSION_MATRIX, "name": "m",
                           "report": {"label_columns": {"age": {}, "sex": {}, "type": {}}}})
    events = [{"event": "run_started", "epochs": 1, "steps_per_epoch": 1},
              {"event": "epoch_ended", "epoch": 1, "critic_loss": -0.5, "generator_loss": 0.3, "val_gamma": 0.91},
              {"event": "finished"}]
    run = write_run(runs_dir() / "20260101-wgan", "wgan", events=events, predictions=False)
    (run / "config.json").write_text(json.dumps(
        {"kind": "wgan", "config": {"matrix": str(matrix), "genes": "", "covariates": ["age", "sex"]}}), encoding="utf-8")
    view = GeneratorView()
    qtbot.addWidget(view)
    view.resize(1200, 1000)
    requested = []
    view.train_requested.connect(requested.append)
    view.show()
    view.select_run(run)
    assert view.current_run() == run
    assert view.history().latest("val_gamma") == pytest.approx(0.91) and "gamma 0.910" in view.run_status.text()
    assert list(view.cov_edits) == ["age", "sex"]
    view.cov_edits["sex"].setText("F")
    view.n_spin.setValue(5)
    with qtbot.waitSignal(view.runner.finished, timeout=WAIT_MS):
        view.generate()
    qtbot.waitUntil(lambda: fake[-1][1] == "realism" and not view.runner.busy, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "0.960" in view.realism_label.text(), timeout=WAIT_MS)
    gen_args = fake[-2]
    assert gen_args[:4] == ["expression", "generate", str(run), "--n"]
    assert gen_args[gen_args.index("--set") + 1] == "sex=F" and "--covariates" not in gen_args
    assert fake[-1][fake[-1].index("--run") + 1] == str(run)
    assert "Gaussian baseline" in view.realism_label.text() and view.gallery.count() == 1
    assert view.export_button.isEnabled()
    dest = tmp_path / "out.tsv"
    assert view.export_synthetic(dest) and dest.read_text().startswith("sample\tGENE1")

    # train: genes from a list; the request carries the exact command
    genes = tmp_path / "genes.txt"
    genes.write_text("GENE1\nGENE2\n", encoding="utf-8")
    view.genes.file_edit.setText(str(genes))
    request = view.request_training()
    assert request is not None and requested == [request]
    assert request.args[:2] == ("train", "wgan") and "--covariates" in request.args
