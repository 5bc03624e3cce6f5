"""Wizard page 5: review everything, name the run, build the engine's ``TrainConfig``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QLabel, QLineEdit, QTextBrowser, QVBoxLayout, QWidget, QWizard, QWizardPage

from engine.errors import MetaScopeError
from engine.paths import runs_dir
from engine.runs import new_run_dir
from gui.wizard.common import MessageLabel


def _row(label: str, value: str) -> str:
    return (
        f"<tr><td style='padding:2px 14px 2px 0;color:#666;vertical-align:top'>{html.escape(label)}</td>"
        f"<td style='padding:2px 0'>{html.escape(value)}</td></tr>"
    )


class ReviewPage(QWizardPage):
    """Shows the full configuration; Start builds a validated ``TrainConfig``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Review and start")
        self.setSubTitle("Training runs in the background; you can keep working, cancel, or resume later.")
        self.config: Any = None
        self.run_dir: Path | None = None

        self.name_edit = QLineEdit()
        self.name_edit.setToolTip("Name of the run folder (letters, digits, - and _); the date is added in front")
        self.name_edit.textChanged.connect(self._on_name_changed)
        self.location = QLabel()
        self.location.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.location.setStyleSheet("color: palette(mid);")
        self.details = QTextBrowser()
        self.details.setMinimumHeight(220)
        self.message = MessageLabel()

        form = QFormLayout()
        form.addRow("Run name:", self.name_edit)
        form.addRow("Saved in:", self.location)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.details, 1)
        layout.addWidget(self.message)
        self.setButtonText(QWizard.WizardButton.FinishButton, "Start training")

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        wiz = self.wizard()
        s = wiz.summary
        arch = wiz.model_page.arch()
        if not self.name_edit.text():
            self.name_edit.setText(f"{arch.name}-{Path(s.path).stem}" if arch and s else "run")
        self.location.setText(str(runs_dir()))
        self.details.setHtml(self._details_html())
        self.message.clear_message()

    def _details_html(self) -> str:
        wiz = self.wizard()
        s = wiz.summary
        mp, sp, st = wiz.model_page, wiz.split_page, wiz.settings_page
        a = mp.arch()
        aug = st.augment()
        aug_names = [n for n, on in (("flips", aug["flips"]), ("90° rotations", aug["rot90"])) if on]
        if aug["brightness"]:
            aug_names.append("colour jitter")
        if aug["hed"]:
            aug_names.append("H&E stain jitter")
        mpp = s.mpp if s.mpp is not None else s.dataset_mpp
        rows = [
            ("Task", "Patch classifier"),
            ("Dataset", s.path),
            ("Format", s.detected_fmt),
            ("Patches", s.one_line()),
            ("Resolution", f"{mpp:g} µm/px" if mpp else "unknown"),
            ("Split", f"{sp.strategy()}, {sp.val_fraction():.0%} validation, seed {sp.seed_spin.value()}"),
            ("Architecture", f"{a.name} ({a.params:,} parameters)" if a else ""),
            ("Starting weights", mp.weights_path() or "random initialisation"),
            ("Epochs", f"{st.epochs_spin.value()} (early stopping: {st.patience_spin.text()})"),
            ("Batch size", str(st.batch_spin.value())),
            ("Learning rate", st.lr_edit.text()),
            ("Class balance", "balanced loss" if st.balanced_check.isChecked() else "none"),
            ("Augmentations", ", ".join(aug_names) or "none"),
            ("Device", st.device_combo.currentText()),
            *st.quality.summary_rows(),
        ]
        return "<table>" + "".join(_row(k, v) for k, v in rows) + "</table>"

    def _on_name_changed(self) -> None:
        self.completeChanged.emit()

    def run_name(self) -> str:
        return self.name_edit.text().strip()

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        return bool(self.run_name())

    def build_config(self) -> Any:
        """The engine's ``TrainConfig`` from all pages (raises ``ConfigError`` on bad values)."""
        from engine.train.config import AugmentConfig, TrainConfig

        wiz = self.wizard()
        s = wiz.summary
        mp, sp, st = wiz.model_page, wiz.split_page, wiz.settings_page
        a = mp.arch()
        steps = max(1, -(-sp.train_count() // max(1, st.batch_spin.value())))
        return TrainConfig(
            data=s.path,
            fmt=s.detected_fmt or s.fmt,
            mpp=s.mpp,
            arch=a.name if a else "",
            weights=mp.weights_path(),
            epochs=st.epochs_spin.value(),
            batch_size=st.batch_spin.value(),
            lr=st.lr() or 0.0,
            class_weighting="balanced" if st.balanced_check.isChecked() else "none",
            augment=AugmentConfig(**st.augment()),
            val_fraction=sp.val_fraction(),
            split=sp.strategy(),
            patience=st.patience_spin.value(),
            seed=sp.seed_spin.value(),
            device=st.device(),
            **st.quality_options(),
            # about twenty loss points per epoch on small datasets, every 20 steps on large ones
            log_every=max(1, min(20, steps // 20)),
        )

    def validatePage(self) -> bool:  # noqa: N802 (Qt override)
        name = self.run_name()
        if not any(c.isalnum() for c in name):
            self.message.show_message("The run name needs at least one letter or digit.", "error")
            return False
        try:
            self.config = self.build_config()
        except MetaScopeError as exc:
            self.message.show_message(f"Invalid setting: {exc}", "error")
            return False
        self.run_dir = new_run_dir(name)
        return True
