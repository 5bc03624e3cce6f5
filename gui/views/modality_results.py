"""Results of a finished genomics / expression run in the Training view, and shared result widgets.

The run folder holds ``metrics.json``, PNG plots, ``predictions.csv`` (classifiers) and the
exported ``model.onnx``; this panel shows them and offers: review the samples, add the model to
the library, save a copy of the model, open a generator run in the Generator view.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from gui.modalities import RUN_KINDS, oneshot_table, pngs, read_json, run_kind
from gui.wizard.common import MessageLabel
from gui.workers import Worker, start_worker

METRIC_ORDER = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "gamma", "c2st_auc",
                "val_accuracy", "loss")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def _ci(metrics: dict[str, Any], key: str) -> str:
    for holder in (metrics.get("ci95"), metrics.get("ci"), metrics.get("cis"), metrics.get(f"{key}_ci95"),
                   metrics.get(f"{key}_ci")):
        ci = holder.get(key) if isinstance(holder, dict) else holder
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
            return f" <span style='color:#666'>(95% CI {ci[0]:.3f}–{ci[1]:.3f})</span>"
    return ""


def metrics_table_html(metrics: dict[str, Any], limit: int = 8) -> str:
    """The numbers of a ``metrics.json`` (any kind) as a small table, most important first."""
    if not metrics:
        return "<i>No metrics.json yet.</i>"
    rows: list[tuple[str, str]] = []
    ways = oneshot_table(metrics)
    if ways:
        for n, siamese, nn1, trials in ways:
            rows.append((f"{n}-way accuracy", f"Siamese <b>{_fmt(siamese)}</b> · 1-NN {_fmt(nn1)}"
                         + (f" · {trials:,} trials" if trials else "")))
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for sub in ("metrics", "synthetic", "wgan", "overall"):
        if isinstance(metrics.get(sub), dict):
            flat.update({k: v for k, v in metrics[sub].items() if isinstance(v, (int, float)) and k not in flat})
    keys = [k for k in METRIC_ORDER if k in flat] + sorted(k for k in flat if k not in METRIC_ORDER)
    for k in keys[:limit]:
        label = "AUC" if k == "auc" else "C2ST AUC" if k == "c2st_auc" else k.replace("_", " ")
        rows.append((label, f"<b>{_fmt(flat[k])}</b>{_ci(metrics, k)}"))
    for key, label in (("baseline", "Gaussian baseline"), ("real_vs_real", "Real vs real")):
        if isinstance(metrics.get(key), dict):
            rows.append((label, _compare_text(metrics[key])))
    body = "".join(f"<tr><td style='padding:1px 12px 1px 0;color:#666'>{html.escape(k)}</td><td>{v}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def _compare_text(d: dict[str, Any]) -> str:
    """``gamma 0.957 · C2ST AUC 0.790`` of a baseline / reference entry of a realism report."""
    keys = [k for k in ("gamma", "c2st_auc") if isinstance(d.get(k), (int, float))]
    keys = keys or [k for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:4]
    return " · ".join(f"{'C2ST AUC' if k == 'c2st_auc' else k.replace('_', ' ')} {_fmt(d[k])}" for k in keys)


def per_group_html(folder: str | Path, limit: int = 25) -> str:
    """The per-tumour-type table an evaluation wrote (``per_type_auc.csv``), as HTML."""
    import csv

    path = Path(folder) / "per_type_auc.csv"
    if not path.is_file():
        return ""
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th style='padding:1px 8px;text-align:left'>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td style='padding:1px 8px'>{html.escape(r.get(c) or '')}</td>" for c in cols)
                   + "</tr>" for r in rows[:limit])
    more = f"<div style='color:#666'>… {len(rows) - limit} more groups</div>" if len(rows) > limit else ""
    return f"<p style='margin:6px 0 2px 0'><b>Per tumour type</b></p><table>{head and '<tr>' + head + '</tr>'}{body}</table>{more}"


class PngGallery(QWidget):
    """The PNG plots of a folder: a picker and the selected image."""

    def __init__(self, parent: QWidget | None = None, min_height: int = 260) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.currentIndexChanged.connect(self._on_changed)
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.image)
        scroll.setMinimumHeight(min_height)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addWidget(scroll, 1)

    def set_folder(self, folder: str | Path | None, prefer: str = "") -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        # a run's own plots, then those of its report sub-folders (e.g. realism/)
        subs = [d for d in sorted(Path(folder).iterdir()) if d.is_dir()] if folder and Path(folder).is_dir() else []
        for p in [*pngs(folder), *(q for d in subs for q in pngs(d))]:
            prefix = "" if p.parent == Path(folder) else f"{p.parent.name}: "  # type: ignore[arg-type]
            self.combo.addItem(prefix + p.stem.replace("_", " "), str(p))
        self.combo.blockSignals(False)
        if prefer:
            idx = next((i for i in range(self.combo.count()) if prefer in str(self.combo.itemData(i))), 0)
            self.combo.setCurrentIndex(idx)
        self.combo.setVisible(self.combo.count() > 1)
        self.setVisible(self.combo.count() > 0)
        self._on_changed()

    def count(self) -> int:
        return self.combo.count()

    def _on_changed(self, *_a: Any) -> None:
        path = self.combo.currentData()
        if not path:
            self.image.setText("<span style='color:#808080'>No plots.</span>")
            return
        pix = QPixmap(str(path))
        self.image.setPixmap(pix.scaledToWidth(min(900, max(1, pix.width())), Qt.TransformationMode.SmoothTransformation)
                             if not pix.isNull() else QPixmap())


def run_card(run: Path) -> str:
    """A Markdown model card of a genomics / expression run: kind, data, settings, results."""
    cfg_all = read_json(run / "config.json")
    kind, cfg = str(cfg_all.get("kind", "")), cfg_all.get("config", {})
    lines = [f"# {run.name}", "", f"{RUN_KINDS.get(kind, ('', kind, ''))[1]}, trained with MetaScope.", "",
             "## Training", ""]
    lines += [f"- {k.replace('_', ' ')}: `{v}`" for k, v in cfg.items()
              if isinstance(v, (str, int, float)) and not isinstance(v, bool) and v != ""][:16]
    metrics = read_json(run / "metrics.json")
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers or oneshot_table(metrics):
        lines += ["", "## Results (held-out data of the run)", ""]
        lines += [f"- {n}-way accuracy: Siamese {s:.3f}, 1-NN {nn:.3f}" for n, s, nn, _t in oneshot_table(metrics)
                  if s is not None and nn is not None]
        lines += [f"- {k.replace('_', ' ')}: {v:.3f}" if isinstance(v, float) else f"- {k.replace('_', ' ')}: {v}"
                  for k, v in list(numbers.items())[:12]]
    lines += ["", "Check the model on data from your own lab before relying on it.", ""]
    return "\n".join(lines)


def _add_to_library(model: Path, name: str, progress: Any = None, cancel: Any = None, partial: Any = None) -> Any:
    from engine.fileio import atomic_write_text
    from engine.library import ModelLibrary

    entry = ModelLibrary().add(model, name=name)
    atomic_write_text(entry.path.with_suffix(".md"), run_card(model.parent))
    return entry


class RunResultsPanel(QGroupBox):
    """What a finished genomics / expression run produced, with the next steps."""

    review_samples_requested = Signal(str)  # predictions.csv
    generator_requested = Signal(str)  # a wgan run folder
    oneshot_requested = Signal(str)  # a siamese run folder
    library_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Results", parent)
        self.run: Path | None = None
        self._worker: Worker | None = None
        self.metrics_label = QLabel()
        self.metrics_label.setTextFormat(Qt.TextFormat.RichText)
        self.metrics_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.gallery = PngGallery()
        self.samples_button = QPushButton("Review samples")
        self.samples_button.setToolTip("Every sample's prediction beside its true label, errors first, explanations")
        self.samples_button.clicked.connect(self._on_samples_clicked)
        self.add_button = QPushButton("Add to model library")
        self.add_button.clicked.connect(self._on_add_clicked)
        self.save_button = QPushButton("Save model…")
        self.save_button.clicked.connect(self._on_save_clicked)
        self.generator_button = QPushButton("Generate and check realism…")
        self.generator_button.clicked.connect(lambda: self.run and self.generator_requested.emit(str(self.run)))
        self.oneshot_button = QPushButton("One-shot test and classify…")
        self.oneshot_button.clicked.connect(lambda: self.run and self.oneshot_requested.emit(str(self.run)))
        self.message = MessageLabel()
        row = QHBoxLayout()
        for b in (self.samples_button, self.generator_button, self.oneshot_button, self.add_button, self.save_button):
            row.addWidget(b)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addWidget(self.metrics_label)
        lay.addWidget(self.gallery)
        lay.addLayout(row)
        lay.addWidget(self.message)

    def show_run(self, run: Path) -> None:
        """Show ``run``'s metrics and plots (cheap: small files; called on every poll)."""
        changed = run != self.run
        self.run = run
        kind = run_kind(run)
        self.setTitle(f"Results: {RUN_KINDS.get(kind, ('', kind, ''))[1]}")
        self.metrics_label.setText(metrics_table_html(read_json(run / "metrics.json")) + per_group_html(run))
        if changed or self.gallery.count() != len(list(run.glob("*.png"))) + len(list(run.glob("*/*.png"))):
            self.gallery.set_folder(run)
        if changed:
            self.message.clear_message()
        self.samples_button.setVisible((run / "predictions.csv").is_file())
        has_model = (run / "model.onnx").is_file()
        self.generator_button.setVisible(kind == "wgan")
        self.oneshot_button.setVisible(kind == "siamese" and has_model)
        busy = self._worker is not None
        self.add_button.setEnabled(has_model and not busy)
        self.save_button.setEnabled(has_model and not busy)
        if not has_model:
            self.add_button.setToolTip("The run has not exported its model.onnx (yet)")

    def _on_samples_clicked(self) -> None:
        if self.run is not None:
            self.review_samples_requested.emit(str(self.run / "predictions.csv"))

    def add_to_library(self) -> Worker | None:
        if self.run is None or not (self.run / "model.onnx").is_file():
            return None
        worker = Worker(_add_to_library, self.run / "model.onnx", self.run.name)
        worker.signals.finished.connect(self._on_added)
        worker.signals.failed.connect(self._on_add_failed)
        self._worker = worker
        self.add_button.setEnabled(False)
        self.message.show_message("Adding to the model library…", "info")
        start_worker(worker)
        return worker

    def _on_add_clicked(self) -> None:
        self.add_to_library()

    def _on_added(self, entry: Any) -> None:
        self._worker = None
        self.message.show_message(f"✓ Added “{entry.name}” to the model library.", "ok")
        if self.run is not None:
            self.show_run(self.run)
        self.library_changed.emit()

    def _on_add_failed(self, message: str, _u: bool, _tb: str) -> None:
        self._worker = None
        self.message.show_message(f"Cannot add the model: {message}", "error")
        if self.run is not None:
            self.show_run(self.run)

    def _on_save_clicked(self) -> None:
        if self.run is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save model", f"{self.run.name}.onnx", "ONNX models (*.onnx)")
        if path:
            try:
                shutil.copyfile(self.run / "model.onnx", path)
            except OSError as exc:
                self.message.show_message(f"Cannot save: {exc.strerror or exc}", "error")
                return
            self.message.show_message(f"✓ Saved {path}", "ok")
