"""The Training view: training runs with live curves, cancel/resume, evaluation, export to the library.

Training runs in its own process (the ``metascope train patches`` CLI, spawned by
:mod:`engine.runs`); this view only follows the run folder's ``events.jsonl`` and ``state.json``.
Closing the app therefore never kills a run, and the view reattaches to running runs on start.
"""

from __future__ import annotations

import html
import os
import signal
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.errors import MetaScopeError
from engine.paths import runs_dir
from engine.runs import (
    EventFollower,
    RunHistory,
    RunInfo,
    SpawnedRun,
    list_runs,
    log_tail,
    request_stop,
    run_info,
    spawn_training,
    train_args,
)
from gui.modalities import RUN_KINDS, run_kind
from gui.views.modality_results import RunResultsPanel

# a patch run's results (evaluation, metrics, export) live in gui.views.training_results;
# the module-level helpers are re-exported here
from gui.views.training_results import (  # noqa: F401
    TrainingResultsMixin,
    _evaluate,
    _export,
    _export_and_add,
    _fmt_ci,
    _model_stamp,
    metrics_html,
    model_card,
)
from gui.widgets.plot_canvas import PlotCanvas, draw_curves
from gui.wizard.common import MessageLabel, human_duration
from gui.workers import Worker

STATUS_COLOURS = {
    "starting": "#5f6b7a",
    "running": "#0b62a4",
    "stopping": "#8a5a00",
    "finished": "#1b6e20",
    "cancelled": "#8a5a00",
    "failed": "#b00020",
    "crashed": "#b00020",
    "unknown": "#5f6b7a",
}
STATUS_TEXT = {
    "starting": "starting",
    "running": "running",
    "stopping": "stopping…",
    "finished": "finished",
    "cancelled": "stopped",
    "failed": "failed",
    "crashed": "interrupted",
    "unknown": "unknown",
}
POLL_MS = 500

class _Tracked:
    """Follower + folded history of one run folder."""

    def __init__(self, run: Path) -> None:
        self.follower = EventFollower(run)
        self.history = RunHistory()

    def poll(self) -> bool:
        events = self.follower.read_new()
        if self.follower.restarted:
            self.history.clear()
        self.history.apply_all(events)
        return bool(events)


