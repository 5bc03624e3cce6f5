"""The training wizard: every page checks its own input; Finish yields a valid TrainConfig."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QWizard  # noqa: E402

from engine.train.config import TrainConfig  # noqa: E402
from gui.wizard import TrainingWizard  # noqa: E402
from tests.fixtures.datasets import make_folder_dataset  # noqa: E402

WAIT_MS = 30_000


def _open(qtbot, path: Path, mpp: float | None = None) -> TrainingWizard:  # noqa: ANN001
    wizard = TrainingWizard()
    qtbot.addWidget(wizard)
    wizard.resize(800, 600)
    wizard.show()
    wizard.dataset_page.set_dataset(str(path), "auto", mpp)
    return wizard


def _next(qtbot, wizard: TrainingWizard) -> None:  # noqa: ANN001
    page = wizard.currentPage()
    qtbot.waitUntil(page.isComplete, timeout=WAIT_MS)
    assert wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    wizard.next()
    assert wizard.currentPage() is not page, getattr(page, "message", None) and page.message.text()


def test_wizard_walkthrough_builds_train_config(qtbot, folder_dataset: Path, artifacts_dir: Path) -> None:
    wizard = _open(qtbot, folder_dataset, mpp=0.5)
    qtbot.waitUntil(wizard.dataset_page.isComplete, timeout=WAIT_MS)
    assert "24 patches (normal 12, tumor 12)" in wizard.dataset_page.status.text()
    assert "96×96 px" in wizard.dataset_page.status.text()
    wizard.grab().save(str(artifacts_dir / "wizard-1-dataset.png"))

    _next(qtbot, wizard)  # -> split
    split = wizard.split_page
    qtbot.waitUntil(split.isComplete, timeout=WAIT_MS)
    assert split.stratified.isChecked()  # class folders record no slides
    assert split.train_count() == 20  # 20 % of 12 per class -> 2 + 2 validation
    assert "Validation" in split.preview.text()
    wizard.grab().save(str(artifacts_dir / "wizard-2-split.png"))

    _next(qtbot, wizard)  # -> model
    model = wizard.model_page
    qtbot.waitUntil(lambda: model.arch() is not None, timeout=WAIT_MS)
    names = [a.name for a in model.architectures]
    assert "seed_cnn" in names and "resnet18" in names
    assert "3,411,810 trainable parameters" in model.arch_details.text()  # the classic ~3.4 M net
    model.select("vgg_small")
    wizard.grab().save(str(artifacts_dir / "wizard-3-model.png"))

    _next(qtbot, wizard)  # -> settings
    settings = wizard.settings_page
    assert settings.batch_spin.value() == 8  # 64 would exceed 20 training patches
    assert settings.epochs_spin.toolTip() and settings.lr_edit.toolTip() and settings.device_combo.toolTip()
    settings.epochs_spin.setValue(3)
    settings.stain_check.setChecked(False)
    settings.device_combo.setCurrentIndex(settings.device_combo.findData("cpu"))
    wizard.grab().save(str(artifacts_dir / "wizard-4-settings.png"))

    _next(qtbot, wizard)  # -> review
    review = wizard.review_page
    assert "vgg_small" in review.details.toPlainText() and "stratified" in review.details.toPlainText()
    assert wizard.button(QWizard.WizardButton.FinishButton).text() == "Start training"
    wizard.grab().save(str(artifacts_dir / "wizard-5-review.png"))

    started: list[tuple[TrainConfig, Path]] = []
    wizard.start_requested.connect(lambda c, r: started.append((c, r)))
    wizard.button(QWizard.WizardButton.FinishButton).click()
    assert len(started) == 1
    cfg, run_dir = started[0]
    assert isinstance(cfg, TrainConfig)
    assert (cfg.data, cfg.fmt, cfg.mpp, cfg.arch, cfg.epochs, cfg.batch_size) == (
        str(folder_dataset),
        "folders",
        0.5,
        "vgg_small",
        3,
        8,
    )
    assert (cfg.split, cfg.val_fraction, cfg.device, cfg.augment.hed, cfg.augment.flips) == (
        "stratified",
        0.2,
        "cpu",
        0.0,
        True,
    )
    assert run_dir.name.endswith(f"vgg_small-{folder_dataset.name}") and not run_dir.exists()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_dataset_page_rejects_missing_and_one_class_data(qtbot, tmp_path: Path, broken_datasets) -> None:  # noqa: ANN001
    wizard = _open(qtbot, tmp_path / "nowhere")
    page = wizard.dataset_page
    qtbot.waitUntil(lambda: page.status.kind == "error", timeout=WAIT_MS)
    assert "does not exist" in page.status.text() and not page.isComplete()

    page.path_edit.setText(str(broken_datasets["one_class"]))
    qtbot.waitUntil(lambda: page.status.kind == "error" and "class" in page.status.text(), timeout=WAIT_MS)
    assert "at least two classes" in page.status.text() or "one class" in page.status.text()
    assert not wizard.button(QWizard.WizardButton.NextButton).isEnabled()

    page.path_edit.setText(str(broken_datasets["empty"]))
    qtbot.waitUntil(lambda: page.status.kind == "error", timeout=WAIT_MS)
    assert "no images found" in page.status.text()
    assert not page.isComplete()


def test_split_page_rejects_a_split_without_validation_patches(qtbot, tmp_path: Path) -> None:
    # every patch of a class is a byte-identical copy: a grouped split keeps copies together, so one
    # class lands entirely on one side
    root = make_folder_dataset(tmp_path / "copies", per_class=1, size=32)
    for cls in ("normal", "tumor"):
        src = next((root / cls).glob("*.png"))
        for i in range(1, 4):
            shutil.copyfile(src, src.with_name(f"{cls}_copy{i}.png"))
    wizard = _open(qtbot, root, mpp=0.5)
    _next(qtbot, wizard)
    split = wizard.split_page
    qtbot.waitUntil(split.isComplete, timeout=WAIT_MS)  # stratified works
    split.grouped.setChecked(True)
    qtbot.waitUntil(lambda: split.message.kind == "error", timeout=WAIT_MS)
    assert "No validation patches" in split.message.text() or "No training patches" in split.message.text()
    assert not wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    split.stratified.setChecked(True)
    qtbot.waitUntil(split.isComplete, timeout=WAIT_MS)


def test_model_settings_review_pages_reject_bad_choices(qtbot, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "tiny", per_class=6, size=24)
    wizard = _open(qtbot, root, mpp=0.5)
    _next(qtbot, wizard)
    _next(qtbot, wizard)
    model = wizard.model_page
    qtbot.waitUntil(lambda: model.arch() is not None, timeout=WAIT_MS)

    # 24 px patches are too small for ResNet-18 (32 px)
    assert model.select("resnet18")
    assert model.message.kind == "error" and "at least 32 px" in model.message.text()
    assert not model.isComplete()
    assert model.select("seed_cnn") and model.isComplete()

    model.weights_check.setChecked(True)
    assert not model.isComplete() and "Choose a weights file" in model.message.text()
    model.weights_edit.setText(str(tmp_path / "missing.pt"))
    assert "not found" in model.message.text()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    model.weights_edit.setText(str(garbage))
    assert model.isComplete()
    # Next loads the weights into the network in a worker (torch stays off the GUI thread): refused
    with qtbot.waitSignal(model.weights_checked, timeout=WAIT_MS) as checked:
        wizard.next()
        assert model.checking_weights and not model.isComplete() and wizard.currentPage() is model
    assert checked.args == [False] and wizard.currentPage() is model and not model.checking_weights
    assert model.message.kind == "error" and "garbage.pt" in model.message.text()
    model.weights_check.setChecked(False)
    _next(qtbot, wizard)

    settings = wizard.settings_page
    settings.lr_edit.setText("fast")
    assert not settings.isComplete() and "not a number" in settings.message.text()
    settings.lr_edit.setText("5")
    assert "between 0 and 1" in settings.message.text()
    settings.lr_edit.setText("1e-3")
    settings.batch_spin.setValue(64)
    assert not settings.isComplete() and "larger than the 10 training patches" in settings.message.text()
    settings.batch_spin.setValue(4)
    settings.device_combo.setCurrentIndex(settings.device_combo.findData("cuda"))
    from gui.wizard.page_settings import cuda_status

    if not cuda_status()[0]:
        assert not settings.isComplete() and "No CUDA GPU" in settings.message.text()
    settings.device_combo.setCurrentIndex(settings.device_combo.findData("cpu"))
    assert settings.isComplete()
    _next(qtbot, wizard)

    review = wizard.review_page
    review.name_edit.setText("")
    assert not review.isComplete()
    review.name_edit.setText("---")
    assert not review.validatePage() and "letter or digit" in review.message.text()
    review.name_edit.setText("tiny run")
    assert review.validatePage() and review.config.batch_size == 4


def test_good_weights_load_in_a_worker_then_the_wizard_moves_on(qtbot, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import threading

    import torch

    from engine.models.registry import build_model
    from gui.wizard import page_model

    root = make_folder_dataset(tmp_path / "tiny", per_class=6, size=32)
    weights = tmp_path / "seed.pt"
    torch.save(build_model("seed_cnn", 2, 32).state_dict(), weights)
    threads: list[bool] = []
    real = page_model._check_weights

    def recorded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        threads.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(page_model, "_check_weights", recorded)
    wizard = _open(qtbot, root, mpp=0.5)
    _next(qtbot, wizard)
    _next(qtbot, wizard)
    model = wizard.model_page
    qtbot.waitUntil(lambda: model.arch() is not None, timeout=WAIT_MS)
    assert model.select("seed_cnn")
    model.weights_check.setChecked(True)
    model.weights_edit.setText(str(weights))
    with qtbot.waitSignal(model.weights_checked, timeout=WAIT_MS) as checked:
        wizard.next()
        assert wizard.currentPage() is model and "Loading seed.pt" in model.message.text()
    assert checked.args == [True] and threads == [False]
    assert wizard.currentPage() is wizard.settings_page  # moved on by itself once the weights loaded
    wizard.back()
    assert "seed.pt loads into seed_cnn" in model.message.text()
    wizard.next()  # checked already: no second load
    assert wizard.currentPage() is wizard.settings_page and threads == [False]
