"""Validation results of a patch-classification run in the Training view: the part of
:class:`~gui.views.training_view.TrainingView` that evaluates the run's best model (in a
worker), shows its metrics and plots, and exports it to ONNX or adds it to the model library.

A mixin so the Training view stays one widget with one set of workers, while this code lives in
its own module. It uses the view's ``_selected``, ``_evaluations``, ``_shown_evaluation``,
``_workers``, ``info()``, ``history()``, ``_update_buttons()``, ``exporter`` and its signals.
Split out of :mod:`gui.views.training_view`, which re-exports the module-level names.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from engine.runs import RunHistory, RunInfo, evaluate_run, load_evaluation
from gui.modalities import RUN_KINDS, run_kind
from gui.widgets.plot_canvas import PlotCanvas, draw_results
from gui.wizard.common import MessageLabel
from gui.workers import Worker, start_worker


def _evaluate(run_dir: Path, progress: Any = None, cancel: Any = None, partial: Any = None) -> dict[str, Any]:
    return evaluate_run(run_dir, progress=progress, cancel=cancel)


def _export(
    run_dir: Path, out: Path, name: str, exporter: str, progress: Any = None, cancel: Any = None, partial: Any = None
) -> Any:
    """Export the run's best model to ``out`` with its model card beside it (``MODEL.md``)."""
    from engine.export.onnx_export import export_onnx
    from engine.modelcard import write_model_card

    report = export_onnx(run_dir, out, progress=progress, name=name, exporter=exporter)
    write_model_card(run_dir, out, name=name)
    return report


def _export_and_add(
    run_dir: Path,
    name: str,
    card: str,
    exporter: str,
    progress: Any = None,
    cancel: Any = None,
    partial: Any = None,
) -> Any:
    """Export the run's best model into the run folder and add it to the model library, each
    package with its model card beside it."""
    from engine.export.onnx_export import export_onnx
    from engine.library import ModelLibrary
    from engine.modelcard import write_model_card

    out = run_dir / "model.onnx"
    export_onnx(run_dir, out, progress=progress, name=name, exporter=exporter)
    write_model_card(run_dir, out, card=card)
    entry = ModelLibrary().add(out)
    write_model_card(run_dir, entry.path, card=card)
    return entry


def model_card(info: RunInfo, history: RunHistory, evaluation: dict[str, Any] | None) -> str:
    """The run's Markdown model card (:func:`engine.modelcard.model_card`, as the CLI writes it)."""
    from engine.modelcard import model_card as card

    return card(info.path, name=info.name, history=history, evaluation=evaluation)


def _model_stamp(run: Path, evaluation: dict[str, Any]) -> int | None:
    try:
        return (run / str(evaluation.get("model_file", "best.pt"))).stat().st_mtime_ns
    except OSError:
        return None


def _fmt_ci(value: float, ci: list[float] | None) -> str:
    if ci and len(ci) == 2 and all(v == v for v in ci):
        return f"<b>{value:.3f}</b> <span style='color:#666'>(95% CI {ci[0]:.3f}–{ci[1]:.3f})</span>"
    return f"<b>{value:.3f}</b>"


def metrics_html(evaluation: dict[str, Any]) -> str:
    """The validation metrics with confidence intervals as an HTML table."""
    if not evaluation:
        return ""
    m, ci = evaluation["metrics"], evaluation.get("ci", {})
    names = evaluation.get("class_names", [])
    pos = names[evaluation.get("positive_class", 1)] if names else "positive"
    rows = [
        ("AUC", _fmt_ci(m["auc"], ci.get("auc"))),
        ("Accuracy", _fmt_ci(m["accuracy"], ci.get("accuracy"))),
        (f"Sensitivity ({html.escape(pos)})", _fmt_ci(m["sensitivity"], ci.get("sensitivity"))),
        ("Specificity", _fmt_ci(m["specificity"], ci.get("specificity"))),
        ("F1", f"<b>{m['f1']:.3f}</b>"),
    ]
    body = "".join(f"<tr><td style='padding:1px 12px 1px 0'>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return (
        f"<table>{body}</table><div style='color:#666'>{evaluation.get('n_val', m.get('n'))} validation patches, "
        f"best epoch {evaluation.get('epoch')}, {html.escape(str(evaluation.get('split', '')))} split</div>"
    )


