"""The Samples view: every sample's prediction beside its true label, and why the model said so.

Loads a ``predictions.csv`` (a genomics or one-shot run folder, or the output of
``genomics evaluate`` / ``expression oneshot``): filter by group (tumour type), put the errors
first, search; selecting a sample shows its explanation when the engine wrote one
(``explanations.csv``: the features that moved its score; one-shot: similarity to each support
sample). Files are read in a worker; the GUI thread only paints.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from gui.modalities import (
    Contribution,
    SampleRow,
    accuracy,
    explanation_file,
    filter_rows,
    groups_of,
    read_explanations,
    read_predictions,
)
from gui.widgets.plot_canvas import SERIES_COLOURS, PlotCanvas
from gui.widgets.row_table import RowTableModel
from gui.wizard.common import MessageLabel
from gui.workers import Worker, start_worker

HEADERS = ("Sample", "Truth", "Predicted", "Score", "Group", "Correct")
TOP_FEATURES = 15
ERROR_COLOUR = QColor("#b00020")

_Index = QModelIndex | QPersistentModelIndex


def _load(path: str, progress: Any = None, cancel: Any = None, partial: Any = None) -> dict[str, Any]:
    rows = read_predictions(path)
    expl_path = explanation_file(path)
    explanations = read_explanations(expl_path) if expl_path is not None else {}
    return {"rows": rows, "explanations": explanations, "explanation_file": str(expl_path or "")}


class SamplesTableModel(RowTableModel):
    """The filtered sample rows, one per table row."""

    HEADERS = HEADERS

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[SampleRow] = []

    def set_rows(self, rows: list[SampleRow]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r = self.rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            values = (r.sample, r.truth, r.predicted, "" if r.score is None else f"{r.score:.3f}", r.group,
                      "✓" if r.correct else "✗")
            return values[col]
        if role == Qt.ItemDataRole.ForegroundRole and not r.correct and col in (2, 5):
            return ERROR_COLOUR
        if role == Qt.ItemDataRole.ToolTipRole:
            extra = "\n".join(f"{k}: {v}" for k, v in r.extra.items())
            return f"{r.sample}\ntruth {r.truth}, predicted {r.predicted}" + (f"\n{extra}" if extra else "")
        return None


class SamplesView(QWidget):
    """Review the samples of a run or an evaluation: truth, prediction, score, explanation."""

    #: Emitted with the path of the predictions once they are shown.
    loaded = Signal(str)
    #: Emitted with the one-line reason when a file cannot be shown.
    load_failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("SamplesView")
        self.path: Path | None = None
        self.rows: list[SampleRow] = []
        self.explanations: dict[str, list[Contribution]] = {}
        self._worker: Worker | None = None
        self._build_ui()

    # -- UI ----------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.open_button = QPushButton("Open predictions…")
        self.open_button.setToolTip("A predictions.csv from a run folder or an evaluation / one-shot test")
        self.open_button.clicked.connect(self._on_open_clicked)
        self.source_label = QLabel("<span style='color:#808080'>No predictions loaded.</span>")
        self.source_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.group_combo = QComboBox()
        self.group_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.group_combo.currentIndexChanged.connect(self._apply_filter)
        self.errors_check = QCheckBox("Errors first")
        self.errors_check.toggled.connect(self._apply_filter)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search sample, truth or prediction")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.textChanged.connect(self._apply_filter)
        self.summary_label = QLabel()
        self.message = MessageLabel()

        self.model = SamplesTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().selectionChanged.connect(self._on_selection_changed)

        self.explain_title = QLabel()
        self.explain_title.setWordWrap(True)
        self.explain_plot = PlotCanvas(min_height=260)

        top = QHBoxLayout()
        top.addWidget(self.open_button)
        top.addWidget(self.source_label, 1)
        filters = QHBoxLayout()
        filters.addWidget(QLabel("Group:"))
        filters.addWidget(self.group_combo)
        filters.addWidget(self.errors_check)
        filters.addWidget(self.search_edit, 1)
        filters.addWidget(self.summary_label)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(QLabel("<b>Why this prediction</b>"))
        rl.addWidget(self.explain_title)
        rl.addWidget(self.explain_plot, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([640, 520])
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(filters)
        layout.addWidget(self.message)
        layout.addWidget(splitter, 1)
        self._show_explanation(None)

    # -- loading -----------------------------------------------------------------------------------
    def _on_open_clicked(self) -> None:
        start = str(self.path.parent) if self.path else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open predictions", start, "Predictions (*.csv *.tsv);;All files (*)")
        if path:
            self.load(path)

    def load(self, path: str | Path) -> Worker:
        """Read ``path`` (a ``predictions.csv`` or a folder holding one) in a worker; see :attr:`loaded`."""
        p = Path(path)
        if p.is_dir():
            p = p / "predictions.csv"
        worker = Worker(_load, str(p))
        worker.signals.finished.connect(lambda result, pth=p, w=worker: self._on_load_finished(w, pth, result))
        worker.signals.failed.connect(lambda msg, _u, _tb, w=worker: self._on_load_failed(w, msg))
        self._worker = worker
        self.message.show_message(f"Reading {p.name}…", "info")
        start_worker(worker)
        return worker

    def _on_load_finished(self, worker: Worker, path: Path, result: dict[str, Any]) -> None:
        if worker is not self._worker:
            return  # a newer file was asked for meanwhile
        self.path = path
        self.rows = result["rows"]
        self.explanations = result["explanations"]
        note = " · explanations: " + Path(result["explanation_file"]).name if result["explanation_file"] else ""
        self.source_label.setText(f"<b>{html.escape(path.parent.name)}</b> / {html.escape(path.name)}"
                                  f"<span style='color:#666'>{html.escape(note)}</span>")
        self.source_label.setToolTip(str(path))
        self.group_combo.blockSignals(True)
        self.group_combo.clear()
        self.group_combo.addItem("All groups", None)
        for g in groups_of(self.rows):
            members = [r for r in self.rows if r.group == g]
            acc = accuracy(members)
            self.group_combo.addItem(f"{g} ({len(members):,}" + (f", accuracy {acc:.2f})" if acc is not None else ")"), g)
        self.group_combo.blockSignals(False)
        self.message.clear_message()
        self._apply_filter()
        self.loaded.emit(str(path))

    def _on_load_failed(self, worker: Worker, message: str) -> None:
        if worker is not self._worker:
            return
        self.message.show_message(f"Cannot show these predictions: {message}", "error")
        self.load_failed.emit(message)

    # -- filtering ---------------------------------------------------------------------------------
    def set_group(self, group: str | None) -> None:
        self.group_combo.setCurrentIndex(max(0, self.group_combo.findData(group)))

    def visible_rows(self) -> list[SampleRow]:
        return list(self.model.rows)

    def _apply_filter(self, *_args: Any) -> None:
        rows = filter_rows(self.rows, self.group_combo.currentData(), self.search_edit.text(),
                           self.errors_check.isChecked())
        self.model.set_rows(rows)
        acc = accuracy(rows)
        errors = sum(1 for r in rows if not r.correct)
        self.summary_label.setText(
            f"{len(rows):,} samples · {errors:,} errors" + (f" · accuracy {acc:.3f}" if acc is not None else "")
        )
        if rows:
            self.table.selectRow(0)
        else:
            self._show_explanation(None)

    def select_sample(self, sample: str) -> bool:
        for i, r in enumerate(self.model.rows):
            if r.sample == sample:
                self.table.selectRow(i)
                return True
        return False

    def selected_row(self) -> SampleRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.rows[rows[0].row()] if rows else None

    def _on_selection_changed(self, *_args: Any) -> None:
        self._show_explanation(self.selected_row())

    # -- explanation -------------------------------------------------------------------------------
    def _show_explanation(self, row: SampleRow | None) -> None:
        if row is None:
            self.explain_title.setText("")
            self.explain_plot.message("Select a sample")
            return
        verdict = "correct" if row.correct else "<span style='color:#b00020'>wrong</span>"
        score = f", score {row.score:.3f}" if row.score is not None else ""
        self.explain_title.setText(
            f"<b>{html.escape(row.sample)}</b>: true <b>{html.escape(row.truth)}</b>, predicted "
            f"<b>{html.escape(row.predicted)}</b>{score} ({verdict})"
            + (f"<br><span style='color:#666'>{html.escape(row.group)}</span>" if row.group else "")
        )
        items = self.explanations.get(row.sample, [])[:TOP_FEATURES]
        if not items:
            self.explain_plot.message(trial_text(row) or "No explanation was written for this sample")
            return
        if items[0].method:
            self.explain_title.setText(self.explain_title.text()
                                       + f"<br><span style='color:#666'>method: {html.escape(items[0].method)}</span>")
        draw_contributions(self.explain_plot, items)


def trial_text(row: SampleRow) -> str:
    """A one-shot trial in words: the support samples it offered and what 1-NN answered."""
    support = [s for s in row.extra.get("support", "").split(";") if s]
    types = [t for t in row.extra.get("candidates", "").split(";") if t]
    if not support:
        return ""
    pairs = ", ".join(f"{t} ({s})" for s, t in zip(support, types, strict=False)) if types else ", ".join(support)
    lines = [f"{row.extra.get('ways', len(support))}-way trial; candidates: {pairs}"]
    if row.extra.get("nn1_predicted"):
        lines.append(f"1-NN answered {row.extra['nn1_predicted']}")
    return "\n".join(lines)


def draw_contributions(canvas: PlotCanvas, items: list[Contribution]) -> None:
    """Horizontal bars: what pushed the score up (orange) or down (blue), largest at the top."""
    labels = [f"{c.feature} = {c.value}" if c.value and c.value != c.feature else c.feature for c in items]
    values = [c.contribution for c in items]

    def draw(c: PlotCanvas) -> None:
        (ax,) = c.reset()
        ys = list(range(len(values)))[::-1]
        colours = [SERIES_COLOURS[1] if v >= 0 else SERIES_COLOURS[0] for v in values]
        ax.barh(ys, values, color=colours, height=0.7)
        ax.set_yticks(ys, labels, fontsize=7)
        ax.axvline(0, color="#999999", linewidth=0.8)
        ax.set_xlabel("contribution to the score")
        ax.grid(True, axis="x", alpha=0.25)
        ax.grid(False, axis="y")

    canvas.plot(draw)
