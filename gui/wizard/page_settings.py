"""Wizard page 4: training settings (epochs, batch size, learning rate, augmentations, device, model quality)."""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from gui.wizard.common import MessageLabel
from gui.wizard.quality import QualityGroup

DEFAULT_EPOCHS = 10
DEFAULT_BATCH = 64
DEFAULT_LR = 1e-3
DEFAULT_PATIENCE = 5


def cuda_status() -> tuple[bool, str]:
    """Whether a CUDA GPU is usable by torch here, and its name (torch is already imported by then)."""
    try:
        import torch
    except ImportError:
        return False, ""
    try:
        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
    except RuntimeError:
        return False, ""
    return False, ""


def default_batch_size(n_train: int) -> int:
    """64, or the largest power of two that leaves at least two steps per epoch on a tiny set."""
    if n_train <= 0:
        return DEFAULT_BATCH
    b = DEFAULT_BATCH
    while b > 1 and b > n_train // 2:
        b //= 2
    return max(1, b)


class SettingsPage(QWizardPage):
    """Epochs, batch size, learning rate, augmentations, device, early stopping, model quality."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Training settings")
        self.setSubTitle("The defaults suit most patch datasets. Hover over a setting for an explanation.")
        self._error = ""
        self._cuda: tuple[bool, str] | None = None

        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(DEFAULT_EPOCHS)
        self.epochs_spin.setToolTip(
            "Passes over the training patches. Training stops earlier when the validation AUC stops improving "
            "(early stopping). A run can be cancelled and resumed at any time."
        )
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 4096)
        self.batch_spin.setValue(DEFAULT_BATCH)
        self.batch_spin.setToolTip(
            "Patches per optimisation step. Larger batches train faster on a GPU but need more memory; "
            "64 suits 96 px patches. Must not exceed the number of training patches."
        )
        self.lr_edit = QLineEdit(f"{DEFAULT_LR:g}")
        self.lr_edit.setMinimumWidth(120)
        self.lr_edit.setToolTip(
            "Peak learning rate of the AdamW optimiser (warm-up, then cosine decay). 0.001 for training from "
            "scratch; 0.0001-0.0003 when starting from pretrained weights."
        )
        self.patience_spin = QSpinBox()
        self.patience_spin.setRange(0, 1000)
        self.patience_spin.setValue(DEFAULT_PATIENCE)
        self.patience_spin.setSpecialValueText("never stop early")
        self.patience_spin.setSuffix(" epochs")
        self.patience_spin.setToolTip("Stop after this many epochs without a better validation AUC")
        self.balanced_check = QCheckBox("Balance the classes in the loss")
        self.balanced_check.setChecked(True)
        self.balanced_check.setToolTip("Weigh rare classes up so an unbalanced dataset does not bias the model")

        self.device_combo = QComboBox()
        self.device_combo.addItem("Automatic (GPU when available)", "auto")
        self.device_combo.addItem("CPU", "cpu")
        self.device_combo.addItem("CUDA GPU", "cuda")
        self.device_combo.setToolTip("Where the network trains. CUDA trains with mixed precision.")

        aug = QGroupBox("Augmentations (applied to training patches only)")
        self.flips_check = QCheckBox("Flips")
        self.flips_check.setToolTip("Random horizontal and vertical flips: tissue has no up or left")
        self.rot_check = QCheckBox("90° rotations")
        self.rot_check.setToolTip("Random rotations by multiples of 90°")
        self.colour_check = QCheckBox("Brightness / contrast / saturation jitter (±10 %)")
        self.colour_check.setToolTip("Makes the model robust to scanner and lighting differences")
        self.stain_check = QCheckBox("H&&E stain jitter")
        self.stain_check.setToolTip(
            "Perturbs haematoxylin and eosin concentrations (Tellez et al. 2018): robustness to staining "
            "differences between labs"
        )
        for c in (self.flips_check, self.rot_check, self.colour_check, self.stain_check):
            c.setChecked(True)
        grid = QGridLayout(aug)
        grid.addWidget(self.flips_check, 0, 0)
        grid.addWidget(self.rot_check, 0, 1)
        grid.addWidget(self.colour_check, 1, 0)
        grid.addWidget(self.stain_check, 1, 1)
        self.quality = QualityGroup()

        self.message = MessageLabel()
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
        form.addRow("Epochs:", self.epochs_spin)
        form.addRow("Batch size:", self.batch_spin)
        form.addRow("Learning rate:", self.lr_edit)
        form.addRow("Early stopping:", self.patience_spin)
        form.addRow("Class balance:", self.balanced_check)
        form.addRow("Device:", self.device_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(aug)
        layout.addWidget(self.quality)
        layout.addWidget(self.message)
        layout.addStretch(1)

        for w in (self.epochs_spin, self.batch_spin, self.patience_spin):
            w.valueChanged.connect(self._revalidate)
        self.lr_edit.textChanged.connect(self._revalidate)
        self.device_combo.currentIndexChanged.connect(self._revalidate)
        self._batch_touched = False
        self.batch_spin.editingFinished.connect(self._on_batch_edited)

    def _on_batch_edited(self) -> None:
        self._batch_touched = True

    def _n_train(self) -> int:
        wiz = self.wizard()
        page = getattr(wiz, "split_page", None)
        return page.train_count() if page is not None else 0

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        wiz = self.wizard()
        model_page = getattr(wiz, "model_page", None)
        if model_page is not None and model_page.weights_path() and self.lr_edit.text() == f"{DEFAULT_LR:g}":
            self.lr_edit.setText("0.0003")  # fine-tuning: a gentler default
        if not self._batch_touched:
            self.batch_spin.setValue(default_batch_size(self._n_train()))
        if self._cuda is None:
            self._cuda = cuda_status()
        available, name = self._cuda
        self.device_combo.setItemText(0, f"Automatic (now: {'GPU ' + name if available else 'CPU'})")
        self.device_combo.setItemText(2, f"CUDA GPU ({name})" if available else "CUDA GPU (none found)")
        self._revalidate()

    def lr(self) -> float | None:
        try:
            value = float(self.lr_edit.text().strip().replace(",", "."))
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    def augment(self) -> dict[str, Any]:
        colour = 0.1 if self.colour_check.isChecked() else 0.0
        return {
            "flips": self.flips_check.isChecked(),
            "rot90": self.rot_check.isChecked(),
            "brightness": colour,
            "contrast": colour,
            "saturation": colour,
            "hed": 0.03 if self.stain_check.isChecked() else 0.0,
        }

    def quality_options(self) -> dict[str, Any]:
        """``TrainConfig`` fields of the "Model quality" group (ema, stain_norm, hard_negatives, threshold rule)."""
        return self.quality.values()

    def device(self) -> str:
        return str(self.device_combo.currentData())

    def _revalidate(self) -> None:
        self._error = self._check()
        self.message.show_message(self._error, "error")
        self.completeChanged.emit()

    def _check(self) -> str:
        lr = self.lr()
        if lr is None:
            return f"Learning rate {self.lr_edit.text()!r} is not a number (e.g. 0.001 or 1e-3)."
        if not 0 < lr < 1:
            return f"Learning rate must be between 0 and 1 (exclusive); got {lr:g}. 0.001 is a good start."
        n_train = self._n_train()
        if n_train and self.batch_spin.value() > n_train:
            return (
                f"Batch size {self.batch_spin.value()} is larger than the {n_train} training patches; "
                f"use {default_batch_size(n_train)} or less."
            )
        if self.device() == "cuda":
            available = (self._cuda or (False, ""))[0]
            if not available:
                return "No CUDA GPU is usable on this computer; choose Automatic or CPU."
        return ""

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        return not self._error