class TrainingResultsMixin:
    """Evaluate, show, export and add a patch run's best model (mixed into ``TrainingView``)."""

    # provided by TrainingView
    _selected: Path | None
    _evaluations: dict[Path, dict[str, Any]]
    _shown_evaluation: Path | None
    _workers: dict[str, Worker]
    exporter: str
    library_changed: Any
    review_patches_requested: Any
    modality_results: Any
    info: Any
    history: Any
    isVisible: Any
    _update_buttons: Any

    def _build_results_box(self) -> None:
        """The "Validation results" group: metrics, ROC/confusion plot, export buttons."""
        self.results_box = QGroupBox("Validation results (best epoch)")
        self.metrics_label = QLabel()
        self.metrics_label.setTextFormat(Qt.TextFormat.RichText)
        self.metrics_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.results_plot = PlotCanvas(min_height=240)
        self.add_button = QPushButton("Add to model library")
        self.add_button.setToolTip(
            "Export the best model to ONNX (verified against PyTorch) and add it to the model library; "
            "it is then selectable in the slide viewer"
        )
        self.add_button.clicked.connect(self._on_add_clicked)
        self.export_button = QPushButton("Export to ONNX…")
        self.export_button.setToolTip("Save the best model as a self-describing ONNX model package")
        self.export_button.clicked.connect(self._on_export_clicked)
        self.review_button = QPushButton("Review patches")
        self.review_button.setToolTip("The validation patches in the Patch review view, false positives and negatives first")
        self.review_button.clicked.connect(self._on_review_clicked)
        self.result_message = MessageLabel()
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.review_button)
        buttons.addStretch(1)
        rl = QVBoxLayout(self.results_box)
        rl.addWidget(self.metrics_label)
        rl.addWidget(self.results_plot)
        rl.addLayout(buttons)
        rl.addWidget(self.result_message)

    # -- results -----------------------------------------------------------------------------------
    def _show_results(self, info: RunInfo, h: RunHistory) -> None:
        if run_kind(info.path) in RUN_KINDS:
            # metrics, plots and model are files of the run folder: no evaluation to compute here
            self.results_box.setVisible(False)
            done = info.status == "finished" or (info.path / "metrics.json").is_file()
            self.modality_results.setVisible(done)
            if done:
                self.modality_results.show_run(info.path)
            return
        self.modality_results.setVisible(False)
        finished = info.status == "finished" or (
            info.status in ("cancelled", "crashed") and (info.path / "best.pt").is_file()
        )
        self.results_box.setVisible(finished)
        if not finished:
            return
        cached = self._evaluations.get(info.path)
        if cached and _model_stamp(info.path, cached) != cached.get("model_mtime_ns"):
            # evaluated before the run was resumed: its best model changed since
            del self._evaluations[info.path]
            self._shown_evaluation = None
        if info.path not in self._evaluations:
            saved = load_evaluation(info.path)
            if saved is not None:
                self._evaluations[info.path] = saved
        if info.path in self._evaluations:
            if self._shown_evaluation != info.path:
                self._shown_evaluation = info.path
                evaluation = self._evaluations[info.path]
                if evaluation:
                    self.metrics_label.setText(metrics_html(evaluation))
                    draw_results(self.results_plot, evaluation)
            return
        key = f"evaluate:{info.path}"
        if key in self._workers or not self.isVisible():
            return  # evaluating imports torch: only for a run the user looks at
        self.metrics_label.setText("<i>Evaluating the best model on the validation patches…</i>")
        self.results_plot.message("Evaluating…")
        worker = Worker(_evaluate, info.path)
        worker.signals.finished.connect(lambda result, p=info.path: self._on_evaluation_finished(p, result))
        worker.signals.failed.connect(lambda msg, _u, _tb, p=info.path: self._on_evaluation_failed(p, msg))
        self._workers[key] = worker
        start_worker(worker)

    def _on_evaluation_finished(self, run: Path, result: dict[str, Any]) -> None:
        self._workers.pop(f"evaluate:{run}", None)
        if load_evaluation(run) is None:
            return  # the run was resumed meanwhile: its best model changed; evaluated again later
        self._evaluations[run] = result
        if run == self._selected:
            self._shown_evaluation = run
            self.metrics_label.setText(metrics_html(result))
            draw_results(self.results_plot, result)
            self._update_buttons()  # the validation patches are now reviewable

    def _on_evaluation_failed(self, run: Path, message: str) -> None:
        self._workers.pop(f"evaluate:{run}", None)
        # remembered so the timer does not start it again and again
        self._evaluations[run] = {}
        if run == self._selected:
            self._shown_evaluation = run
            self.metrics_label.setText(f"<span style='color:#b00020'>Evaluation failed: {html.escape(message)}</span>")
            self.results_plot.message("No evaluation")

    def evaluation(self, run: Path | None = None) -> dict[str, Any] | None:
        return self._evaluations.get(run or self._selected) if (run or self._selected) else None

    def _on_review_clicked(self) -> None:
        info = self.info()
        if info is not None:
            self.review_patches_requested.emit(str(info.path))

    def _on_add_clicked(self) -> None:
        info = self.info()
        if info is None:
            return
        h = self.history() or RunHistory()
        card = model_card(info, h, self._evaluations.get(info.path) or None)
        self._run_export(
            Worker(_export_and_add, info.path, info.name, card, self.exporter), "Exporting and adding to the library…"
        )

    def _on_export_clicked(self) -> None:
        info = self.info()
        if info is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export model", f"{info.name}.onnx", "ONNX models (*.onnx)")
        if path:
            if not path.lower().endswith(".onnx"):
                path += ".onnx"
            self._run_export(Worker(_export, info.path, Path(path), info.name, self.exporter), "Exporting to ONNX…")

    def _run_export(self, worker: Worker, text: str) -> None:
        if "export" in self._workers:
            return
        self.add_button.setEnabled(False)
        self.export_button.setEnabled(False)
        self.result_message.show_message(text, "info")
        worker.signals.progress.connect(lambda ev: self.result_message.show_message(f"{text} {ev.message}", "info"))
        worker.signals.finished.connect(self._on_export_finished)
        worker.signals.failed.connect(self._on_export_failed)
        self._workers["export"] = worker
        start_worker(worker)

    def _on_export_finished(self, result: Any) -> None:
        self._workers.pop("export", None)
        self._update_buttons()
        if hasattr(result, "sha256") and hasattr(result, "metadata") and not hasattr(result, "max_abs_diff"):
            self.result_message.show_message(
                f"✓ Added “{result.name}” to the model library ({result.path.name}); it can be picked in the slide "
                "viewer now.",
                "ok",
            )
            self.library_changed.emit()
        else:
            self.result_message.show_message(
                f"✓ Exported {result.path} (verified: max difference to PyTorch {result.max_abs_diff:.1e}).", "ok"
            )

    def _on_export_failed(self, message: str, _user: bool, _tb: str) -> None:
        self._workers.pop("export", None)
        self._update_buttons()
        self.result_message.show_message(f"Export failed: {message}", "error")
