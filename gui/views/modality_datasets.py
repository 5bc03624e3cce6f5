"""Datasets of the genomics and expression kinds: import (the CLI report in a worker) and show.

A mutation study is imported with ``metascope genomics report STUDY --out DIR --json``, an
expression matrix with ``metascope expression info MATRIX [--samples S] --json``; the report is
remembered with the dataset entry (``kind``, ``report``, ``report_dir``) in the same store as
patch datasets. A failed report adds nothing and says why in a dialog.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.paths import home_dir
from gui.cli_job import run_cli
from gui.dialogs import show_error
from gui.modalities import (
    DATASET_KIND_LABELS,
    EXPRESSION_MATRIX,
    GENOMICS_STUDY,
    ORIENTATIONS,
    dataset_kind,
    pngs,
    report_args,
)
from gui.widgets.plot_canvas import PlotCanvas, bar_chart
from gui.wizard.common import MessageLabel
from gui.workers import Worker, start_worker

MODALITY_KINDS = (GENOMICS_STUDY, EXPRESSION_MATRIX)
MATRIX_FILTER = "Expression matrices (*.tsv *.csv *.txt *.gz);;All files (*)"


def report_dir_for(path: str) -> Path:
    """Where the report of a dataset is written: ``<home>/reports/<name>-<hash of the path>``."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
    return home_dir() / "reports" / f"{Path(path).name.split('.')[0] or 'dataset'}-{digest}"


def import_report(kind: str, path: str, samples: str = "", orientation: str = "auto", progress: Any = None,
                  cancel: Any = None, partial: Any = None) -> dict[str, Any]:
    """Run the dataset kind's report command; the Datasets-view entry for it (nothing is stored)."""
    out = report_dir_for(path)
    result = run_cli(report_args(kind, path, out, samples, orientation), json_output=True, progress=progress,
                     cancel=cancel)
    report = result.data if isinstance(result.data, dict) else {}
    if not report and kind == GENOMICS_STUDY:
        saved = out / "report.json"
        if saved.is_file():
            report = json.loads(saved.read_text(encoding="utf-8"))
    return {
        "path": path,
        "kind": kind,
        "samples": samples,
        "orientation": orientation if kind == EXPRESSION_MATRIX else "",
        "name": Path(path).name if Path(path).is_dir() else Path(path).name.split(".")[0],
        "report": report,
        "report_dir": str(out) if kind == GENOMICS_STUDY else "",
        "summary": result.summary,
        "validated": time.strftime("%Y-%m-%d %H:%M"),
    }


