"""The one-shot expression panel: N-way test vs 1-NN, classify a sample against a support set, markers.

Runs ``metascope expression oneshot / classify / markers`` (PRODUCT.md) in a worker on a model of
the library (task ``expression_embedding``) and shows what they wrote: the accuracy-vs-N plot,
the similarity of the query to each support sample, the marker genes and the saliency plot.
"""

from __future__ import annotations

import csv
import html
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine.paths import home_dir
from gui.modalities import (
    EXPRESSION_MATRIX,
    dataset_kind,
    matrix_options,
    oneshot_table,
    read_json,
    read_sample_table,
    write_support_table,
)
from gui.views.cli_runner import CliRunner
from gui.views.modality_results import PngGallery, metrics_table_html
from gui.widgets.plot_canvas import SERIES_COLOURS, PlotCanvas
from gui.wizard.page_modality import label_columns
from gui.workers import Worker, start_worker


def results_dir(action: str, model: Path) -> Path:
    """A fresh folder for the output of one action on one model."""
    return home_dir() / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-{action}-{model.stem}"


def draw_accuracy_vs_n(canvas: PlotCanvas, metrics: dict[str, Any]) -> None:
    """N-way one-shot accuracy of the Siamese network and of 1-NN, with 95% CIs when written."""
    table = oneshot_table(metrics)
    if not table:
        canvas.message("No N-way results")
        return
    ways = metrics.get("ways", {})

    def draw(c: PlotCanvas) -> None:
        (ax,) = c.reset()
        for i, (key, label) in enumerate((("siamese", "Siamese"), ("nn1", "1-NN (Pearson)"))):
            pts = [(n, s if key == "siamese" else nn) for n, s, nn, _t in table]
            pts = [(n, v) for n, v in pts if v is not None]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "o-", color=SERIES_COLOURS[i], label=label)
            for n, _v in pts:
                ci = (ways.get(str(n), {}).get("ci") or {}).get(key)
                if isinstance(ci, list) and len(ci) == 2:
                    ax.vlines(n, ci[0], ci[1], color=SERIES_COLOURS[i], alpha=0.6)
        ax.set_xlabel("N (candidate types per trial)")
        ax.set_ylabel("accuracy")
        ax.set_xticks([n for n, *_ in table])
        ax.set_ylim(0, 1.02)
        ax.set_title("N-way one-shot accuracy")
        ax.legend(fontsize=8, frameon=False, labelcolor=c._fg)

    canvas.plot(draw)


def read_classification(out_dir: Path) -> tuple[str, list[tuple[str, str, float]]]:
    """``(predicted type, [(support sample, type, similarity)])`` of an ``expression classify`` output."""
    metrics = read_json(out_dir / "metrics.json") or read_json(out_dir / "classification.json")
    predicted = str(metrics.get("predicted") or metrics.get("prediction") or "")
    sims: list[tuple[str, str, float]] = []
    raw = metrics.get("similarities") or metrics.get("support")
    if isinstance(raw, list):
        for r in raw:
            if isinstance(r, dict) and isinstance(r.get("similarity"), (int, float)):
                sims.append((str(r.get("support_sample") or r.get("sample") or r.get("support") or ""),
                             str(r.get("type") or ""),
                             float(r["similarity"])))
    if not sims:
        for path in sorted(out_dir.glob("*.csv")):
            with open(path, encoding="utf-8") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if path.read_text()[:500].count("\t") else ",")
                if "similarity" not in (reader.fieldnames or []):
                    continue
                for r in reader:
                    try:
                        sims.append((r.get("support_sample") or r.get("support") or r.get("sample") or "",
                                     r.get("type") or
                                     r.get("support_type") or "", float(r["similarity"])))
                    except (TypeError, ValueError):
                        continue
            break
    sims.sort(key=lambda s: -s[2])
    if not predicted and sims:
        predicted = sims[0][1]
    return predicted, sims


def _read_table(path: str, progress: Any = None, cancel: Any = None, partial: Any = None) -> Any:
    return read_sample_table(path)


