"""The Datasets view: import a patch dataset, validate it, see its class balance and sample patches.

Imported datasets are remembered in ``<MetaScope home>/datasets.json`` (path, format, mpp and the
last validation report), so they are listed again on the next launch and offered by the
training wizard.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.fileio import atomic_write_json
from engine.paths import home_dir
from gui.modalities import PATCHES, dataset_kind

# the patch dataset's details (summary, class balance, sample patches) live in
# gui.views.dataset_details; the module-level names are re-exported here
from gui.views.dataset_details import (  # noqa: F401
    THUMB_PX,
    THUMBNAILS,
    DatasetDetailsMixin,
    _open,
    _read_samples,
    sample_indices,
    summary_html,
    to_pixmap,
)
from gui.views.modality_datasets import ModalityImportBox, ModalityReportPanel, list_text
from gui.wizard.common import MessageLabel, browse_dataset, format_choices
from gui.workers import Worker, start_worker

STORE_NAME = "datasets.json"


class DatasetStore:
    """The remembered datasets: a JSON list in the MetaScope home folder."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else home_dir() / STORE_NAME

    def items(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        items = data.get("datasets", []) if isinstance(data, dict) else []
        return [d for d in items if isinstance(d, dict) and d.get("path")]

    def upsert(self, item: dict[str, Any]) -> None:
        """Add ``item`` or replace the entry with the same path, newest first."""
        items = [d for d in self.items() if d["path"] != item["path"]]
        self._save([item, *items])

    def remove(self, path: str) -> None:
        self._save([d for d in self.items() if d["path"] != path])

    def _save(self, items: list[dict[str, Any]]) -> None:
        atomic_write_json(self.path, {"datasets": items})


def _open_and_validate(
    path: str, fmt: str, mpp: float | None, progress: Any = None, cancel: Any = None, partial: Any = None
) -> tuple[Any, Any]:
    from engine.data.open import open_dataset
    from engine.data.validate import validate_dataset

    ds = open_dataset(path, fmt=fmt, mpp=mpp, labelled=True)
    report = validate_dataset(ds, progress=progress, cancel=cancel, require_classes=2)
    return ds, report


class DatasetsView(DatasetDetailsMixin, QWidget):
    """Import, validate and inspect patch datasets; start the training wizard on one."""

    #: Emitted with the dataset's store entry when the user asks to train on it.
    train_requested = Signal(object)
    #: Emitted after the list of remembered datasets changed.
    datasets_changed = Signal()
    #: The end of an import started by :meth:`import_dataset`, on the GUI thread: exactly one of
    #: these per import. They exist before the import starts, so a caller can always connect first.
    import_finished = Signal(str)  # dataset path (remembered and selected; may have problems)
    import_failed = Signal(str)  # message
    import_cancelled = Signal()

    def __init__(self, parent: QWidget | None = None, store: DatasetStore | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("DatasetsView")
        self._store = store
        self._dataset: Any = None  # the opened PatchDataset of the selected entry
        self._workers: dict[str, Worker] = {}
        self._stamp = 0
        self._loaded = False
        self._can_train = True
        self._build_ui()

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        if not self._loaded:
            # listed on first show: the app starts without touching any dataset
            self._loaded = True
            self.reload()

    @property
    def store(self) -> DatasetStore:
        return self._store if self._store is not None else DatasetStore()

    # -- UI ----------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        import_box = self._build_import_box()
        left = self._build_list_panel()
        right = self._build_detail_panel()
        # mutation studies and expression matrices: imported through their report command
        self.modality_import = ModalityImportBox()
        self.modality_import.imported.connect(self._on_modality_imported)
        self.modality_report = ModalityReportPanel()
        self.detail_stack = QStackedWidget()
        self.detail_stack.addWidget(right)
        self.detail_stack.addWidget(self.modality_report)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.detail_stack)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([280, 900])
        layout = QVBoxLayout(self)
        imports = QHBoxLayout()
        imports.addWidget(import_box, 1)
        imports.addWidget(self.modality_import, 1)
        layout.addLayout(imports)
        layout.addWidget(splitter, 1)

    def _build_import_box(self) -> QGroupBox:
        """The "Import a dataset" box: path, format, resolution, import/cancel, progress, message."""
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("Dataset folder, label CSV or PatchCamelyon *_x.h5 file")
        self.folder_button = QPushButton("Folder…")
        self.file_button = QPushButton("File…")
        self.folder_button.clicked.connect(self._on_folder_clicked)
        self.file_button.clicked.connect(self._on_file_clicked)
        self.format_combo = QComboBox()
        for key, label in format_choices():
            self.format_combo.addItem(label, key)
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.0, 100.0)
        self.mpp_spin.setDecimals(3)
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setSpecialValueText("mpp: from data")
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setToolTip("Microns per pixel of the patches, when the dataset does not record it")
        self.import_button = QPushButton("Import and validate")
        self.import_button.setDefault(True)
        self.import_button.clicked.connect(self._on_import_clicked)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        self.cancel_button.hide()
        self.progress = QProgressBar()
        self.progress.hide()
        self.import_message = MessageLabel()

        import_box = QGroupBox("Import a dataset")
        il = QVBoxLayout(import_box)
        r1 = QHBoxLayout()
        r1.addWidget(self.path_edit, 1)
        r1.addWidget(self.folder_button)
        r1.addWidget(self.file_button)
        r2 = QHBoxLayout()
        r2.addWidget(QLabel("Format:"))
        r2.addWidget(self.format_combo, 1)
        r2.addWidget(self.mpp_spin)
        r2.addWidget(self.import_button)
        r2.addWidget(self.cancel_button)
        il.addLayout(r1)
        il.addLayout(r2)
        il.addWidget(self.progress)
        il.addWidget(self.import_message)
        return import_box

    def _build_list_panel(self) -> QWidget:
        """The remembered datasets, with Train a model, Validate again and Forget."""
        self.dataset_list = QListWidget()
        self.dataset_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.dataset_list.currentRowChanged.connect(self._on_dataset_list_row_changed)
        self.train_button = QPushButton("Train a model on it…")
        self.train_button.clicked.connect(self._on_train_clicked)
        self.revalidate_button = QPushButton("Validate again")
        self.revalidate_button.clicked.connect(self._on_revalidate_clicked)
        self.remove_button = QPushButton("Forget")
        self.remove_button.setToolTip("Remove from this list (no file is deleted)")
        self.remove_button.clicked.connect(self._on_remove_clicked)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("<b>Datasets</b>"))
        ll.addWidget(self.dataset_list, 1)
        ll.addWidget(self.train_button)
        row = QHBoxLayout()
        row.addWidget(self.revalidate_button)
        row.addWidget(self.remove_button)
        ll.addLayout(row)
        return left

    # -- list --------------------------------------------------------------------------------------
    def items(self) -> list[dict[str, Any]]:
        return self.store.items()

    def reload(self, select: str | None = None) -> None:
        """Re-read the remembered datasets and select ``select`` (path) or the first."""
        self._loaded = True
        items = self.items()
        self.dataset_list.blockSignals(True)
        self.dataset_list.clear()
        for item in items:
            d = item.get("describe", {})
            ok = not item.get("report", {}).get("errors")
            text = f"{item.get('name') or Path(item['path']).name}\n{d.get('format', '?')} · {d.get('patches', 0):,} patches"
            if dataset_kind(item) != PATCHES:
                text = list_text(item)
            li = QListWidgetItem(("✓ " if ok else "✗ ") + text)
            li.setToolTip(item["path"])
            li.setData(Qt.ItemDataRole.UserRole, item["path"])
            self.dataset_list.addItem(li)
        self.dataset_list.blockSignals(False)
        row = next((i for i, it in enumerate(items) if it["path"] == select), 0 if items else -1)
        self.dataset_list.setCurrentRow(row)
        if row < 0:
            self._show(None)
        self._update_buttons()

    def current_item(self) -> dict[str, Any] | None:
        row = self.dataset_list.currentRow()
        items = self.items()
        return items[row] if 0 <= row < len(items) else None

    def _on_dataset_list_row_changed(self, _row: int) -> None:
        self._show(self.current_item())

    def set_training_available(self, available: bool) -> None:
        """Show or hide "Train a model on it" (hidden in the viewer edition, which cannot train)."""
        self._can_train = available
        self.train_button.setVisible(available)
        self._update_buttons()

    def _update_buttons(self) -> None:
        item = self.current_item()
        busy = "import" in self._workers
        self.train_button.setEnabled(
            self._can_train and bool(item) and not item.get("report", {}).get("errors") and not busy)
        self.revalidate_button.setEnabled(bool(item) and not busy)
        self.remove_button.setEnabled(bool(item) and not busy)
        self.import_button.setEnabled(not busy)

    # -- import ------------------------------------------------------------------------------------
    def _on_folder_clicked(self) -> None:
        browse_dataset(self, self.path_edit, folder=True)

    def _on_file_clicked(self) -> None:
        browse_dataset(self, self.path_edit, folder=False)

    def _on_import_clicked(self) -> None:
        path = self.path_edit.text().strip()
        if not path:
            self.import_message.show_message("Choose a dataset folder or file first.", "error")
            return
        mpp = self.mpp_spin.value() or None
        self.import_dataset(path, str(self.format_combo.currentData()), mpp)

    @property
    def importing(self) -> bool:
        """True while an import started by :meth:`import_dataset` runs."""
        return "import" in self._workers

    def import_dataset(self, path: str, fmt: str = "auto", mpp: float | None = None) -> Worker:
        """Open and validate a dataset in a worker; on success it is remembered and selected.

        The outcome arrives as :attr:`import_finished`, :attr:`import_failed` or
        :attr:`import_cancelled` (connect to those: the returned worker may already have ended).
        """
        worker = Worker(_open_and_validate, path, fmt, mpp)
        worker.signals.progress.connect(self._on_import_progress)
        worker.signals.finished.connect(lambda result: self._on_import_finished(path, fmt, mpp, result))
        worker.signals.failed.connect(self._on_import_failed)
        worker.signals.cancelled.connect(self._on_import_cancelled)
        self._workers["import"] = worker
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.show()
        self.import_message.show_message(f"Reading {path}…", "info")
        self._update_buttons()
        start_worker(worker)
        return worker

    def _on_import_progress(self, event: Any) -> None:
        if event.total:
            self.progress.setRange(0, int(event.total))
            self.progress.setValue(int(event.step))
        self.import_message.show_message(
            f"Validating: {event.message or event.stage} ({event.step:,}/{event.total or '?'})", "info"
        )

    def _end_import(self) -> None:
        self._workers.pop("import", None)
        self.progress.hide()
        self.cancel_button.hide()
        self._update_buttons()

    def _on_import_finished(self, path: str, fmt: str, mpp: float | None, result: tuple[Any, Any]) -> None:
        self._end_import()
        ds, report = result
        item = {
            "path": path,
            "fmt": fmt,
            "mpp": mpp,
            "name": Path(path).name if Path(path).is_dir() else Path(path).stem,
            "describe": _jsonable(ds.describe()),
            "report": _jsonable(report.to_dict()),
            "validated": time.strftime("%Y-%m-%d %H:%M"),
        }
        self.store.upsert(item)
        errors = report.errors
        if errors:
            self.import_message.show_message(
                f"Imported with {len(errors)} problem(s) to fix before training: {errors[0]}", "error"
            )
        else:
            self.import_message.show_message(f"✓ Imported {item['name']}: {report.n_items:,} patches, no errors.", "ok")
        self.reload(select=path)
        self.datasets_changed.emit()
        self.import_finished.emit(path)

    def _on_import_failed(self, message: str, _user: bool, _tb: str) -> None:
        self._end_import()
        self.import_message.show_message(message, "error")
        self.import_failed.emit(message)

    def _on_import_cancelled(self) -> None:
        self._end_import()
        self.import_message.show_message("Import cancelled.", "warning")
        self.import_cancelled.emit()

    def _on_cancel_clicked(self) -> None:
        worker = self._workers.get("import")
        if worker is not None:
            worker.cancel()

    # -- actions -----------------------------------------------------------------------------------
    def _on_revalidate_clicked(self) -> None:
        item = self.current_item()
        if item is not None and dataset_kind(item) != PATCHES:
            self.modality_import.start_import(dataset_kind(item), item["path"], item.get("samples", ""),
                                              item.get("orientation") or "auto")
        elif item is not None:
            self.import_dataset(item["path"], item.get("fmt", "auto"), item.get("mpp"))

    def _on_modality_imported(self, item: dict[str, Any]) -> None:
        """A study or matrix whose report succeeded: remembered and selected."""
        self.store.upsert(_jsonable(item))
        self.reload(select=item["path"])
        self.datasets_changed.emit()
        self.import_finished.emit(item["path"])

    def _on_remove_clicked(self) -> None:
        item = self.current_item()
        if item is None:
            return
        answer = QMessageBox.question(
            self,
            "Forget dataset",
            f"Remove “{item.get('name')}” from the list?\n\nNo file is deleted.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.store.remove(item["path"])
            self.reload()
            self.datasets_changed.emit()

    def _on_train_clicked(self) -> None:
        item = self.current_item()
        if item is not None and self._can_train:
            self.train_requested.emit(item)


def _jsonable(obj: Any) -> Any:
    """numpy scalars/tuples -> plain JSON types (reports and descriptions are stored as JSON)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
