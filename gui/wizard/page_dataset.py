"""Wizard page 1: the task and the dataset (opened in a worker to learn classes, size and mpp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
    QWizardPage,
)

from gui.modalities import PATCHES, RUN_KINDS, dataset_kind
from gui.wizard.common import DatasetSummary, MessageLabel, browse_dataset, format_choices
from gui.wizard.page_modality import MODALITY_TASKS, ModalityDatasetPicker
from gui.workers import Worker, start_worker

TASKS = (
    (
        "patch_classification",
        "Patch classifier",
        "Learns to label small image patches (e.g. tumour vs normal). Tiled over a whole slide it "
        "draws the metastasis heatmap.",
    ),
    *MODALITY_TASKS,
)


def _open_summary(path: str, fmt: str, mpp: float | None, **_kw: Any) -> DatasetSummary:
    from engine.data.open import open_dataset

    ds = open_dataset(path, fmt=fmt, mpp=mpp, labelled=True)
    return DatasetSummary.from_dataset(ds, path, fmt, mpp)


class DatasetPage(QWizardPage):
    """Choose the task and the dataset; the page is complete once the dataset opened cleanly."""

    def __init__(self, recent: list[dict[str, Any]] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Task and dataset")
        self.setSubTitle("What should the model learn, and from which labelled patches?")
        self.summary: DatasetSummary | None = None
        self._worker: Worker | None = None
        self._stamp = 0
        self._busy = False

        self.task_combo = QComboBox()
        for key, label, _desc in TASKS:
            self.task_combo.addItem(label, key)
        self.task_help = QLabel(TASKS[0][2])
        self.task_help.setWordWrap(True)
        self.task_help.setStyleSheet("color: palette(mid);")
        self.task_combo.currentIndexChanged.connect(self._on_task_changed)
        # genomics / expression tasks train on a study or matrix imported in the Datasets view
        self.modality_picker = ModalityDatasetPicker(recent)
        self.modality_picker.changed.connect(self.completeChanged)

        self.recent_combo = QComboBox()
        self.recent_combo.addItem("Choose a dataset from the Datasets view…", None)
        for item in [d for d in recent or [] if dataset_kind(d) == PATCHES]:
            self.recent_combo.addItem(f"{item.get('name') or Path(item['path']).name}  —  {item['path']}", item)
        self.recent_combo.setEnabled(self.recent_combo.count() > 1)
        self.recent_combo.setToolTip("Datasets imported in the Datasets view")
        self.recent_combo.currentIndexChanged.connect(self._on_recent_changed)

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("Folder, CSV or .h5 file of a patch dataset")
        self.path_edit.setToolTip(
            "Kaggle layout (images + id,label CSV), class folders (ROOT/<class>/*.png), a PatchCamelyon "
            "*_x.h5 file, or a folder of slides with QuPath GeoJSON annotations"
        )
        self.folder_button = QPushButton("Folder…")
        self.file_button = QPushButton("File…")
        self.folder_button.clicked.connect(self._on_folder_clicked)
        self.file_button.clicked.connect(self._on_file_clicked)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.folder_button)
        path_row.addWidget(self.file_button)

        self.format_combo = QComboBox()
        for key, label in format_choices():
            self.format_combo.addItem(label, key)
        self.format_combo.setToolTip("How the dataset is laid out on disk; automatic detection works for all formats")

        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.0, 100.0)
        self.mpp_spin.setDecimals(3)
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setSpecialValueText("from the dataset")
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setToolTip(
            "Microns per pixel of the patches. The model applies itself to slides at this resolution. "
            "Kaggle/PatchCamelyon patches are 0.972 µm/px (known automatically); leave at "
            "'from the dataset' unless the dataset does not record it."
        )

        self.status = MessageLabel()
        self.problems = MessageLabel()

        form = QFormLayout(self)
        form.addRow("Task:", self.task_combo)
        form.addRow("", self.task_help)
        form.addRow("Study / matrix:", self.modality_picker)
        form.addRow("Imported datasets:", self.recent_combo)
        form.addRow("Dataset:", path_row)
        form.addRow("Format:", self.format_combo)
        form.addRow("Resolution:", self.mpp_spin)
        form.addRow("", self.status)
        form.addRow("", self.problems)
        self._form = form
        self._path_row = path_row
        self._on_task_changed()

        # re-open the dataset shortly after the user stops typing
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(350)
        self._debounce.timeout.connect(self.inspect)
        self.path_edit.textChanged.connect(self._on_input_changed)
        self.format_combo.currentIndexChanged.connect(self._on_input_changed)
        self.mpp_spin.valueChanged.connect(self._on_input_changed)

    # -- task --------------------------------------------------------------------------------------
    def task(self) -> str:
        return str(self.task_combo.currentData())

    def is_modality(self) -> bool:
        return self.task() in RUN_KINDS

    def set_task(self, task: str) -> None:
        self.task_combo.setCurrentIndex(max(0, self.task_combo.findData(task)))

    def set_modality_dataset(self, item: dict[str, Any]) -> None:
        """Preselect a study or matrix (from the Datasets view) and the first task of its kind."""
        task = next(k for k, (_cmd, _label, kind) in RUN_KINDS.items() if kind == dataset_kind(item))
        self.set_task(task)
        self.modality_picker.add(item)

    def _on_task_changed(self, *_a: Any) -> None:
        self.task_help.setText(next(d for k, _l, d in TASKS if k == self.task()))
        modality = self.is_modality()
        if modality:
            self.modality_picker.set_kind(RUN_KINDS[self.task()][2])
        self._form.setRowVisible(self.modality_picker, modality)
        for w in (self.recent_combo, self._path_row, self.format_combo, self.mpp_spin):
            self._form.setRowVisible(w, not modality)
        if modality:
            self.status.clear_message()
            self.problems.clear_message()
        self.setSubTitle("Which imported study or expression matrix?" if modality
                         else "What should the model learn, and from which labelled patches?")
        self.completeChanged.emit()

    # -- inputs ------------------------------------------------------------------------------------
    def set_dataset(self, path: str, fmt: str = "auto", mpp: float | None = None) -> None:
        """Preselect a dataset (from the Datasets view)."""
        idx = self.format_combo.findData(fmt)
        self.format_combo.setCurrentIndex(max(0, idx))
        self.mpp_spin.setValue(mpp or 0.0)
        self.path_edit.setText(path)

    def inputs(self) -> tuple[str, str, float | None]:
        mpp = self.mpp_spin.value()
        return self.path_edit.text().strip(), str(self.format_combo.currentData()), (mpp if mpp > 0 else None)

    def _on_recent_changed(self, index: int) -> None:
        item = self.recent_combo.itemData(index)
        if item:
            self.set_dataset(item["path"], item.get("fmt", "auto"), item.get("mpp"))

    def _on_folder_clicked(self) -> None:
        browse_dataset(self, self.path_edit, folder=True)

    def _on_file_clicked(self) -> None:
        browse_dataset(self, self.path_edit, folder=False)

    def _on_input_changed(self) -> None:
        self.summary = None
        self.problems.clear_message()
        path = self.inputs()[0]
        if path:
            self.status.show_message("Reading the dataset…", "info")
            self._debounce.start()
        else:
            self.status.clear_message()
        self.completeChanged.emit()

    # -- inspection ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._busy

    def inspect(self) -> None:
        """Open the dataset in a worker; the result arrives in :meth:`_on_worker_finished`."""
        path, fmt, mpp = self.inputs()
        if not path:
            return
        if not Path(path).exists():
            self._show_error(f"{path} does not exist")
            return
        self._stamp += 1
        stamp = self._stamp
        self._busy = True
        worker = Worker(_open_summary, path, fmt, mpp)
        worker.signals.finished.connect(lambda s, st=stamp: self._on_worker_finished(st, s))
        worker.signals.failed.connect(lambda msg, user, _tb, st=stamp: self._on_worker_failed(st, msg, user))
        self._worker = worker
        start_worker(worker)

    def _on_worker_finished(self, stamp: int, summary: DatasetSummary) -> None:
        if stamp != self._stamp:
            return  # the inputs changed while this one was read
        self._busy = False
        error = check_trainable(summary)
        if error:
            self._show_error(error)
            return
        self.summary = summary
        self.status.show_message("✓ " + summary.one_line(), "ok")
        notes = list(summary.warnings)
        if summary.mpp is None and summary.dataset_mpp is None:
            notes.append(
                "The resolution is unknown: enter the microns per pixel, or the model will be applied to "
                "slides at their full resolution."
            )
        self.problems.show_message("\n".join(notes), "warning")
        self.completeChanged.emit()

    def _on_worker_failed(self, stamp: int, message: str, user_error: bool) -> None:
        if stamp != self._stamp:
            return
        self._busy = False
        self._show_error(message if user_error else f"Cannot read the dataset: {message}")

    def _show_error(self, message: str) -> None:
        self.summary = None
        self.status.show_message(message, "error")
        self.problems.clear_message()
        self.completeChanged.emit()

    # -- QWizardPage -------------------------------------------------------------------------------
    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        if self.is_modality():
            return self.modality_picker.item() is not None
        return self.summary is not None and not self._busy and self.summary.path == self.inputs()[0]


def check_trainable(summary: DatasetSummary) -> str:
    """Why a dataset cannot train a classifier, or an empty string."""
    present = {k: v for k, v in summary.counts.items() if k != "unlabelled" and v > 0}
    if len(present) < 2:
        names = ", ".join(present) or "none"
        return f"Training needs at least two classes with patches; this dataset has {len(present)} ({names})."
    few = [k for k, v in present.items() if v < 2]
    if few:
        return f"Class {few[0]!r} has a single patch; each class needs at least two (one to train, one to validate)."
    if min(summary.patch_size) < 8:
        h, w = summary.patch_size
        return f"Patches are {w}×{h} px; at least 8×8 px are needed."
    return ""