class TrainingView(TrainingResultsMixin, QWidget):
    """Lists runs; shows the selected run's progress, curves and results."""

    #: Emitted after a model was added to the model library.
    library_changed = Signal()
    #: Emitted with a ``predictions.csv`` to review in the Samples view.
    review_samples_requested = Signal(str)
    #: Emitted with a patch run folder whose validation patches to open in the Patch review view.
    review_patches_requested = Signal(str)
    #: Emitted with a finished generator (wgan) run folder to open in the Generator view.
    generator_requested = Signal(str)
    #: Emitted with a finished Siamese run folder (one-shot test, classify, markers).
    oneshot_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None, runs_parent: Path | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("TrainingView")
        self._runs_parent = runs_parent
        #: ONNX exporter for "Add to model library" / "Export": ``dynamo`` (torch.export) or the
        #: several times faster ``torchscript``; both are verified against PyTorch with onnxruntime
        self.exporter = "dynamo"
        self._runs: list[RunInfo] = []
        self._tracked: dict[Path, _Tracked] = {}
        self._processes: dict[Path, SpawnedRun] = {}
        self._evaluations: dict[Path, dict[str, Any]] = {}
        self._workers: dict[str, Worker] = {}
        self._selected: Path | None = None
        self._shown_evaluation: Path | None = None
        self._ticks = 0
        self._build_ui()
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._on_timer_timeout)
        self._timer.start()
        self.refresh_runs()
        active = next((r for r in self._runs if r.active), None)
        self.select_run((active or (self._runs[0] if self._runs else None)).path if self._runs else None)

    # -- UI ----------------------------------------------------------------------------------------
    def _build_runs_panel(self) -> QWidget:
        """The left column: the runs list and its buttons."""
        self.runs_tree = QTreeWidget()
        self.runs_tree.setHeaderLabels(["Run", "Status", "Epoch", "Best AUC"])
        self.runs_tree.setRootIsDecorated(False)
        self.runs_tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.runs_tree.setAlternatingRowColors(True)
        # run names start with a timestamp; keep both ends visible
        self.runs_tree.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header = self.runs_tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.runs_tree.itemSelectionChanged.connect(self._on_runs_tree_selection_changed)

        self.new_button = QPushButton("New training…")
        self.new_button.setToolTip("Open the training wizard: dataset, split, model, settings")
        self.new_button.clicked.connect(lambda: self.open_wizard())
        self.cancel_button = QPushButton("Cancel run")
        self.cancel_button.setToolTip(
            "Stop at the next step; the last finished epoch is kept and the run can be resumed"
        )
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue a stopped or interrupted run from its last checkpoint")
        self.resume_button.clicked.connect(self._on_resume_clicked)
        self.folder_button = QPushButton("Open folder")
        self.folder_button.clicked.connect(self._on_folder_clicked)
        self.log_button = QPushButton("Show log")
        self.log_button.clicked.connect(self._on_log_clicked)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        runs_title = QLabel("<b>Training runs</b>")
        left_layout.addWidget(runs_title)
        left_layout.addWidget(self.new_button)
        left_layout.addWidget(self.runs_tree, 1)
        row = QHBoxLayout()
        row.addWidget(self.cancel_button)
        row.addWidget(self.resume_button)
        left_layout.addLayout(row)
        row2 = QHBoxLayout()
        row2.addWidget(self.folder_button)
        row2.addWidget(self.log_button)
        left_layout.addLayout(row2)
        return left

    def _build_ui(self) -> None:
        left = self._build_runs_panel()

        self.title = QLabel()
        f = self.title.font()
        f.setPointSize(f.pointSize() + 3)
        f.setBold(True)
        self.title.setFont(f)
        self.status_label = QLabel()
        self.info_label = QLabel()
        self.info_label.setWordWrap(True)
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(True)
        self.progress_text = QLabel()
        self.curves = PlotCanvas(min_height=260)
        self.message = MessageLabel()
        self._build_results_box()

        detail = QWidget()
        dl = QVBoxLayout(detail)
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addWidget(self.status_label)
        head.addStretch(1)
        dl.addLayout(head)
        dl.addWidget(self.info_label)
        dl.addWidget(self.progress_bar)
        dl.addWidget(self.progress_text)
        dl.addWidget(self.curves, 1)
        dl.addWidget(self.message)
        dl.addWidget(self.results_box)
        # genomics / expression runs: metrics.json, plots, samples, model.onnx
        self.modality_results = RunResultsPanel()
        self.modality_results.review_samples_requested.connect(self.review_samples_requested)
        self.modality_results.generator_requested.connect(self.generator_requested)
        self.modality_results.oneshot_requested.connect(self.oneshot_requested)
        self.modality_results.library_changed.connect(self.library_changed)
        self.modality_results.hide()
        dl.addWidget(self.modality_results)
        self.placeholder = QLabel(
            "No training run selected.\n\nClick “New training…” to train a patch classifier on your own data."
        )
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet("color: #808080;")
        dl.addWidget(self.placeholder)
        self.detail = detail
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(detail)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(scroll)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([340, 900])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    # -- runs list ---------------------------------------------------------------------------------
    @property
    def runs_parent(self) -> Path:
        return self._runs_parent if self._runs_parent is not None else runs_dir()

    @property
    def runs(self) -> list[RunInfo]:
        return list(self._runs)

    def refresh_runs(self) -> None:
        """Re-read every run folder's state (cheap: small JSON files)."""
        for spawned in list(self._processes.values()):
            spawned.process.poll()  # reap finished children so their pid reads as gone
        # newest first by name (runs started here are named by start time): a stable order while runs update
        self._runs = sorted(list_runs(self.runs_parent), key=lambda r: r.name, reverse=True)
        known = {r.path for r in self._runs}
        listed = [
            self.runs_tree.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole)
            for i in range(self.runs_tree.topLevelItemCount())
        ]
        self.runs_tree.blockSignals(True)
        if listed != [str(r.path) for r in self._runs]:
            # the set of runs changed: rebuild; otherwise only texts change (no flicker, no lost clicks)
            self.runs_tree.clear()
            for r in self._runs:
                item = QTreeWidgetItem()
                item.setData(0, Qt.ItemDataRole.UserRole, str(r.path))
                self.runs_tree.addTopLevelItem(item)
                if r.path == self._selected:
                    item.setSelected(True)
                    self.runs_tree.setCurrentItem(item)
        for i, r in enumerate(self._runs):
            self._fill_item(self.runs_tree.topLevelItem(i), r)
        self.runs_tree.blockSignals(False)
        if self._selected is not None and self._selected not in known:
            self.select_run(None)
        self._update_buttons()

    @staticmethod
    def _fill_item(item: QTreeWidgetItem, r: RunInfo) -> None:
        epoch = r.state.get("epoch")
        epochs = r.state.get("epochs") or r.config.get("config", {}).get("epochs")
        best = r.state.get("best_val_auc")
        texts = [
            r.name,
            STATUS_TEXT.get(r.status, r.status),
            f"{epoch}/{epochs}" if epoch is not None and epochs else "",
            f"{best:.3f}" if isinstance(best, (int, float)) else "",
        ]
        for col, text in enumerate(texts):
            if item.text(col) != text:
                item.setText(col, text)
        item.setForeground(1, QColor(STATUS_COLOURS.get(r.status, "#5f6b7a")))
        item.setToolTip(0, str(r.path))
        item.setToolTip(1, r.message)

    def info(self, run: Path | None = None) -> RunInfo | None:
        target = run or self._selected
        return next((r for r in self._runs if r.path == target), None)

    def history(self, run: Path | None = None) -> RunHistory | None:
        target = run or self._selected
        tracked = self._tracked.get(target) if target else None
        return tracked.history if tracked else None

    def select_run(self, run: Path | None) -> None:
        """Show ``run`` (``None``: nothing) and follow its events."""
        self._selected = Path(run) if run else None
        # deselecting the previous row must not read as "the user selected nothing"
        self.runs_tree.blockSignals(True)
        for i in range(self.runs_tree.topLevelItemCount()):
            item = self.runs_tree.topLevelItem(i)
            selected = self._selected is not None and item.data(0, Qt.ItemDataRole.UserRole) == str(self._selected)
            item.setSelected(selected)
            if selected:
                self.runs_tree.setCurrentItem(item)
        self.runs_tree.blockSignals(False)
        has = self._selected is not None
        for w in (self.title, self.status_label, self.info_label, self.progress_bar, self.progress_text, self.curves):
            w.setVisible(has)
        self.placeholder.setVisible(not has)
        self.results_box.setVisible(False)
        self.modality_results.setVisible(False)
        self._shown_evaluation = None
        self.message.clear_message()
        self.result_message.clear_message()
        if self._selected is not None:
            tracked = self._tracked.setdefault(self._selected, _Tracked(self._selected))
            tracked.poll()
            self._show_selected(redraw=True)
        self._update_buttons()

    def _on_runs_tree_selection_changed(self) -> None:
        items = self.runs_tree.selectedItems()
        path = Path(items[0].data(0, Qt.ItemDataRole.UserRole)) if items else None
        if path != self._selected:
            self.select_run(path)

    # -- polling -----------------------------------------------------------------------------------
    def _on_timer_timeout(self) -> None:
        self._ticks += 1
        if self._ticks % 4 == 0 or any(r.active for r in self._runs):
            self.refresh_runs()
        self.poll_selected()

    def poll_selected(self) -> bool:
        """Read new events of the selected run and update the display; True if any arrived."""
        if self._selected is None:
            return False
        tracked = self._tracked.setdefault(self._selected, _Tracked(self._selected))
        changed = tracked.poll()
        self._show_selected(redraw=changed)
        return changed

    def _show_selected(self, redraw: bool) -> None:
        run = self._selected
        if run is None:
            return
        info = self.info(run) or run_info(run)
        h = self._tracked[run].history
        self.title.setText(html.escape(info.name))
        colour = STATUS_COLOURS.get(info.status, "#5f6b7a")
        self.status_label.setText(
            f"<span style='color:white;background:{colour};padding:2px 8px;border-radius:4px'>"
            f"&nbsp;{html.escape(STATUS_TEXT.get(info.status, info.status))}&nbsp;</span>"
        )
        cfg = info.config.get("config", {})
        data = info.config.get("data", {})
        parts = []
        kind = str(info.config.get("kind") or "")
        if kind in RUN_KINDS:
            data_path = cfg.get("study") or cfg.get("matrix") or cfg.get("data") or ""
            parts.append(f"<b>{html.escape(RUN_KINDS[kind][1])}</b>"
                         + (f" on {html.escape(str(data_path))}" if data_path else ""))
        elif cfg:
            parts.append(f"<b>{html.escape(str(cfg.get('arch')))}</b> on {html.escape(str(cfg.get('data')))}")
        if h.n_train:
            parts.append(f"{h.n_train:,} training / {h.n_val:,} validation patches")
        elif data.get("n_train"):
            parts.append(f"{data['n_train']:,} training / {data.get('n_val', 0):,} validation patches")
        if h.device:
            parts.append(f"device <b>{html.escape(h.device)}</b>")
        self.info_label.setText(" · ".join(parts) or html.escape(str(run)))
        frac = h.fraction
        if info.status == "finished":
            frac = 1.0
        self.progress_bar.setValue(int(round((frac or 0.0) * 1000)))
        self.progress_bar.setFormat(f"{(frac or 0.0) * 100:.0f} %")
        self.progress_text.setText(self._progress_text(info, h))
        if info.status in ("failed", "crashed"):
            self.message.show_message(
                (info.message or h.message or "The run stopped unexpectedly.")
                + (" It can be resumed from its last checkpoint." if info.resumable else ""),
                "error",
            )
        elif info.status == "cancelled":
            self.message.show_message(
                "Stopped by the user. " + ("Resume continues from the last finished epoch." if info.resumable else ""),
                "warning",
            )
        elif h.message and info.status == "finished":
            self.message.show_message(h.message.capitalize() + ".", "info")
        else:
            self.message.clear_message()
        if redraw:
            draw_curves(self.curves, h)
        self._show_results(info, h)
        self._update_buttons()

    def _progress_text(self, info: RunInfo, h: RunHistory) -> str:
        if info.status == "starting" or (info.active and not h.epochs):
            return "Starting: loading the data and checking it…"
        bits = []
        if h.epochs:
            bits.append(f"Epoch {max(h.epoch, 0)} / {h.epochs}")
        if h.steps and info.active:
            bits.append(f"step {h.step} / {h.steps}")
        if info.active and h.eta_s is not None:
            bits.append(f"about {human_duration(h.eta_s)} left")
        if h.throughput:
            bits.append(f"{h.throughput:,.0f} patches/s")
        if h.gpu_memory_mb:
            bits.append(f"GPU memory {h.gpu_memory_mb / 1024:.1f} GiB")
        auc = h.latest("auc")
        if auc is not None:
            bits.append(f"validation AUC {auc:.3f}")
        return " · ".join(bits)

    # -- actions -----------------------------------------------------------------------------------
    def open_wizard(self, dataset: dict[str, Any] | None = None) -> Any:
        """Open the training wizard (window-modal), optionally on a dataset; Finish starts the run here."""
        from gui.views.datasets_view import DatasetStore
        from gui.wizard import TrainingWizard

        wizard = TrainingWizard(self, recent_datasets=DatasetStore().items(), dataset=dataset)
        wizard.start_requested.connect(self.start_run)
        wizard.open()
        return wizard

    def start_run(self, config: Any, run_dir: Path) -> Path | None:
        """Spawn ``metascope train patches`` for ``config`` into ``run_dir`` and follow it."""
        run = Path(run_dir)
        try:
            # a genomics / expression request carries its own command line
            args = config.cli_args() if hasattr(config, "cli_args") else train_args(run, config.to_dict())
            spawned = spawn_training(run, args)
        except MetaScopeError as exc:
            QMessageBox.warning(self, "Cannot start training", str(exc))
            return None
        self._processes[run] = spawned
        self.refresh_runs()
        self.select_run(run)
        return run

    def resume_run(self, run: Path) -> bool:
        info = run_info(run)
        if not info.resumable:
            return False
        try:
            spawned = spawn_training(run, train_args(run, resume=True))
        except MetaScopeError as exc:
            QMessageBox.warning(self, "Cannot resume training", str(exc))
            return False
        self._processes[run] = spawned
        self._evaluations.pop(run, None)
        self.refresh_runs()
        self.select_run(run)
        return True

    def cancel_run(self, run: Path) -> None:
        """Ask the run to stop at its next step (its last checkpoint is kept)."""
        try:
            asked = request_stop(run)
        except MetaScopeError as exc:
            QMessageBox.warning(self, "Cannot cancel", str(exc))
            return
        if not asked:
            # still starting (no run folder, no checkpoint yet): nothing to keep, end the process
            self._terminate(run)
        self.refresh_runs()
        self.poll_selected()

    def _terminate(self, run: Path) -> None:
        spawned = self._processes.get(run)
        if spawned is not None:
            spawned.process.terminate()
            return
        info = run_info(run)
        if info.pid and info.alive:
            os.kill(info.pid, signal.SIGTERM)

    def _on_cancel_clicked(self) -> None:
        if self._selected is not None:
            self.cancel_run(self._selected)

    def _on_resume_clicked(self) -> None:
        if self._selected is not None:
            self.resume_run(self._selected)

    def _on_folder_clicked(self) -> None:
        if self._selected is not None and self._selected.is_dir():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._selected)))

    def _on_log_clicked(self) -> None:
        if self._selected is None:
            return
        dialog = QDialog(self)
        dialog.setWindowTitle(f"Log of {self._selected.name}")
        text = QPlainTextEdit(log_tail(self._selected, lines=400) or "(no log: this run was not started from the app)")
        text.setReadOnly(True)
        text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        box.rejected.connect(dialog.reject)
        lay = QVBoxLayout(dialog)
        lay.addWidget(text)
        lay.addWidget(box)
        dialog.resize(820, 480)
        dialog.open()

    def _update_buttons(self) -> None:
        info = self.info()
        self.cancel_button.setEnabled(bool(info and info.status in ("starting", "running")))
        self.resume_button.setEnabled(bool(info and info.resumable))
        self.folder_button.setEnabled(bool(info and info.path.is_dir()))
        self.log_button.setEnabled(info is not None)
        busy = "export" in self._workers
        has_model = bool(info and (info.path / "best.pt").is_file() and run_kind(info.path) not in RUN_KINDS)
        self.add_button.setEnabled(has_model and not busy)
        self.export_button.setEnabled(has_model and not busy)
        # written by the run's evaluation (engine.train.run_evaluation): enabled once it finished
        self.review_button.setEnabled(bool(has_model and (info.path / "validation" / "predictions.csv").is_file()))

    # -- closing -----------------------------------------------------------------------------------
    def active_runs(self) -> list[RunInfo]:
        self.refresh_runs()
        return [r for r in self._runs if r.active and r.alive]

    def confirm_close(self) -> bool:
        """Ask what to do with running trainings when the app closes; False = do not close."""
        active = self.active_runs()
        if not active:
            return True
        names = "\n".join(f"• {r.name}" for r in active[:5])
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Training is running")
        box.setText(f"{len(active)} training run(s) are still running:\n{names}")
        box.setInformativeText(
            "Keep them running in the background? MetaScope shows their progress again the next time it opens. "
            "Stopped runs keep their last finished epoch and can be resumed."
        )
        keep = box.addButton("Keep training", QMessageBox.ButtonRole.AcceptRole)
        stop = box.addButton("Stop training", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(keep)
        box.exec()
        clicked = box.clickedButton()
        if clicked is keep:
            return True
        if clicked is stop:
            for r in active:
                self.cancel_run(r.path)
            return True
        return False
