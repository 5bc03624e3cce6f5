"""The Datasets view: import a patch dataset, validate it, see its class balance and sample patches.

Imported datasets are remembered in ``<MetaScope home>/datasets.json`` (path, format, mpp and the
last validation report), so they are listed again on the next launch and offered by the
training wizard.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import shiboken6
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
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
from gui.views.modality_datasets import ModalityImportBox, ModalityReportPanel, list_text
from gui.widgets.plot_canvas import PlotCanvas, bar_chart
from gui.wizard.common import MessageLabel, browse_dataset, format_choices
from gui.workers import Worker, start_worker

STORE_NAME = "datasets.json"
THUMBNAILS = 48  # sample patches shown per filter
THUMB_PX = 96


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


def _open(path: str, fmt: str, mpp: float | None, progress: Any = None, cancel: Any = None, partial: Any = None) -> Any:
    from engine.data.open import open_dataset

    return open_dataset(path, fmt=fmt, mpp=mpp, labelled=True)


def _read_samples(ds: Any, indices: list[int], progress: Any = None, cancel: Any = None, partial: Any = None) -> int:
    """Read patches and send them in small chunks of ``(index, uint8 HxWx3 or error text)``."""
    from engine.errors import DatasetError
    from engine.jobs import check_cancel

    chunk: list[tuple[int, Any]] = []
    for n, i in enumerate(indices):
        check_cancel(cancel)
        try:
            chunk.append((i, ds.read(i)))
        except DatasetError as exc:
            chunk.append((i, str(exc)))
        if len(chunk) == 8 or n == len(indices) - 1:
            partial(chunk)
            chunk = []
    return len(indices)


def sample_indices(labels: np.ndarray, class_index: int | None, n: int, seed: int = 0) -> list[int]:
    """Up to ``n`` patch indices of one class (``None``: all classes, balanced), reproducibly spread."""
    rng = np.random.default_rng(seed)
    if class_index is not None:
        idx = np.flatnonzero(labels == class_index)
        return sorted(rng.choice(idx, size=min(n, idx.size), replace=False).tolist()) if idx.size else []
    classes = [c for c in np.unique(labels) if c >= 0]
    if not classes:
        return []
    per = max(1, n // len(classes))
    out: list[int] = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        out += rng.choice(idx, size=min(per, idx.size), replace=False).tolist()
    return out[:n]


def to_pixmap(arr: np.ndarray, side: int = THUMB_PX) -> QPixmap:
    """A ``uint8`` RGB array as a square thumbnail pixmap."""
    a = np.ascontiguousarray(arr[..., :3], dtype=np.uint8)
    h, w = a.shape[:2]
    img = QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(img).scaled(
        side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )


def summary_html(item: dict[str, Any]) -> str:
    """Counts, size, resolution, and the validation report's problems."""
    d = item.get("describe", {})
    rep = item.get("report", {})
    counts = d.get("counts", {})
    total = sum(counts.values()) or 1
    ps = d.get("patch_size") or ["?", "?"]
    mpp = d.get("mpp")
    rows = [
        ("Path", html.escape(item["path"])),
        ("Format", html.escape(str(d.get("format", item.get("fmt"))))),
        ("Patches", f"{d.get('patches', 0):,}"),
        ("Classes", ", ".join(f"{html.escape(k)}: {v:,} ({100 * v / total:.0f}%)" for k, v in counts.items())),
        (
            "Image size",
            f"{ps[1]}×{ps[0]} px"
            + (
                f" (stored sizes: {', '.join(f'{k}: {v}' for k, v in rep.get('sizes', {}).items())})"
                if len(rep.get("sizes", {})) > 1
                else ""
            ),
        ),
        (
            "Resolution",
            f"{mpp:g} µm/px ({d.get('mpp_source', '')})" if mpp else "<span style='color:#8a5a00'>unknown</span>",
        ),
    ]
    if d.get("groups"):
        rows.append(("Slides / patients", f"{d['groups']:,}"))
    if rep:
        dup = rep.get("duplicates", {})
        checks = [
            ("Missing files", rep.get("missing", {}).get("count", 0)),
            ("Unreadable", rep.get("unreadable", {}).get("count", 0)),
            ("Size mismatches", rep.get("size_mismatches", {}).get("count", 0)),
            ("Unknown labels", rep.get("unknown_labels", {}).get("count", 0)),
            ("Duplicate files", dup.get("files", 0)),
        ]
        rows.append(("Checks", " · ".join(f"{k} <b>{v:,}</b>" if v else f"{k} 0" for k, v in checks)))
    body = "".join(
        f"<tr><td style='padding:1px 12px 1px 0;color:#666;vertical-align:top'>{k}</td><td>{v}</td></tr>"
        for k, v in rows
    )
    out = f"<table>{body}</table>"
    if rep:
        when = item.get("validated", "")
        if rep.get("errors"):
            out += "".join(f"<p style='color:#b00020;margin:4px 0'>✗ {html.escape(e)}</p>" for e in rep["errors"])
        else:
            out += f"<p style='color:#1b6e20;margin:4px 0'>✓ Ready for training (validated {html.escape(when)})</p>"
        out += "".join(f"<p style='color:#8a5a00;margin:2px 0'>⚠ {html.escape(w)}</p>" for w in rep.get("warnings", []))
    return out


