"""Wizard page 2: how the dataset is split into training and validation patches."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from gui.wizard.common import DatasetSummary, MessageLabel
from gui.workers import Worker, start_worker


def preview_split(ds: Any, strategy: str, val_fraction: float, seed: int, **_kw: Any) -> dict[str, tuple[int, int]]:
    """``class -> (training, validation)`` patch counts of the split the trainer will make.

    Uses :func:`engine.data.split.split_dataset` with the same arguments as the trainer, so the
    preview is exact. A grouped split of a file dataset hashes every file (identical copies are
    kept on one side), hence this runs in a worker.
    """
    from engine.data.split import split_dataset

    train_idx, val_idx = split_dataset(ds, val_fraction, strategy=strategy, seed=seed)
    labels = np.asarray(ds.labels, dtype=np.int64)
    tr = np.bincount(labels[train_idx][labels[train_idx] >= 0], minlength=len(ds.class_names))
    va = np.bincount(labels[val_idx][labels[val_idx] >= 0], minlength=len(ds.class_names))
    return {name: (int(tr[k]), int(va[k])) for k, name in enumerate(ds.class_names)}


class SplitPage(QWizardPage):
    """Stratified or grouped split, validation fraction, seed; shows the resulting counts."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Training / validation split")
        self.setSubTitle("Validation patches are never trained on; they measure how well the model generalises.")

        self.stratified = QRadioButton("Stratified by class")
        self.stratified.setToolTip("Each class is split in the same proportion. Use when patches are independent.")
        self.grouped = QRadioButton("Grouped by slide / patient")
        self.grouped.setToolTip(
            "All patches of one slide (or patient) go to the same side, so validation measures performance on "
            "unseen slides. Recommended whenever the dataset records where patches come from."
        )
        self.strategy_group = QButtonGroup(self)
        self.strategy_group.addButton(self.stratified)
        self.strategy_group.addButton(self.grouped)
        self.stratified.setChecked(True)
        self.group_note = QLabel()
        self.group_note.setWordWrap(True)
        self.group_note.setStyleSheet("color: palette(mid);")

        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(1.0, 90.0)
        self.val_spin.setDecimals(0)
        self.val_spin.setSingleStep(5.0)
        self.val_spin.setValue(20.0)
        self.val_spin.setSuffix(" %")
        self.val_spin.setToolTip("Share of the patches held out for validation (10-30 % is usual)")

        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Seeds the split, initialisation and shuffling: the same seed gives the same run")

        self.preview = QLabel()
        self.preview.setTextFormat(Qt.TextFormat.RichText)
        self.message = MessageLabel()

        strat_box = QVBoxLayout()
        strat_box.addWidget(self.stratified)
        strat_box.addWidget(self.grouped)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
        form.addRow("Split:", strat_box)
        form.addRow("Validation share:", self.val_spin)
        form.addRow("Random seed:", self.seed_spin)
        result = QGroupBox("Resulting split (exactly what training will use)")
        result_layout = QVBoxLayout(result)
        result_layout.addWidget(self.preview)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.group_note)
        layout.addSpacing(6)
        layout.addWidget(result)
        layout.addWidget(self.message)
        layout.addStretch(1)

        self.stratified.toggled.connect(self._update)
        self.val_spin.valueChanged.connect(self._update)
        self.seed_spin.valueChanged.connect(self._update)
        self._error = ""
        self._counts: dict[str, tuple[int, int]] | None = None
        self._stamp = 0
        self._worker: Worker | None = None

    @property
    def summary(self) -> DatasetSummary | None:
        return getattr(self.wizard(), "summary", None)

    def strategy(self) -> str:
        return "grouped" if self.grouped.isChecked() else "stratified"

    def val_fraction(self) -> float:
        return self.val_spin.value() / 100.0

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        s = self.summary
        has_groups = bool(s is not None and s.groups)
        if has_groups:
            self.group_note.setText(
                f"The dataset records {s.groups} slides/patients: a grouped split is recommended. "
                "Identical copies of a patch are always kept on one side."
            )
        else:
            self.group_note.setText(
                "The dataset does not record which slide each patch comes from; a grouped split then only keeps "
                "identical copies of a patch on one side."
            )
        # blocked: one preview for the page, not one per toggled button
        self.stratified.blockSignals(True)
        (self.grouped if has_groups else self.stratified).setChecked(True)
        self.stratified.blockSignals(False)
        self._update()

    def _update(self) -> None:
        s = self.summary
        if s is None or s.dataset is None:
            return
        self._counts = None
        self._error = ""
        self._stamp += 1
        stamp = self._stamp
        self.preview.setText("<i>Computing the split…</i>")
        self.message.clear_message()
        worker = Worker(preview_split, s.dataset, self.strategy(), self.val_fraction(), self.seed_spin.value())
        worker.signals.finished.connect(lambda counts, st=stamp: self._on_preview_finished(st, counts))
        worker.signals.failed.connect(lambda msg, _u, _tb, st=stamp: self._on_preview_failed(st, msg))
        self._worker = worker
        start_worker(worker)
        self.completeChanged.emit()

    def _on_preview_finished(self, stamp: int, counts: dict[str, tuple[int, int]]) -> None:
        if stamp != self._stamp:
            return  # settings changed meanwhile
        self._counts = counts
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td align='right'>{tr:,}</td><td align='right'>{va:,}</td></tr>"
            for name, (tr, va) in counts.items()
        )
        total_tr = sum(t for t, _ in counts.values())
        total_va = sum(v for _, v in counts.values())
        self.preview.setText(
            "<table cellspacing='0' cellpadding='3'><tr><th align='left'>Class</th><th>Training</th>"
            f"<th>Validation</th></tr>{rows}<tr><td><b>Total</b></td><td align='right'><b>{total_tr:,}</b></td>"
            f"<td align='right'><b>{total_va:,}</b></td></tr></table>"
        )
        self._error = self._check(counts)
        self.message.show_message(self._error, "error")
        self.completeChanged.emit()

    def _on_preview_failed(self, stamp: int, message: str) -> None:
        if stamp != self._stamp:
            return
        self._counts = None
        self.preview.setText("")
        self._error = f"Cannot split the dataset this way: {message}"
        self.message.show_message(self._error, "error")
        self.completeChanged.emit()

    def _check(self, counts: dict[str, tuple[int, int]]) -> str:
        for name, (tr, va) in counts.items():
            if va == 0:
                return f"No validation patches of class {name!r}: raise the validation share or use a stratified split."
            if tr == 0:
                return f"No training patches of class {name!r}: lower the validation share."
        return ""

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        return self._counts is not None and not self._error

    def train_count(self) -> int:
        """Training patches of the previewed split (0 while it is computed)."""
        return sum(t for t, _ in (self._counts or {}).values())