def _first(report: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if report.get(k) not in (None, "", [], {}):
            return report[k]
    return None


def _counts_text(counts: Any) -> str:
    if isinstance(counts, dict) and counts:
        total = sum(v for v in counts.values() if isinstance(v, (int, float))) or 1
        return ", ".join(f"{html.escape(str(k))}: {v:,} ({100 * v / total:.0f}%)" for k, v in counts.items()
                         if isinstance(v, (int, float)))
    return html.escape(str(counts)) if counts is not None else ""


def list_text(item: dict[str, Any]) -> str:
    """The two lines of a modality dataset in the Datasets list."""
    rep = item.get("report", {})
    n = _first(rep, "n_samples", "samples")
    extra = ""
    if dataset_kind(item) == EXPRESSION_MATRIX and rep.get("n_genes"):
        extra = f" × {rep['n_genes']:,} genes"
    count = f"{n:,} samples{extra}" if isinstance(n, int) else "report"
    return f"{item.get('name') or Path(item['path']).name}\n{DATASET_KIND_LABELS[dataset_kind(item)]} · {count}"


def report_html(item: dict[str, Any]) -> str:
    """The headline of a study or matrix report: samples, label balance, missing values, leaks."""
    rep = item.get("report", {})
    rows: list[tuple[str, str]] = [("Path", html.escape(item["path"])),
                                   ("Kind", DATASET_KIND_LABELS.get(dataset_kind(item), "?"))]
    if item.get("samples"):
        rows.append(("Sample table", html.escape(item["samples"])))
    for label, keys in (("Samples", ("n_samples", "samples")), ("Patients", ("n_patients", "patients")),
                        ("Genes", ("n_genes",)), ("Mutations", ("n_mutations", "mutations")),
                        ("Scale", ("scale",)), ("Gene ids", ("gene_id_type",))):
        v = _first(rep, *keys)
        if v is not None and not isinstance(v, (dict, list)):
            rows.append((label, f"{v:,}" if isinstance(v, int) else html.escape(str(v))))
    orientation = rep.get("orientation")
    if isinstance(orientation, dict) and orientation.get("value"):
        rows.append(("Orientation", html.escape(f"{orientation['value']} ({orientation.get('why', '')})")))
    for key, label in (("dropped_genes", "Dropped genes"), ("dropped_samples", "Dropped samples")):
        d = rep.get(key)
        if isinstance(d, dict) and d.get("count"):
            rows.append((label, html.escape(f"{d['count']:,} ({d.get('reason', '')})")))
    balance = _first(rep, "label_balance", "label_counts", "class_counts", "labels")
    if balance is not None:
        rows.append(("Label balance", _counts_text(balance.get("counts", balance) if isinstance(balance, dict)
                                                   else balance)))
    types = _first(rep, "tumour_types", "tumor_types", "cancer_types")
    if isinstance(types, dict):
        top = dict(sorted(types.items(), key=lambda kv: -kv[1] if isinstance(kv[1], (int, float)) else 0)[:12])
        rows.append(("Tumour types", _counts_text(top) + (f" … ({len(types)} types)" if len(types) > 12 else "")))
    panels = _first(rep, "panels")
    if isinstance(panels, dict):
        rows.append(("Gene panels", _counts_text(panels)))
    missing = _first(rep, "missing", "missing_values", "missing_per_column")
    if isinstance(missing, dict) and "handling" in missing:
        frac = missing.get("fraction")
        rows.append(("Missing values", f"{missing.get('count', 0):,}"
                     + (f" ({frac:.1%})" if isinstance(frac, float) else "")
                     + f", {html.escape(str(missing['handling']))}"))
    elif isinstance(missing, dict) and missing:
        worst = sorted(((k, v) for k, v in missing.items() if isinstance(v, (int, float)) and v), key=lambda kv: -kv[1])
        rows.append(("Missing values", ", ".join(
            f"{html.escape(str(k))} {v:.1%}" if isinstance(v, float) and v <= 1 else f"{html.escape(str(k))} {v:,}"
            for k, v in worst[:8]) or "none"))
    elif missing is not None:
        rows.append(("Missing values", html.escape(str(missing))))
    dropped = _first(rep, "dropped_leaks", "leaks", "leak_columns", "dropped_columns")
    if dropped:
        rows.append(("Dropped as label leaks", _leaks_text(dropped)))
    cols = rep.get("label_columns")
    if isinstance(cols, dict) and cols:
        rows.append(("Sample columns", ", ".join(
            f"{html.escape(str(k))} ({v.get('distinct', '?')} values)" if isinstance(v, dict) else html.escape(str(k))
            for k, v in cols.items())))
    not_computed = _first(rep, "not_computed", "features_not_computed", "unavailable_features")
    if isinstance(not_computed, dict):
        rows.append(("Not computable here", "<br>".join(
            f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in not_computed.items())))
    elif not_computed:
        rows.append(("Not computable here", html.escape(", ".join(map(str, not_computed))
                                                         if isinstance(not_computed, list) else str(not_computed))))
    body = "".join(f"<tr><td style='padding:1px 12px 1px 0;color:#666;vertical-align:top'>{k}</td><td>{v}</td></tr>"
                   for k, v in rows)
    out = f"<table>{body}</table>"
    warnings = [*(rep.get("warnings") or []), *(rep.get("notes") or [])]
    if item.get("summary"):
        out += f"<p style='color:#1b6e20;margin:4px 0'>✓ {html.escape(item['summary'])}</p>"
    out += "".join(f"<p style='color:#8a5a00;margin:2px 0'>⚠ {html.escape(str(w))}</p>" for w in warnings)
    return out


def _leaks_text(dropped: Any) -> str:
    if isinstance(dropped, dict):
        return "<br>".join(f"<b>{html.escape(str(k))}</b>: {html.escape(str(v))}" for k, v in dropped.items())
    if isinstance(dropped, list):
        parts = []
        for d in dropped:
            if isinstance(d, dict):
                name = d.get("column") or d.get("name") or "?"
                why = d.get("reason") or d.get("why") or ""
                parts.append(f"<b>{html.escape(str(name))}</b>" + (f": {html.escape(str(why))}" if why else ""))
            else:
                parts.append(html.escape(str(d)))
        return "<br>".join(parts)
    return html.escape(str(dropped))


def balance_counts(item: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """``(title, counts)`` for the balance chart: a study's labels, or a matrix's type column."""
    rep = item.get("report", {})
    counts = _first(rep, "label_counts", "label_balance", "class_counts")
    if isinstance(counts, dict) and counts:
        return "Label balance", {str(k): int(v) for k, v in counts.items() if isinstance(v, (int, float))}
    cols = rep.get("label_columns")
    if isinstance(cols, dict):
        with_counts = [(k, v["counts"]) for k, v in cols.items() if isinstance(v, dict) and v.get("counts")]
        with_counts.sort(key=lambda kv: ("type" not in kv[0].lower(), kv[0]))
        if with_counts:
            name, c = with_counts[0]
            return f"Samples per {name}", {str(k): int(v) for k, v in c.items()}
    return "", {}


def _fill_tree(parent: QTreeWidgetItem | QTreeWidget, data: Any, depth: int = 0) -> None:
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for k, v in list(items)[:200]:
        node = QTreeWidgetItem([str(k), "" if isinstance(v, (dict, list)) else str(v)])
        if isinstance(parent, QTreeWidget):
            parent.addTopLevelItem(node)
        else:
            parent.addChild(node)
        if isinstance(v, (dict, list)) and depth < 4:
            node.setText(1, f"{len(v)} entries")
            _fill_tree(node, v, depth + 1)


class ModalityImportBox(QGroupBox):
    """Import a mutation study or an expression matrix (+ sample table) through its report command."""

    #: The dataset entry of a successful import (not stored yet: the view stores it).
    imported = Signal(object)
    #: One-line reason an import failed (also shown in a dialog).
    failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Import a mutation study or an expression matrix", parent)
        self._worker: Worker | None = None
        self.kind_combo = QComboBox()
        for kind in MODALITY_KINDS:
            self.kind_combo.addItem(DATASET_KIND_LABELS[kind], kind)
        self.kind_combo.currentIndexChanged.connect(self._on_kind_changed)
        self.path_edit = QLineEdit()
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._on_browse_clicked)
        self.samples_edit = QLineEdit()
        self.samples_edit.setPlaceholderText("Sample table (TSV/CSV: sample id, tumour type, covariates…), optional")
        self.samples_button = QPushButton("Sample table…")
        self.samples_button.clicked.connect(self._on_samples_clicked)
        self.orientation_combo = QComboBox()
        for key, label in ORIENTATIONS:
            self.orientation_combo.addItem(label, key)
        self.orientation_combo.setToolTip("Rows = samples or rows = genes; detected from the ids unless you say")
        self.import_button = QPushButton("Import and report")
        self.import_button.clicked.connect(self._on_import_clicked)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.hide()
        self.message = MessageLabel()
        r1 = QHBoxLayout()
        r1.addWidget(self.kind_combo)
        r1.addWidget(self.path_edit, 1)
        r1.addWidget(self.browse_button)
        r2 = QHBoxLayout()
        r2.addWidget(self.samples_edit, 1)
        r2.addWidget(self.samples_button)
        r2.addWidget(self.orientation_combo)
        r2.addWidget(self.import_button)
        r2.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.addLayout(r1)
        lay.addLayout(r2)
        lay.addWidget(self.progress)
        lay.addWidget(self.message)
        self._on_kind_changed()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def kind(self) -> str:
        return str(self.kind_combo.currentData())

    def set_kind(self, kind: str) -> None:
        self.kind_combo.setCurrentIndex(max(0, self.kind_combo.findData(kind)))

    def _on_kind_changed(self, *_a: Any) -> None:
        study = self.kind() == GENOMICS_STUDY
        self.path_edit.setPlaceholderText(
            "cBioPortal study folder (datahub layout or the web site's downloaded tables)" if study
            else "Expression matrix (TSV/CSV, .gz; samples × genes or genes × samples)")
        self.samples_edit.setVisible(not study)
        self.samples_button.setVisible(not study)
        self.orientation_combo.setVisible(not study)

    def _on_browse_clicked(self) -> None:
        if self.kind() == GENOMICS_STUDY:
            path = QFileDialog.getExistingDirectory(self, "Choose a cBioPortal study folder", self.path_edit.text())
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Choose an expression matrix", self.path_edit.text(),
                                                  MATRIX_FILTER)
        if path:
            self.path_edit.setText(path)

    def _on_samples_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a sample table", self.samples_edit.text(), MATRIX_FILTER)
        if path:
            self.samples_edit.setText(path)

    def _on_import_clicked(self) -> None:
        path = self.path_edit.text().strip()
        if not path:
            self.message.show_message("Choose a study folder or a matrix file first.", "error")
            return
        samples = self.samples_edit.text().strip() if self.kind() == EXPRESSION_MATRIX else ""
        self.start_import(self.kind(), path, samples, str(self.orientation_combo.currentData()))

    def start_import(self, kind: str, path: str, samples: str = "", orientation: str = "auto") -> Worker:
        """Run the report in a worker; :attr:`imported` or :attr:`failed` follows."""
        worker = Worker(import_report, kind, path, samples, orientation or "auto")
        worker.signals.progress.connect(lambda ev: self.message.show_message(ev.message, "info"))
        worker.signals.finished.connect(self._on_finished)
        worker.signals.failed.connect(self._on_failed)
        worker.signals.cancelled.connect(self._on_cancelled)
        self._worker = worker
        self.progress.show()
        self.cancel_button.show()
        self.import_button.setEnabled(False)
        self.message.show_message(f"Reading {Path(path).name} and writing its report…", "info")
        start_worker(worker)
        return worker

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def _end(self) -> None:
        self._worker = None
        self.progress.hide()
        self.cancel_button.hide()
        self.import_button.setEnabled(True)

    def _on_finished(self, item: dict[str, Any]) -> None:
        self._end()
        self.message.show_message(f"✓ Imported {item['name']}. {item.get('summary', '')}", "ok")
        self.imported.emit(item)

    def _on_failed(self, message: str, _user: bool, details: str) -> None:
        self._end()
        self.message.show_message(message, "error")
        self.failed.emit(message)
        show_error(self, "Cannot import the dataset", message, "" if _user else details)

    def _on_cancelled(self) -> None:
        self._end()
        self.message.show_message("Import cancelled.", "warning")


