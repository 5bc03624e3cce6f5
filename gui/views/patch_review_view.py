"""The Patch review view: every patch of an evaluation, the model's worst mistakes first.

Opens the folder ``metascope evaluate MODEL DATA --out DIR`` wrote (:mod:`engine.infer.review`):
one row per patch with its thumbnail, kind (false positive / false negative / true positive /
true negative at the evaluation's threshold), probability, truth and call. Filter by kind,
probability range and text; export the rows shown as CSV; double-click a patch to see it larger.
The patch image counterpart of the Samples view (same table, worker and message patterns).

Thumbnails are read lazily, in a worker, for the rows on screen only (a few dozen at a time), so
an evaluation of thousands of patches opens at once and scrolls smoothly.
"""

from __future__ import annotations

import html
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from engine.data.base import IMAGE_EXTS
from engine.errors import MetaScopeError
from engine.infer.review import KINDS, PatchImages, Review, ReviewRow, export_csv, filter_rows, load_review
from engine.jobs import check_cancel
from gui.dialogs import show_error
from gui.views.datasets_view import to_pixmap
from gui.widgets.row_table import RowTableModel
from gui.wizard.common import MessageLabel
from gui.workers import Worker, start_worker

THUMB_PX = 64
PREVIEW_PX = 384
#: thumbnails read per worker run (more than a screenful of rows)
BATCH = 48
#: thumbnails kept in memory (least recently shown dropped first)
CACHE_SIZE = 4000
HEADERS = ("Patch", "Kind", "Probability", "Truth", "Predicted", "Confidence", "Source")
KIND_NAMES = {"FP": "false positive", "FN": "false negative", "TP": "true positive", "TN": "true negative"}
KIND_COLOURS = {"FP": QColor("#b00020"), "FN": QColor("#b00020"), "TP": QColor("#1b6e20"), "TN": QColor("#1b6e20")}

_Index = QModelIndex | QPersistentModelIndex


def _shrink(arr: np.ndarray, side: int) -> np.ndarray:
    """``arr`` box-filtered to at most ``side`` px (thumbnails are made in the worker, not on the GUI thread)."""
    h, w = arr.shape[:2]
    if max(h, w) <= side:
        return np.ascontiguousarray(arr[..., :3])
    from PIL import Image

    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., :3])).resize(size, Image.BOX), dtype=np.uint8)


def read_thumbnails(
    images: PatchImages, batch: list[tuple[int, ReviewRow]], side: int,
    progress: Any = None, cancel: Any = None, partial: Any = None,
) -> list[tuple[int, np.ndarray | None, str]]:
    """``(key, thumbnail or None, error)`` for each ``(key, row)`` of ``batch`` (worker function)."""
    out: list[tuple[int, np.ndarray | None, str]] = []
    for key, row in batch:
        check_cancel(cancel)
        try:
            out.append((key, _shrink(images.read(row), side), ""))
        except MetaScopeError as exc:
            out.append((key, None, str(exc)))
    return out


def read_patch(images: PatchImages, row: ReviewRow, progress: Any = None, cancel: Any = None,
               partial: Any = None) -> np.ndarray:
    """The full patch of ``row`` (worker function)."""
    return images.read(row)


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTS)


def _load(path: str, progress: Any = None, cancel: Any = None, partial: Any = None) -> Review:
    return load_review(path)


