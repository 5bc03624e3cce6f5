"""Training wizard and Training view for the genomics and expression run kinds."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QWizard  # noqa: E402

import gui.views.training_view as tv  # noqa: E402
from engine.paths import runs_dir  # noqa: E402
from engine.runs import SpawnedRun  # noqa: E402
from gui.cli_job import supported_options  # noqa: E402
from gui.modalities import EXPRESSION_MATRIX, GENOMICS_STUDY  # noqa: E402
from gui.views.datasets_view import DatasetStore  # noqa: E402
from gui.views.training_view import TrainingView  # noqa: E402
from gui.wizard.page_modality import ModalityRequest  # noqa: E402
from tests.gui.modality_data import write_run  # noqa: E402

STUDY = {"path": "/data/msk_study", "kind": GENOMICS_STUDY, "name": "msk_study", "report": {"n_samples": 40}}
MATRIX = {
    "path": "/data/matrix.tsv", "kind": EXPRESSION_MATRIX, "name": "matrix", "samples": "/data/samples.tsv",
    "report": {"n_samples": 24, "label_columns": {
        "type": {"distinct": 4, "counts": {"BRCA": 6, "LUAD": 6, "KIRC": 6, "COAD": 6}},
        "age": {"distinct": 6}, "sex": {"distinct": 2}}},
}


class FakeProcess:
    pid = 0

    def poll(self) -> int:
        return 0

    def terminate(self) -> None:
        pass


@pytest.fixture()
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_spawn(run, args):  # noqa: ANN001, ANN202
        calls.append(list(args))
        return SpawnedRun(Path(run), tuple(args), FakeProcess())  # type: ignore[arg-type]

    monkeypatch.setattr(tv, "spawn_training", fake_spawn)
    return calls


def _view(qtbot) -> TrainingView:  # noqa: ANN001
    view = TrainingView()
    qtbot.addWidget(view)
    view.resize(1200, 900)
    view.show()
    return view


def test_wizard_builds_the_genomics_command_and_starts_it(qtbot, spawned) -> None:  # noqa: ANN001
    DatasetStore().upsert(STUDY)
    view = _view(qtbot)
    wizard = view.open_wizard(dataset=STUDY)
    qtbot.addWidget(wizard)
    page = wizard.dataset_page
    assert page.task() == "genomics" and page.is_modality() and page.isComplete()
    wizard.next()
    model = wizard.modality_model_page
    assert wizard.currentPage() is model
    model.genomics_model.setCurrentIndex(model.genomics_model.findData("dense_embed"))
    model.genomics_folds.setValue(3)
    model.genomics_epochs.setValue(7)
    if model.genomics_features.isVisibleTo(model):  # the engine's CLI offers feature groups / extra leak columns
        model.genomics_features.setCurrentIndex(model.genomics_features.findData("clinical"))
        model.genomics_drop.setText("CANCER_TYPE, OS_MONTHS")
    wizard.next()
    review = wizard.modality_review_page
    assert wizard.currentPage() is review
    review.name_edit.setText("met")
    text = review.command.toPlainText()
    assert text.startswith("metascope train genomics --study /data/msk_study --out ")
    assert "--model dense_embed --folds 3 --epochs 7" in text
    if model.genomics_features.isVisibleTo(model):
        assert "--features clinical --drop-columns CANCER_TYPE,OS_MONTHS" in text
    with qtbot.waitSignal(wizard.start_requested, timeout=5000) as blocker:
        wizard.button(QWizard.WizardButton.FinishButton).click()
    request = blocker.args[0]
    assert isinstance(request, ModalityRequest) and request.kind == "genomics"
    assert spawned and spawned[0][:4] == ["train", "genomics", "--study", "/data/msk_study"]
    assert spawned[0][spawned[0].index("--out") + 1] == str(request.run_dir)


def test_wizard_siamese_and_wgan_settings(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    DatasetStore().upsert(MATRIX)
    view = _view(qtbot)
    wizard = view.open_wizard(dataset=MATRIX)
    qtbot.addWidget(wizard)
    assert wizard.dataset_page.task() == "siamese"
    wizard.next()
    model = wizard.modality_model_page
    assert model.siamese_label.currentData() == "type"
    assert "BRCA (6)" in model.siamese_types_hint.text()
    model.siamese_test_types.setText("KIRC, COAD")
    args = model.train_args(tmp_path / "run")
    assert args[:2] == ["train", "siamese"] and args[args.index("--label-column") + 1] == "type"
    assert args[args.index("--test-types") + 1] == "KIRC,COAD"
    assert args[args.index("--samples") + 1] == "/data/samples.tsv"
    assert "--orientation" not in args  # detected: nothing to say
    stated = {**MATRIX, "orientation": "genes_x_samples"}
    wizard.dataset_page.modality_picker.add(stated)
    args = model.train_args(tmp_path / "run")
    if "--orientation" in supported_options(["train", "siamese"]):
        assert args[args.index("--orientation") + 1] == "genes_x_samples"

    wizard.back()
    wizard.dataset_page.set_task("wgan")
    wizard.next()
    assert model.covariates.text() == "age,sex"
    assert not model.isComplete()  # no genes yet
    genes = tmp_path / "genes.txt"
    genes.write_text("GENE1\nGENE2\n", encoding="utf-8")
    model.genes.file_edit.setText(str(genes))
    assert model.isComplete()
    model.where.setText("type=KIRC")
    args = model.train_args(tmp_path / "run")
    assert args[args.index("--genes") + 1] == str(genes)
    assert args[args.index("--covariates") + 1] == "age,sex" and args[args.index("--where") + 1] == "type=KIRC"


def test_training_view_follows_a_wgan_run_and_shows_results(qtbot) -> None:  # noqa: ANN001
    events = [{"event": "run_started", "epochs": 2, "steps_per_epoch": 1}]
    for e in (1, 2):
        events += [{"event": "step", "epoch": e, "step": 1, "steps": 1, "critic_loss": -e, "generator_loss": e},
                   {"event": "epoch_ended", "epoch": e, "critic_loss": -e, "generator_loss": e, "gamma": 0.8 + e / 100}]
    events.append({"event": "finished"})
    run = write_run(runs_dir() / "20260101-000000-wgan", "wgan", events=events,
                    metrics={"gamma": 0.96, "c2st_auc": 0.66, "baseline": {"gamma": 0.95, "c2st_auc": 0.79}},
                    predictions=False)
    (run / "model.onnx").write_bytes(b"not really")
    view = _view(qtbot)
    requested: list[str] = []
    view.generator_requested.connect(requested.append)
    view.select_run(run)
    qtbot.waitUntil(lambda: view.modality_results.isVisible(), timeout=5000)
    assert view.history().latest("gamma") == pytest.approx(0.82)
    text = view.modality_results.metrics_label.text()
    assert "gamma" in text and "0.960" in text and "C2ST AUC" in text and "Gaussian baseline" in text
    assert not view.results_box.isVisible() and not view.modality_results.samples_button.isVisible()
    assert "synthetic profiles" in view.info_label.text()
    view.modality_results.generator_button.click()
    assert requested == [str(run)]


def test_genomics_run_review_samples_and_resume(qtbot, spawned) -> None:  # noqa: ANN001
    done = write_run(runs_dir() / "20260101-000001-gen", "genomics", metrics={"auc": 0.81, "ci": {"auc": [0.78, 0.84]}})
    view = _view(qtbot)
    reviews: list[str] = []
    view.review_samples_requested.connect(reviews.append)
    view.select_run(done)
    qtbot.waitUntil(lambda: view.modality_results.isVisible(), timeout=5000)
    assert "0.810" in view.modality_results.metrics_label.text() and "0.780–0.840" in view.modality_results.metrics_label.text()
    view.modality_results.samples_button.click()
    assert reviews == [str(done / "predictions.csv")]

    # selecting another run in code (Review samples, a new run) moves the selection, never clears it
    other = write_run(runs_dir() / "20260101-000003-gen", "genomics", metrics={"auc": 0.7})
    view.refresh_runs()
    view.select_run(other)
    assert view.info().path == other and view.runs_tree.selectedItems()[0].data(0, Qt.ItemDataRole.UserRole) == str(other)
    view.select_run(done)
    assert view.info().path == done and len(view.runs_tree.selectedItems()) == 1

    stopped = write_run(runs_dir() / "20260101-000002-gen", "genomics", status="cancelled", predictions=False)
    (stopped / "checkpoints").mkdir()
    (stopped / "checkpoints" / "last.pt").write_bytes(b"x")
    view.refresh_runs()
    assert view.resume_run(stopped)
    assert spawned[-1] == ["train", "genomics", "--out", str(stopped), "--resume"]