class ModalityReportPanel(QWidget):
    """A study's or matrix's report: headline, plots, the full report as a tree, report.html."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._item: dict[str, Any] | None = None
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.html_button = QPushButton("Open report.html")
        self.html_button.clicked.connect(self._on_html_clicked)
        self.plot_combo = QComboBox()
        self.plot_combo.currentIndexChanged.connect(self._on_plot_changed)
        self.plot_label = QLabel()
        self.plot_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.plot_label)
        scroll.setMinimumHeight(240)
        self.plots = scroll
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Report", "Value"])
        self.tree.setMinimumHeight(140)
        self.tree.setColumnWidth(0, 240)
        self.balance = PlotCanvas(min_height=170)
        summary_scroll = QScrollArea()
        summary_scroll.setWidgetResizable(True)
        summary_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        summary_scroll.setWidget(self.summary)
        summary_scroll.setMinimumHeight(220)
        top = QHBoxLayout()
        top.addWidget(summary_scroll, 3)
        top.addWidget(self.balance, 2)
        row = QHBoxLayout()
        self.plots_title = QLabel("<b>Plots</b>")
        row.addWidget(self.plots_title)
        row.addWidget(self.plot_combo, 1)
        row.addWidget(self.html_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addLayout(row)
        lay.addWidget(scroll, 2)
        lay.addWidget(self.tree, 1)

    def show_item(self, item: dict[str, Any]) -> None:
        self._item = item
        self.summary.setText(report_html(item))
        self.tree.clear()
        _fill_tree(self.tree, item.get("report", {}))
        self.plot_combo.blockSignals(True)
        self.plot_combo.clear()
        for p in pngs(item.get("report_dir")):
            self.plot_combo.addItem(p.stem.replace("_", " "), str(p))
        self.plot_combo.blockSignals(False)
        self.plot_combo.setVisible(self.plot_combo.count() > 0)
        self.plots.setVisible(self.plot_combo.count() > 0)
        self.plots_title.setVisible(self.plot_combo.count() > 0)
        title, counts = balance_counts(item)
        self.balance.setVisible(bool(counts))
        if counts:
            bar_chart(self.balance, list(counts), list(counts.values()), title=title, ylabel="samples")
        html_file = Path(item.get("report_dir") or "") / "report.html"
        self.html_button.setEnabled(bool(item.get("report_dir")) and html_file.is_file())
        self.html_button.setVisible(bool(item.get("report_dir")))
        self._on_plot_changed()

    def _on_plot_changed(self, *_a: Any) -> None:
        path = self.plot_combo.currentData()
        if not path:
            self.plot_label.setText("<span style='color:#808080'>No plots for this dataset.</span>")
            return
        pix = QPixmap(str(path))
        self.plot_label.setPixmap(pix.scaledToWidth(min(900, pix.width()), Qt.TransformationMode.SmoothTransformation)
                                  if not pix.isNull() else QPixmap())

    def _on_html_clicked(self) -> None:
        if self._item and self._item.get("report_dir"):
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(self._item["report_dir"]) / "report.html")))
