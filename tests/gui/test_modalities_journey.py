"""End to end in the main window: a tiny mutation study -> wizard -> real training run -> results ->
Review samples (with explanations); Cancel + resume of a genomics run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QWizard  # noqa: E402

from gui.cli_job import has_command  # noqa: E402
from gui.modalities import GENOMICS_STUDY  # noqa: E402
from gui.views.datasets_view import DatasetStore  # noqa: E402
from tests.gui.modality_data import write_study  # noqa: E402

WAIT_MS = 240_000


@pytest.mark.slow  # a real (tiny) training run: ~20 s
def test_genomics_journey_in_the_main_window(qtbot, window, tmp_path: Path) -> None:  # noqa: ANN001
    assert has_command(["train", "genomics"]), "metascope has the command"
    assert window.training_view is not None
    study = write_study(tmp_path / "study", n=48)
    DatasetStore().upsert({"path": str(study), "kind": GENOMICS_STUDY, "name": "study", "report": {"samples": 48}})
    window.show_view("Datasets")
    window.datasets_view.reload(select=str(study))
    window.datasets_view.train_button.click()
    training = window.training_view
    wizard = training.findChild(QWizard)
    qtbot.waitUntil(lambda: wizard is not None and wizard.isVisible(), timeout=10_000)
    assert wizard.dataset_page.task() == "genomics"
    wizard.next()
    page = wizard.modality_model_page
    page.genomics_model.setCurrentIndex(page.genomics_model.findData("dense"))  # epochs apply to the networks
    page.genomics_epochs.setValue(2)
    wizard.next()
    wizard.modality_review_page.name_edit.setText("tiny-genomics")
    wizard.button(QWizard.WizardButton.FinishButton).click()
    qtbot.waitUntil(lambda: training.info() is not None, timeout=10_000)
    run = training.info().path
    qtbot.waitUntil(lambda: training.info(run) is not None and training.info(run).status == "finished", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: training.modality_results.isVisible(), timeout=10_000)
    assert "AUC" in training.modality_results.metrics_label.text()
    assert training.modality_results.gallery.count() >= 1
    assert training.history().epochs == 2

    samples = window.samples_view
    with qtbot.waitSignal(samples.loaded, timeout=10_000):
        training.modality_results.samples_button.click()
    assert window.stack.currentWidget() is samples
    rows = samples.visible_rows()
    assert rows and all(r.truth in ("Primary", "Metastasis") for r in rows)
    assert samples.explanations, "the genomics trainer writes explanations.csv"
    explained = next(iter(samples.explanations))
    samples.search_edit.setText(explained)
    assert samples.select_sample(explained) and explained in samples.explain_title.text()

    # the model is in the run folder: add it to the library, then the Models view offers its actions
    with qtbot.waitSignal(training.library_changed, timeout=30_000):
        training.modality_results.add_button.click()
    window.show_view("Models")
    models = window.models_view
    row = next(i for i, e in enumerate(models.entries) if e.metadata.task == "genomics_classifier")
    models.table.selectRow(row)
    assert models.actions.stack.currentWidget() is models.actions.genomics
    assert models.actions.genomics.study_combo.currentData() == str(study)


@pytest.mark.slow  # a real (tiny) training run, cancelled and resumed: ~30 s
def test_genomics_run_cancel_and_resume(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    assert has_command(["train", "genomics"]), "metascope has the command"
    from engine.runs import new_run_dir
    from gui.views.training_view import TrainingView
    from gui.wizard.page_modality import ModalityRequest

    study = write_study(tmp_path / "study", n=48)
    view = TrainingView()
    qtbot.addWidget(view)
    view.show()
    run = new_run_dir("cancel-genomics")
    args = ("train", "genomics", "--study", str(study), "--out", str(run), "--model", "gbm", "--epochs", "15")
    assert view.start_run(ModalityRequest("genomics", args, run), run) == run
    # Cancel once the first epoch has ended (a checkpoint exists)
    qtbot.waitUntil(lambda: view.history(run) is not None and view.history(run).epoch >= 2, timeout=WAIT_MS)
    view.cancel_run(run)
    qtbot.waitUntil(lambda: view.info(run) is not None and view.info(run).status == "cancelled", timeout=WAIT_MS)
    assert view.info(run).resumable and view.resume_button.isEnabled()
    assert view.resume_run(run)
    qtbot.waitUntil(lambda: view.info(run).status == "finished", timeout=WAIT_MS)
    # the resumed process went on where the cancelled one stopped: no fold trained twice, and a fold
    # cut short restarts from its checkpoint (gbm folds take well under a second, so the cancel may
    # land between folds or inside one)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines() if line]
    kinds = [e.get("event") for e in events]
    assert "cancelled" in kinds and kinds[-1] == "finished"
    finished_folds = [e["fold"] for e in events if e.get("event") == "fold_finished"]
    assert len(finished_folds) == len(set(finished_folds))
    after_cancel = events[kinds.index("cancelled") + 1:]
    assert all(e.get("fold") not in finished_folds[: kinds[: kinds.index("cancelled")].count("fold_finished")]
               for e in after_cancel if e.get("event") == "run_started")
    assert (run / "model.onnx").is_file() and (run / "predictions.csv").is_file()


def _train(qtbot, view, kind: str, args: tuple[str, ...], run: Path) -> None:  # noqa: ANN001
    from gui.wizard.page_modality import ModalityRequest

    assert view.start_run(ModalityRequest(kind, args, run), run) == run
    qtbot.waitUntil(lambda: view.info(run) is not None and view.info(run).status in ("finished", "failed", "crashed"),
                    timeout=WAIT_MS)
    assert view.info(run).status == "finished", view.info(run).message
    qtbot.waitUntil(lambda: view.modality_results.isVisible(), timeout=10_000)


@pytest.mark.slow  # a real (tiny) Siamese run, then a one-shot test and a classification: ~60 s
def test_siamese_run_oneshot_and_classify(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    assert has_command(["train", "siamese"]), "metascope has the command"
    from engine.runs import new_run_dir
    from gui.modalities import EXPRESSION_MATRIX
    from gui.views.oneshot_panel import OneShotPanel
    from gui.views.training_view import TrainingView
    from tests.gui.modality_data import write_expression

    matrix, samples = write_expression(tmp_path, n_per_type=8, types=("A", "B", "C", "D", "E", "F"))
    view = TrainingView()
    qtbot.addWidget(view)
    view.show()
    run = new_run_dir("siamese-tiny")
    _train(qtbot, view, "siamese", ("train", "siamese", "--matrix", str(matrix), "--samples", str(samples),
                                    "--label-column", "type", "--test-types", "E,F", "--epochs", "2",
                                    "--pretrain-epochs", "1", "--ways", "2", "--trials", "20", "--no-markers",
                                    "--out", str(run)), run)
    assert "2-way" in view.modality_results.metrics_label.text()
    assert view.history(run).latest("val_accuracy") is not None  # followed live: validation accuracy per epoch

    item = {"path": str(matrix), "samples": str(samples), "kind": EXPRESSION_MATRIX, "name": "m",
            "report": {"label_columns": {"type": {"counts": {t: 8 for t in "ABCDEF"}}}}}
    panel = OneShotPanel()
    qtbot.addWidget(panel)
    panel.set_model(run / "model.onnx", [item], str(run))
    panel.types_edit.setText("E,F")
    panel.ways_edit.setText("2")
    panel.trials_spin.setValue(30)
    with qtbot.waitSignal(panel.runner.finished, timeout=WAIT_MS):
        panel.run_oneshot()
    assert "2-way accuracy" in panel.test_metrics.text() and panel.samples_button.isEnabled()
    qtbot.waitUntil(lambda: panel.query_combo.count() == 48, timeout=10_000)
    panel.query_combo.setCurrentText("E-03")
    with qtbot.waitSignal(panel.runner.finished, timeout=WAIT_MS):
        panel.run_classify()
    predicted, sims = panel.last_classification
    assert len(sims) == 6 and predicted in "ABCDEF" and sims[0][2] >= sims[-1][2]


@pytest.mark.slow  # a real (tiny) WGAN-GP run, then generation and the realism report: ~60 s
def test_wgan_run_generate_and_realism(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    assert has_command(["train", "wgan"]), "metascope has the command"
    from engine.runs import new_run_dir
    from gui.views.generator_view import GeneratorView
    from gui.views.training_view import TrainingView
    from tests.gui.modality_data import write_expression

    matrix, samples = write_expression(tmp_path, n_per_type=8, types=("A", "B", "C", "D", "E", "F"))
    genes = tmp_path / "genes.txt"
    genes.write_text("".join(f"GENE{i}\n" for i in range(6)), encoding="utf-8")
    view = TrainingView()
    qtbot.addWidget(view)
    view.show()
    run = new_run_dir("wgan-tiny")
    _train(qtbot, view, "wgan", ("train", "wgan", "--matrix", str(matrix), "--samples", str(samples), "--genes",
                                 str(genes), "--covariates", "age,sex", "--epochs", "3", "--steps-per-epoch", "5",
                                 "--out", str(run)), run)
    assert view.history(run).step_points.get("critic_loss") or view.history(run).extra_points.get("critic_loss")
    assert "Gaussian baseline" in view.modality_results.metrics_label.text()

    gen = GeneratorView()
    qtbot.addWidget(gen)
    gen.show()
    gen.select_run(run)
    assert list(gen.cov_edits) == ["age", "sex"]
    gen.cov_edits["sex"].setText("F")
    gen.n_spin.setValue(30)
    with qtbot.waitSignal(gen.runner.finished, timeout=WAIT_MS):
        gen.generate()
    qtbot.waitUntil(lambda: "C2ST AUC" in gen.realism_label.text(), timeout=WAIT_MS)
    lines = gen.synthetic.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 31 and all(row.split("\t")[2] == "F" for row in lines[1:])
    assert gen.gallery.count() >= 3
    assert gen.export_synthetic(tmp_path / "exported.tsv")