class OneShotPanel(QWidget):
    """N-way test, classify and markers for one expression embedding model."""

    review_samples_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model: Path | None = None
        self._datasets: list[dict[str, Any]] = []
        self._table: tuple[list[str], list[dict[str, str]]] = ([], [])
        self._last_oneshot: Path | None = None
        self.runner = CliRunner()
        self.runner.finished.connect(self._on_runner_finished)
        self.runner.busy_changed.connect(self._on_busy_changed)

        self.dataset_combo = QComboBox()
        self.dataset_combo.currentIndexChanged.connect(self._on_dataset_changed)
        self.label_combo = QComboBox()
        self.label_combo.currentIndexChanged.connect(self._on_label_changed)
        top = QFormLayout()
        top.addRow("Matrix:", self.dataset_combo)
        top.addRow("Label column:", self.label_combo)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_test_tab(), "N-way test")
        self.tabs.addTab(self._build_classify_tab(), "Classify a sample")
        self.tabs.addTab(self._build_markers_tab(), "Marker genes")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.tabs, 1)
        lay.addWidget(self.runner)

    # -- UI ----------------------------------------------------------------------------------------
    def _build_test_tab(self) -> QWidget:
        w = QWidget()
        self.types_edit = QLineEdit()
        self.types_edit.setPlaceholderText("candidate types, comma-separated (empty: the types the model never saw)")
        self.ways_edit = QLineEdit("6,8,10")
        self.trials_spin = QSpinBox()
        self.trials_spin.setRange(10, 100000)
        self.trials_spin.setValue(2000)
        self.test_button = QPushButton("Run N-way test")
        self.test_button.clicked.connect(self.run_oneshot)
        self.samples_button = QPushButton("Review samples")
        self.samples_button.clicked.connect(self._on_samples_clicked)
        self.samples_button.setEnabled(False)
        self.accuracy_plot = PlotCanvas(min_height=220)
        self.accuracy_plot.message("Run a test to see accuracy against N")
        self.test_metrics = QLabel()
        self.test_metrics.setTextFormat(Qt.TextFormat.RichText)
        form = QFormLayout()
        form.addRow("Types:", self.types_edit)
        form.addRow("N (ways):", self.ways_edit)
        form.addRow("Trials per N:", self.trials_spin)
        row = QHBoxLayout()
        row.addWidget(self.test_button)
        row.addWidget(self.samples_button)
        row.addStretch(1)
        lay = QVBoxLayout(w)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.accuracy_plot, 1)
        lay.addWidget(self.test_metrics)
        return w

    def _build_classify_tab(self) -> QWidget:
        w = QWidget()
        self.query_combo = QComboBox()
        self.query_combo.setEditable(True)
        self.support_table = QTableWidget(0, 2)
        self.support_table.setHorizontalHeaderLabels(["Type", "Support sample"])
        self.support_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.support_table.verticalHeader().setVisible(False)
        self.classify_button = QPushButton("Classify")
        self.classify_button.clicked.connect(self.run_classify)
        self.classify_result = QLabel()
        self.classify_result.setTextFormat(Qt.TextFormat.RichText)
        self.similarity_plot = PlotCanvas(min_height=200)
        self.similarity_plot.message("Similarity to each support sample appears here")
        form = QFormLayout()
        form.addRow("Query sample:", self.query_combo)
        lay = QVBoxLayout(w)
        lay.addLayout(form)
        lay.addWidget(QLabel("One support sample per candidate type (untick a type by leaving it empty):"))
        lay.addWidget(self.support_table, 1)
        lay.addWidget(self.classify_button)
        lay.addWidget(self.classify_result)
        lay.addWidget(self.similarity_plot, 1)
        return w

    def _build_markers_tab(self) -> QWidget:
        w = QWidget()
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("the Siamese run folder the model came from")
        self.markers_button = QPushButton("Find marker genes")
        self.markers_button.clicked.connect(self.run_markers)
        self.markers_table = QTableWidget(0, 3)
        self.markers_table.setHorizontalHeaderLabels(["Rank", "Gene", "Saliency"])
        self.markers_table.verticalHeader().setVisible(False)
        self.markers_gallery = PngGallery(min_height=200)
        row = QHBoxLayout()
        row.addWidget(self.run_edit, 1)
        row.addWidget(self.markers_button)
        lay = QVBoxLayout(w)
        lay.addLayout(row)
        body = QHBoxLayout()
        body.addWidget(self.markers_table, 1)
        body.addWidget(self.markers_gallery, 2)
        lay.addLayout(body, 1)
        return w

    # -- inputs ------------------------------------------------------------------------------------
    def set_model(self, model: Path, datasets: list[dict[str, Any]], run_dir: str = "") -> None:
        """Work with ``model`` on the imported expression matrices ``datasets``."""
        self.model = Path(model)
        self._datasets = [d for d in datasets if dataset_kind(d) == EXPRESSION_MATRIX and d.get("samples")]
        if run_dir and not self.run_edit.text():
            self.run_edit.setText(run_dir)
        self.dataset_combo.blockSignals(True)
        self.dataset_combo.clear()
        for d in self._datasets:
            self.dataset_combo.addItem(d.get("name") or Path(d["path"]).name, d)
        self.dataset_combo.blockSignals(False)
        self._on_dataset_changed()

    def dataset(self) -> dict[str, Any] | None:
        return self.dataset_combo.currentData()

    def _on_dataset_changed(self, *_a: Any) -> None:
        item = self.dataset() or {}
        cols = label_columns(item)
        self.label_combo.blockSignals(True)
        self.label_combo.clear()
        for name in cols:
            self.label_combo.addItem(name, name)
        guess = next((i for i, n in enumerate(cols) if "type" in n.lower()), 0)
        self.label_combo.setCurrentIndex(guess)
        self.label_combo.blockSignals(False)
        self._table = ([], [])
        if item.get("samples"):
            worker = Worker(_read_table, item["samples"])
            worker.signals.finished.connect(lambda t, p=item["samples"]: self._on_table_read(p, t))
            self._table_worker = worker
            start_worker(worker)
        self._on_label_changed()

    def _on_table_read(self, path: str, table: Any) -> None:
        if (self.dataset() or {}).get("samples") == path:
            self._table = table
            self._on_label_changed()

    def types(self) -> list[str]:
        entry = label_columns(self.dataset()).get(self.label_combo.currentData() or "", {})
        return list((entry.get("counts") or {}) if isinstance(entry, dict) else {})

    def _on_label_changed(self, *_a: Any) -> None:
        types = self.types()
        self.types_edit.setToolTip("Types in this matrix: " + ", ".join(types) if types else "")
        columns, rows = self._table
        col = self.label_combo.currentData() or ""
        id_col = columns[0] if columns else ""
        by_type: dict[str, list[str]] = {}
        for r in rows:
            by_type.setdefault(r.get(col, ""), []).append(r.get(id_col, ""))
        self.query_combo.clear()
        self.query_combo.addItems([r.get(id_col, "") for r in rows])
        self.support_table.setRowCount(len(types))
        for i, t in enumerate(types):
            self.support_table.setItem(i, 0, QTableWidgetItem(t))
            combo = QComboBox()
            combo.addItem("", "")
            for sid in by_type.get(t, []):
                combo.addItem(sid, sid)
            combo.setCurrentIndex(1 if combo.count() > 1 else 0)
            self.support_table.setCellWidget(i, 1, combo)

    def support(self) -> dict[str, str]:
        """Candidate type -> its support sample (types left empty are not candidates)."""
        out = {}
        for i in range(self.support_table.rowCount()):
            combo = self.support_table.cellWidget(i, 1)
            if isinstance(combo, QComboBox) and combo.currentData():
                out[self.support_table.item(i, 0).text()] = str(combo.currentData())
        return out

    def _on_busy_changed(self, busy: bool) -> None:
        for b in (self.test_button, self.classify_button, self.markers_button):
            b.setEnabled(not busy)

    # -- actions -----------------------------------------------------------------------------------
    def _common(self) -> list[str] | None:
        item = self.dataset()
        if self.model is None or item is None:
            self.runner.message.show_message("Import an expression matrix with its sample table first "
                                             "(Datasets view).", "error")
            return None
        return ["--matrix", item["path"], "--samples", item["samples"], *matrix_options(item, ["expression", "oneshot"])]

    def run_oneshot(self) -> Worker | None:
        common = self._common()
        if common is None or self.model is None:
            return None
        out = results_dir("oneshot", self.model)
        self._last_oneshot = out
        types = self.types_edit.text().replace(" ", "")
        args = ["expression", "oneshot", str(self.model), *common, "--label-column",
                str(self.label_combo.currentData()), *(["--types", types] if types else []),
                "--ways", self.ways_edit.text().replace(" ", ""), "--trials", str(self.trials_spin.value()),
                "--out", str(out)]
        return self.runner.start("oneshot", args, "N-way one-shot test…")

    def run_classify(self) -> Worker | None:
        common = self._common()
        query = self.query_combo.currentText().strip()
        support = self.support()
        if common is None or self.model is None:
            return None
        if not query or len(support) < 2:
            self.runner.message.show_message("Choose a query sample and at least two support samples.", "error")
            return None
        out = results_dir("classify", self.model)
        table = out / "support.tsv"
        self._classify_out = out
        args = ["expression", "classify", str(self.model), "--matrix", common[1],
                *matrix_options(self.dataset(), ["expression", "classify"]), "--query", query,
                "--support", str(table), "--out", str(out)]
        return self.runner.start("classify", args, f"Classifying {query}…",
                                 before=lambda: write_support_table(table, support))

    def run_markers(self) -> Worker | None:
        run = self.run_edit.text().strip()
        if not run or not Path(run).is_dir():
            self.runner.message.show_message("Choose the Siamese run folder of this model.", "error")
            return None
        out = results_dir("markers", Path(run))
        self._markers_out = out
        return self.runner.start("markers", ["expression", "markers", run, "--out", str(out)], "Marker genes…")

    def _on_runner_finished(self, tag: str, _result: Any) -> None:
        if tag == "oneshot" and self._last_oneshot is not None:
            self.show_oneshot(self._last_oneshot)
        elif tag == "classify":
            self.show_classification(self._classify_out)
        elif tag == "markers":
            self.show_markers(self._markers_out)

    # -- results -----------------------------------------------------------------------------------
    def show_oneshot(self, out: Path) -> None:
        metrics = read_json(out / "metrics.json")
        self._last_oneshot = out
        draw_accuracy_vs_n(self.accuracy_plot, metrics)
        self.test_metrics.setText(metrics_table_html({"ways": metrics.get("ways", {})}))
        self.samples_button.setEnabled((out / "predictions.csv").is_file())

    def _on_samples_clicked(self) -> None:
        if self._last_oneshot is not None:
            self.review_samples_requested.emit(str(self._last_oneshot / "predictions.csv"))

    def show_classification(self, out: Path) -> None:
        predicted, sims = read_classification(out)
        self.last_classification = (predicted, sims)
        self.classify_result.setText(f"Most similar type: <b>{html.escape(predicted or '?')}</b>")
        if not sims:
            self.similarity_plot.message("The command wrote no similarities")
            return
        labels = [f"{s} ({t})" if t else s for s, t, _v in sims]
        values = [v for *_x, v in sims]

        def draw(c: PlotCanvas) -> None:
            (ax,) = c.reset()
            ys = list(range(len(values)))[::-1]
            ax.barh(ys, values, color=[SERIES_COLOURS[1] if i == 0 else SERIES_COLOURS[0] for i in range(len(values))])
            ax.set_yticks(ys, labels, fontsize=8)
            ax.set_xlim(0, 1.02 if max(values) <= 1 else max(values) * 1.05)
            ax.set_xlabel("similarity to the query (same-type score)")

        self.similarity_plot.plot(draw)

    def show_markers(self, out: Path) -> None:
        rows: list[dict[str, str]] = []
        path = out / "markers.csv"
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        self.markers_table.setRowCount(min(len(rows), 200))
        for i, r in enumerate(rows[:200]):
            for j, key in enumerate(("rank", "gene", "saliency")):
                self.markers_table.setItem(i, j, QTableWidgetItem(str(r.get(key, ""))))
        self.markers_gallery.set_folder(out, prefer="saliency")


class OneShotGroup(QGroupBox):
    """The panel in a titled box (for the Models view)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Expression: one-shot tumour type", parent)
        self.panel = OneShotPanel()
        lay = QVBoxLayout(self)
        lay.addWidget(self.panel)
