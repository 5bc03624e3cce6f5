"""The train-from-a-wizard journey: wizard -> training process -> live curves -> cancel -> resume ->
evaluation -> model library -> heatmap on a slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QApplication, QMessageBox, QWizard  # noqa: E402

from engine.library import ModelLibrary  # noqa: E402
from engine.runs import pid_alive, run_info  # noqa: E402
from gui.views.training_view import TrainingView  # noqa: E402
from tests.fixtures.datasets import make_folder_dataset  # noqa: E402

WAIT_MS = 300_000  # a limit for a busy machine; an idle one needs a fraction
# enough epochs that Cancel lands mid-run even on a fast, idle machine (each epoch is ~0.3 s)
EPOCHS = 30


def _finish_wizard(qtbot, view: TrainingView, data: Path) -> None:  # noqa: ANN001
    wizard = view.open_wizard()
    qtbot.addWidget(wizard)
    wizard.dataset_page.set_dataset(str(data), "auto", 0.5)
    for _ in range(4):
        qtbot.waitUntil(wizard.currentPage().isComplete, timeout=WAIT_MS)
        wizard.next()
    settings = wizard.settings_page
    settings.epochs_spin.setValue(EPOCHS)
    settings.patience_spin.setValue(0)  # never stop early: the test needs a run to cancel
    settings.device_combo.setCurrentIndex(settings.device_combo.findData("cpu"))
    for check in (settings.colour_check, settings.stain_check):
        check.setChecked(False)
    wizard.back()
    wizard.next()
    wizard.next()
    wizard.review_page.name_edit.setText("journey")
    wizard.button(QWizard.WizardButton.FinishButton).click()


def test_train_cancel_resume_evaluate_add_to_library_and_heatmap(
    qtbot,
    tmp_path: Path,
    artifacts_dir: Path,
    array_slide,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    data = make_folder_dataset(tmp_path / "patches", per_class=20, size=32)
    view = TrainingView()
    qtbot.addWidget(view)
    view.resize(1280, 940)
    view.show()
    _finish_wizard(qtbot, view, data)
    qtbot.waitUntil(lambda: view.info() is not None, timeout=WAIT_MS)
    run = view.info().path
    assert run.name.endswith("-journey")
    argv = json.loads((run.with_name(run.name + ".launch") / "command.json").read_text())["argv"]
    assert argv[-4:-2] == ["--out", str(run)] or str(run) in argv

    # live: the curves receive points while the trainer runs in its own process
    qtbot.waitUntil(lambda: view.history().checkpoints >= 1, timeout=WAIT_MS)
    h = view.history()
    assert h.loss_points and h.val_points["auc"] and h.device == "cpu"
    assert view.info().status == "running" and view.cancel_button.isEnabled()
    assert "Epoch" in view.progress_text.text() and "patches/s" in view.progress_text.text()
    view.curves.draw_now()
    view.grab().save(str(artifacts_dir / "training-1-running.png"))

    # cancel: stops at the next step, keeps the last checkpoint, can be resumed
    view.cancel_button.click()
    qtbot.waitUntil(lambda: view.info().status == "cancelled", timeout=WAIT_MS)
    info = view.info()
    done_epochs = info.state["epoch"]
    assert 1 <= done_epochs < EPOCHS and info.resumable and view.resume_button.isEnabled()
    assert "Stopped by the user" in view.message.text()

    # resume; a second view (the app opened again) reattaches to the running run
    view.resume_button.click()
    qtbot.waitUntil(lambda: view.info().status == "running", timeout=WAIT_MS)
    again = TrainingView()
    qtbot.addWidget(again)
    assert again.info() is not None and again.info().path == run and again.info().active
    # (the resumed run is tiny: on a fast machine it may already have finished when the view looks)
    qtbot.waitUntil(
        lambda: again.history().status in ("running", "finished") and bool(again.history().loss_points),
        timeout=WAIT_MS,
    )

    # closing the app while training asks; "Keep training" leaves the run alive
    keep = {}

    def fake_exec(box: QMessageBox) -> int:
        keep["text"] = box.text()
        return 0

    monkeypatch.setattr(QMessageBox, "exec", fake_exec)
    monkeypatch.setattr(
        QMessageBox, "clickedButton", lambda box: next(b for b in box.buttons() if b.text() == "Keep training")
    )
    if view.info().active:
        assert again.confirm_close() is True
        assert "journey" in keep["text"]
        assert pid_alive(run_info(run).pid) or run_info(run).status == "finished"

    qtbot.waitUntil(lambda: view.info().status == "finished", timeout=WAIT_MS)
    h = view.history()
    assert h.status == "finished" and h.epoch == EPOCHS
    assert max(x for x, _ in h.loss_points) == pytest.approx(float(EPOCHS))
    assert [e for e, _ in h.val_points["auc"]] == [float(e) for e in range(1, EPOCHS + 1)]

    # evaluation of the validation split with confidence intervals
    qtbot.waitUntil(lambda: bool(view.evaluation()), timeout=WAIT_MS)
    ev = view.evaluation()
    assert ev["n_val"] == 8 and len(ev["confusion_matrix"]) == 2 and sum(map(sum, ev["confusion_matrix"])) == 8
    assert 0.0 <= ev["ci"]["accuracy"][0] <= ev["metrics"]["accuracy"] <= ev["ci"]["accuracy"][1] <= 1.0
    assert ev["metrics"]["auc"] > 0.9  # the toy classes are separable
    assert ev["epoch"] == h.best["epoch"]  # the final best model, not the one before the resume
    assert "95% CI" in view.metrics_label.text()
    # its validation patches open in the Patch review view (the main window connects the signal)
    qtbot.waitUntil(view.review_button.isEnabled, timeout=WAIT_MS)
    with qtbot.waitSignal(view.review_patches_requested, timeout=WAIT_MS) as reviewed:
        view.review_button.click()
    from engine.infer.review import load_review

    assert reviewed.args == [str(run)] and len(load_review(reviewed.args[0]).rows) == 8
    QApplication.processEvents()  # posted layout and paint requests, before the screenshot
    view.curves.draw_now()
    view.results_plot.draw_now()
    view.grab().save(str(artifacts_dir / "training-2-finished.png"))

    # one click: export to ONNX (verified) and add to the library
    view.exporter = "torchscript"  # several times faster than dynamo; both verified with onnxruntime
    with qtbot.waitSignal(view.library_changed, timeout=WAIT_MS):
        view.add_button.click()
    assert "Added" in view.result_message.text()
    (entry,) = ModelLibrary().entries()
    assert entry.metadata.class_names == ("normal", "tumor") and entry.metadata.input_size == 32
    assert entry.metadata.input_mpp == pytest.approx(0.5)
    card = entry.path.with_suffix(".md").read_text()
    assert "## Validation" in card and "AUC" in card

    # the new model runs on a slide: a grid of tumour probabilities
    from engine.infer.pipeline import InferenceConfig, compute_heatmap

    result = compute_heatmap(array_slide, entry.path, InferenceConfig(device="cpu", batch_size=128))
    grid = result.grid
    assert grid.ndim == 2 and grid.shape[0] > 4 and grid.shape[1] > 4
    finite = grid[np.isfinite(grid)]
    assert finite.size > 0 and ((finite >= 0) & (finite <= 1)).all()