class PatchTableModel(RowTableModel):
    """The filtered review rows. Painting a row without its thumbnail asks for it
    (:attr:`thumbnails_wanted`); the view reads the ones still on screen in a worker."""

    HEADERS = HEADERS

    thumbnails_wanted = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[tuple[int, ReviewRow]] = []  # (key = position in the review, row)
        self.pixmaps: OrderedDict[int, QPixmap] = OrderedDict()
        self.errors: dict[int, str] = {}
        self.wanted: set[int] = set()
        self.in_flight: set[int] = set()
        self._position: dict[int, int] = {}

    def set_rows(self, rows: list[tuple[int, ReviewRow]]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self._position = {key: i for i, (key, _r) in enumerate(self.rows)}
        self.wanted.clear()
        self.endResetModel()

    def clear_thumbnails(self) -> None:
        self.pixmaps.clear()
        self.errors.clear()
        self.wanted.clear()
        self.in_flight.clear()

    def has_thumbnail(self, key: int) -> bool:
        return key in self.pixmaps or key in self.errors

    def add_thumbnails(self, results: list[tuple[int, np.ndarray | None, str]]) -> None:
        """Store a worker's thumbnails and repaint their rows."""
        for key, arr, error in results:
            self.in_flight.discard(key)
            if arr is None:
                self.errors[key] = error
            else:
                self.pixmaps[key] = to_pixmap(arr, THUMB_PX)
                while len(self.pixmaps) > CACHE_SIZE:
                    self.pixmaps.popitem(last=False)
            pos = self._position.get(key)
            if pos is not None:
                self.dataChanged.emit(self.index(pos, 0), self.index(pos, 0), [Qt.ItemDataRole.DecorationRole])

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        key, r = self.rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            values = (r.id, r.kind, f"{r.probability:.3f}", r.truth, r.predicted, f"{r.confidence:.2f}",
                      Path(r.source).name + (f" [{r.index}]" if r.source.lower().endswith((".h5", ".hdf5")) else ""))
            return values[col]
        if role == Qt.ItemDataRole.DecorationRole and col == 0:
            return self._thumbnail(key)
        if role == Qt.ItemDataRole.ForegroundRole and col == 1:
            return KIND_COLOURS[r.kind]
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = (f"{r.id}: {KIND_NAMES[r.kind]}\ntruth {r.truth}, called {r.predicted}, "
                   f"probability {r.probability:.4f}\n{r.source}")
            return tip + (f"\ncannot show the patch: {self.errors[key]}" if key in self.errors else "")
        if role == Qt.ItemDataRole.UserRole:
            return r
        return None

    def _thumbnail(self, key: int) -> QPixmap | None:
        pm = self.pixmaps.get(key)
        if pm is not None:
            self.pixmaps.move_to_end(key)
            return pm
        if key not in self.errors and key not in self.in_flight and key not in self.wanted:
            self.wanted.add(key)
            self.thumbnails_wanted.emit()
        return None


class PatchPreview(QDialog):
    """A patch shown larger, with its call; the image is read in a worker."""

    #: Emitted once the image is shown (or the reason it cannot be).
    shown = Signal()

    def __init__(self, row: ReviewRow, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.row = row
        self.setWindowTitle(f"Patch {row.id}")
        self.image_label = QLabel("Reading the patch…")
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_label.setMinimumSize(PREVIEW_PX, PREVIEW_PX)
        info = QLabel(
            f"<b>{html.escape(row.id)}</b>: <span style='color:{KIND_COLOURS[row.kind].name()}'>"
            f"{KIND_NAMES[row.kind]}</span><br>truth <b>{html.escape(row.truth)}</b>, called "
            f"<b>{html.escape(row.predicted)}</b>, probability {row.probability:.4f}<br>"
            f"<span style='color:#666'>{html.escape(row.source)}"
            + (f" [{row.index}]" if row.index >= 0 and not _is_image_file(row.source) else "") + "</span>"
        )
        info.setWordWrap(True)
        info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.addWidget(self.image_label, 1)
        lay.addWidget(info)
        self.worker: Worker | None = None

    def load(self, images: PatchImages) -> Worker:
        worker = Worker(read_patch, images, self.row)
        worker.signals.finished.connect(self._on_finished)
        worker.signals.failed.connect(lambda msg, _u, _tb: self._on_failed(msg))
        self.worker = worker
        return start_worker(worker)

    def _on_finished(self, arr: np.ndarray) -> None:
        h, w = arr.shape[:2]
        longest = max(h, w)
        if longest > 2 * PREVIEW_PX:  # a large tile: shown smoothly reduced
            self.image_label.setPixmap(to_pixmap(arr, 2 * PREVIEW_PX))
        else:  # whole-number enlargement without smoothing: the pixels, not a blur
            factor = max(1, PREVIEW_PX // longest)
            self.image_label.setPixmap(to_pixmap(arr, longest).scaled(
                w * factor, h * factor, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation))
        self.shown.emit()

    def _on_failed(self, message: str) -> None:
        self.image_label.setText(f"Cannot show this patch: {message}")
        self.shown.emit()


class PatchReviewView(QWidget):
    """Review an evaluation's patches: errors first, with the patch image."""

    #: Emitted with the evaluation folder once its patches are shown.
    loaded = Signal(str)
    #: Emitted with the one-line reason when a folder cannot be shown (after the error dialog).
    load_failed = Signal(str)
    #: Emitted with the CSV path after an export.
    exported = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("PatchReviewView")
        self.review: Review | None = None
        self.images: PatchImages | None = None
        self.preview: PatchPreview | None = None
        self._worker: Worker | None = None
        self._thumb_worker: Worker | None = None
        self._stamp = 0
        self._closed = False
        self._build_ui()

    # -- UI ----------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.open_button = QPushButton("Open evaluation…")
        self.open_button.setToolTip("The folder `metascope evaluate MODEL DATA --out DIR` wrote")
        self.open_button.clicked.connect(self.open_dialog)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setToolTip("The patches shown, in this order, as a CSV file")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.source_label = QLabel("<span style='color:#808080'>No evaluation loaded.</span>")
        self.source_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.kind_checks: dict[str, QCheckBox] = {}
        for kind in KINDS:
            box = QCheckBox(kind)
            box.setChecked(True)
            box.setToolTip(KIND_NAMES[kind] + "s")
            box.toggled.connect(self._apply_filter)
            self.kind_checks[kind] = box
        self.p_min = self._spin(0.0)
        self.p_max = self._spin(1.0)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search patch id, file or truth")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.textChanged.connect(self._apply_filter)
        self.summary_label = QLabel()
        self.message = MessageLabel()

        self.model = PatchTableModel(self)
        self.model.thumbnails_wanted.connect(self._schedule_thumbnails)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setIconSize(self.table.iconSize().scaled(THUMB_PX, THUMB_PX, Qt.AspectRatioMode.IgnoreAspectRatio))
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        vh = self.table.verticalHeader()
        vh.setVisible(False)
        vh.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)  # no per-row size pass over thousands of rows
        vh.setDefaultSectionSize(THUMB_PX + 6)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        hh.setStretchLastSection(True)
        for col, width in enumerate((THUMB_PX + 190, 50, 90, 90, 90, 90)):
            self.table.setColumnWidth(col, width)
        self.table.doubleClicked.connect(self._on_double_clicked)
        self.table.verticalScrollBar().valueChanged.connect(self._schedule_thumbnails)
        self._thumb_timer = QTimer(self)
        self._thumb_timer.setSingleShot(True)
        self._thumb_timer.setInterval(30)  # coalesce the requests of one paint / scroll step
        self._thumb_timer.timeout.connect(self._read_visible_thumbnails)

        top = QHBoxLayout()
        top.addWidget(self.open_button)
        top.addWidget(self.source_label, 1)
        top.addWidget(self.export_button)
        filters = QHBoxLayout()
        filters.addWidget(QLabel("Show:"))
        for box in self.kind_checks.values():
            filters.addWidget(box)
        filters.addSpacing(12)
        filters.addWidget(QLabel("Probability from"))
        filters.addWidget(self.p_min)
        filters.addWidget(QLabel("to"))
        filters.addWidget(self.p_max)
        filters.addWidget(self.search_edit, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(filters)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.message)
        layout.addWidget(self.table, 1)

    def _spin(self, value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0.0, 1.0)
        spin.setDecimals(2)
        spin.setSingleStep(0.05)
        spin.setValue(value)
        spin.valueChanged.connect(self._apply_filter)
        return spin

    # -- loading -----------------------------------------------------------------------------------
    def open_dialog(self) -> None:
        """Ask for an evaluation folder and load it."""
        start = str(self.review.folder.parent) if self.review else ""
        path = QFileDialog.getExistingDirectory(self, "Open an evaluation folder", start)
        if path:
            self.load(path)

    def load(self, path: str | Path) -> Worker:
        """Read the evaluation at ``path`` (a folder or its ``predictions.csv``) in a worker;
        see :attr:`loaded` and :attr:`load_failed`."""
        worker = Worker(_load, str(path))
        worker.signals.finished.connect(lambda result, w=worker: self._on_load_finished(w, result))
        worker.signals.failed.connect(
            lambda msg, user, tb, w=worker, p=str(path): self._on_load_failed(w, p, msg, "" if user else tb))
        self._worker = worker
        self.message.show_message(f"Reading {Path(path).name}…", "info")
        return start_worker(worker)

    def _on_load_finished(self, worker: Worker, review: Review) -> None:
        if worker is not self._worker:
            return  # a newer folder was asked for meanwhile
        self._cancel_thumbnails()
        if self.images is not None:
            self.images.close()
        self._stamp += 1
        self.review = review
        self.images = PatchImages(review)
        self.model.clear_thumbnails()
        m = review.metrics
        auc = f" · AUC {m['auc']:.3f}" if isinstance(m.get("auc"), int | float) else ""
        self.source_label.setText(
            f"<b>{html.escape(review.folder.name)}</b> · positive class <b>{html.escape(review.positive_class)}</b>"
            f" at probability ≥ {review.threshold:g}{auc}"
        )
        self.source_label.setToolTip(str(review.folder))
        counts = review.counts()
        for kind, box in self.kind_checks.items():
            box.setText(f"{kind} ({counts[kind]:,})")
        self.export_button.setEnabled(True)
        self.message.clear_message()
        self._apply_filter()
        self.loaded.emit(str(review.folder))

    def _on_load_failed(self, worker: Worker, path: str, message: str, details: str) -> None:
        if worker is not self._worker:
            return
        self.message.show_message(f"Cannot review {Path(path).name}: {message}", "error")
        show_error(self, "Cannot open the evaluation", message, details)
        self.load_failed.emit(message)

    # -- filtering ---------------------------------------------------------------------------------
    def filter_state(self) -> dict[str, Any]:
        return {
            "kinds": {k for k, box in self.kind_checks.items() if box.isChecked()},
            "p_min": self.p_min.value(),
            "p_max": self.p_max.value(),
            "text": self.search_edit.text(),
        }

    def visible_rows(self) -> list[ReviewRow]:
        return [r for _k, r in self.model.rows]

    def _apply_filter(self, *_args: Any) -> None:
        if self.review is None:
            return
        keys = {id(r): k for k, r in enumerate(self.review.rows)}
        rows = filter_rows(self.review.rows, **self.filter_state())
        self.model.set_rows([(keys[id(r)], r) for r in rows])
        c = self.review.counts(rows)
        self.summary_label.setText(
            f"{len(rows):,} of {len(self.review.rows):,} patches · {c['FP']:,} false positives · "
            f"{c['FN']:,} false negatives · errors first, the most confident first"
        )
        self.table.scrollToTop()
        self._schedule_thumbnails()

    # -- thumbnails --------------------------------------------------------------------------------
    def visible_keys(self) -> list[int]:
        """Keys of the rows on screen (plus a few below, read ahead)."""
        n = len(self.model.rows)
        if not n:
            return []
        first = self.table.rowAt(0)
        last = self.table.rowAt(max(0, self.table.viewport().height() - 1))
        first = 0 if first < 0 else first
        last = min(n - 1, (n - 1 if last < 0 else last) + 4)
        return [self.model.rows[i][0] for i in range(first, last + 1)]

    def thumbnails_busy(self) -> bool:
        return self._thumb_worker is not None or self._thumb_timer.isActive()

    def _schedule_thumbnails(self, *_args: Any) -> None:
        if not self._closed and not self._thumb_timer.isActive():
            self._thumb_timer.start()

    def _read_visible_thumbnails(self) -> None:
        if self._thumb_worker is not None or self.images is None or self._closed:
            return  # the running batch schedules the next one when it ends
        todo = [k for k in self.visible_keys() if not self.model.has_thumbnail(k)][:BATCH]
        self.model.wanted.clear()  # rows scrolled away are asked for again when painted
        if not todo:
            return
        rows = self.review.rows if self.review is not None else []
        self.model.in_flight.update(todo)
        worker = Worker(read_thumbnails, self.images, [(k, rows[k]) for k in todo], THUMB_PX)
        s = self._stamp
        worker.signals.finished.connect(lambda res, w=worker: self._on_thumbnails(w, s, res))
        worker.signals.failed.connect(
            lambda msg, _u, _tb, w=worker, t=todo: self._on_thumbnails(w, s, [(k, None, msg) for k in t]))
        worker.signals.cancelled.connect(lambda w=worker: self._on_thumbnails(w, -1, []))
        self._thumb_worker = worker
        start_worker(worker)

    def _on_thumbnails(self, worker: Worker, stamp: int, results: list[tuple[int, np.ndarray | None, str]]) -> None:
        if worker is self._thumb_worker:
            self._thumb_worker = None
        if self._closed:
            return
        if stamp == self._stamp:  # not from an evaluation shown before this one
            self.model.add_thumbnails(results)
        self._schedule_thumbnails()  # more rows may have come on screen meanwhile

    def _cancel_thumbnails(self) -> None:
        if self._thumb_worker is not None:
            self._thumb_worker.cancel()
        self._thumb_timer.stop()

    # -- preview and export ------------------------------------------------------------------------
    def _on_double_clicked(self, index: QModelIndex) -> None:
        if index.isValid():
            self.show_patch(index.row())

    def show_patch(self, table_row: int) -> PatchPreview | None:
        """Open the larger view of the patch in ``table_row`` (of the filtered table)."""
        if self.images is None or not 0 <= table_row < len(self.model.rows):
            return None
        if self.preview is not None:
            self.preview.close()
        self.preview = PatchPreview(self.model.rows[table_row][1], self)
        self.preview.load(self.images)
        self.preview.open()
        return self.preview

    def _on_export_clicked(self) -> None:
        if self.review is None:
            return
        start = str(self.review.folder / "patch_review.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Export the patches shown", start, "CSV (*.csv)")
        if path:
            self.export_to(path)

    def export_to(self, path: str | Path) -> bool:
        """Write the rows shown (filtered, in order) to ``path``; an error dialog on failure."""
        if self.review is None:
            return False
        try:
            n = export_csv(self.visible_rows(), path, self.review.threshold)
        except (MetaScopeError, OSError) as exc:
            show_error(self, "Cannot export the patches", f"{Path(path).name}: {exc}")
            return False
        self.message.show_message(f"Wrote {n:,} patches to {path}", "ok")
        self.exported.emit(str(path))
        return True

    def shutdown(self) -> None:
        """Stop reading thumbnails and close open files (the window is closing)."""
        self._closed = True
        self._cancel_thumbnails()
        if self.images is not None:
            self.images.close()