class DatasetsView(QWidget):
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

        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.balance = PlotCanvas(min_height=170)
        self.class_filter = QComboBox()
        self.class_filter.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.class_filter.currentIndexChanged.connect(self._on_class_filter_changed)
        self.thumbs = QListWidget()
        self.thumbs.setViewMode(QListView.ViewMode.IconMode)
        self.thumbs.setIconSize(QSize(THUMB_PX, THUMB_PX))
        self.thumbs.setGridSize(QSize(THUMB_PX + 16, THUMB_PX + 30))
        self.thumbs.setResizeMode(QListView.ResizeMode.Adjust)
        self.thumbs.setMovement(QListView.Movement.Static)
        self.thumbs.setUniformItemSizes(True)
        self.thumbs.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.thumb_message = MessageLabel()

        top = QHBoxLayout()
        top.addWidget(self.summary, 3)
        top.addWidget(self.balance, 2)
        filt = QHBoxLayout()
        filt.addWidget(QLabel("<b>Sample patches</b>"))
        filt.addStretch(1)
        filt.addWidget(QLabel("Class:"))
        filt.addWidget(self.class_filter)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addLayout(top)
        rl.addLayout(filt)
        rl.addWidget(self.thumbs, 1)
        rl.addWidget(self.thumb_message)
        self.detail = right
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

    # -- details -----------------------------------------------------------------------------------
    def _show(self, item: dict[str, Any] | None) -> None:
        self._dataset = None
        self.thumbs.clear()
        self.thumb_message.clear_message()
        self.class_filter.blockSignals(True)
        self.class_filter.clear()
        self.class_filter.blockSignals(False)
        modality = item is not None and dataset_kind(item) != PATCHES
        self.detail_stack.setCurrentIndex(1 if modality else 0)
        if item is not None and modality:
            self.modality_report.show_item(item)
            return
        if item is None:
            self.summary.setText(
                "<p style='color:#808080'>No dataset yet. Choose a folder above: Kaggle layout (images + id,label CSV), "
                "class folders, a PatchCamelyon HDF5 pair, or slides with QuPath annotations.</p>"
            )
            self.balance.message("Class balance appears here")
            return
        self.summary.setText(summary_html(item))
        counts = item.get("describe", {}).get("counts", {})
        if counts:
            bar_chart(self.balance, list(counts), list(counts.values()), title="Class balance", ylabel="patches")
        self.class_filter.blockSignals(True)
        self.class_filter.addItem("All classes", None)
        for k, name in enumerate(item.get("describe", {}).get("class_names", [])):
            self.class_filter.addItem(f"{name} ({counts.get(name, 0):,})", k)
        self.class_filter.blockSignals(False)
        # reopening is cheap (no pixels read); thumbnails follow in a worker
        self._stamp += 1
        stamp = self._stamp
        worker = Worker(_open, item["path"], item.get("fmt", "auto"), item.get("mpp"))
        worker.signals.finished.connect(lambda ds, st=stamp: self._on_open_finished(st, ds))
        worker.signals.failed.connect(lambda msg, _u, _tb, st=stamp: self._on_open_failed(st, msg))
        self._workers["open"] = worker
        start_worker(worker)

    def _on_open_finished(self, stamp: int, ds: Any) -> None:
        if stamp != self._stamp:
            return
        self._dataset = ds
        self._load_thumbnails()

    def _on_open_failed(self, stamp: int, message: str) -> None:
        if stamp == self._stamp:
            self.thumb_message.show_message(f"Cannot open the dataset now: {message}", "error")

    def _on_class_filter_changed(self, _index: int) -> None:
        self._load_thumbnails()

    def _load_thumbnails(self) -> None:
        ds = self._dataset
        if ds is None:
            return
        old = self._workers.pop("thumbs", None)
        if old is not None:
            old.cancel()
        self.thumbs.clear()
        cls = self.class_filter.currentData()
        indices = sample_indices(np.asarray(ds.labels), cls, THUMBNAILS)
        worker = Worker(_read_samples, ds, indices)
        names = list(ds.class_names)
        worker.signals.partial.connect(lambda chunk, w=worker: self._on_thumbs_partial(w, chunk, names))
        self._workers["thumbs"] = worker
        start_worker(worker)

    def _on_thumbs_partial(self, worker: Worker, chunk: list[tuple[int, Any]], names: list[str]) -> None:
        if self._workers.get("thumbs") is not worker or self._dataset is None:
            return  # a newer filter replaced this one
        if not shiboken6.isValid(self.thumbs):
            worker.cancel()  # the view was closed while samples were still being read
            return
        labels = self._dataset.labels
        for i, arr in chunk:
            k = int(labels[i])
            label = names[k] if 0 <= k < len(names) else "?"
            item = QListWidgetItem(label)
            item.setToolTip(f"{self._dataset.ids[i]}\nclass: {label}")
            if isinstance(arr, np.ndarray):
                item.setIcon(to_pixmap(arr))
            else:
                item.setText(f"{label}\n(unreadable)")
                item.setToolTip(arr)
            item.setData(Qt.ItemDataRole.UserRole, int(i))
            self.thumbs.addItem(item)

    def thumbnail_labels(self) -> list[str]:
        return [self.thumbs.item(i).text() for i in range(self.thumbs.count())]

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
