"""The patch dataset's details in the Datasets view: the part of
:class:`~gui.views.datasets_view.DatasetsView` that shows the selected dataset's summary, class
balance and sample patches (the dataset reopened and its thumbnails read in workers).

A mixin so the Datasets view stays one widget with one set of workers, while this code lives in
its own module. It uses the view's ``_dataset``, ``_workers``, ``_stamp``, ``detail_stack`` and
``modality_report``. Split out of :mod:`gui.views.datasets_view`, which re-exports the
module-level names.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import shiboken6
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.modalities import PATCHES, dataset_kind
from gui.widgets.plot_canvas import PlotCanvas, bar_chart
from gui.wizard.common import MessageLabel
from gui.workers import Worker, start_worker

THUMBNAILS = 48  # sample patches shown per filter
THUMB_PX = 96


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


class DatasetDetailsMixin:
    """Summary, class balance and sample patches of the selected dataset (mixed into ``DatasetsView``)."""

    # provided by DatasetsView
    _dataset: Any
    _workers: dict[str, Worker]
    _stamp: int
    detail_stack: Any
    modality_report: Any

    def _build_detail_panel(self) -> QWidget:
        """The patch dataset's details: summary, class balance, class filter and sample patches."""
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
        return right

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
