"""Slide-level (MIL) prediction in the slide view: the part of :class:`SlideView` that runs a
``mil_aggregator`` model on the open slide and shows its class probabilities and attention map.

A mixin so the slide view stays one widget with one background run, one overlay and one set of
overlay controls, while this code lives in its own module. It uses the view's ``heatmap_panel``,
``viewer``, ``settings``, ``reader``/``slide_path`` and its worker plumbing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QFileDialog

from gui import heatmap_job as hj
from gui import mil_job as mj
from gui.dialogs import show_error
from gui.widgets.heatmap_overlay import GridGeometry, HeatmapOverlay
from gui.workers import ProcessWorker, Worker


class SlidePredictionMixin:
    """Run slide-level MIL models and show their result (mixed into ``SlideView``)."""

    # provided by SlideView
    heatmap_panel: Any
    viewer: Any
    overview: Any
    settings: Any
    reader: Any
    slide_path: str
    status_message: Any
    heatmap_loaded: Any
    _worker: ProcessWorker | None
    _worker_started: float
    _user_mpp: dict[str, float]

    def _init_prediction(self) -> None:
        self.prediction: Any = None  # engine.mil.predict.SlidePrediction on screen
        # what computes a slide-level prediction in the child process (module-level, picklable)
        self.prediction_job: Any = mj.run_prediction
        self._extractors: dict[str, str] = {}  # aggregator sha256 -> extractor the user pointed to

    # -- model choice ----------------------------------------------------------------------
    def _extractor_for(self, choice: hj.ModelChoice) -> str:
        return self._extractors.get(choice.sha256) or (choice.mil.extractor_path if choice.mil else "")

    def _apply_model_mode(self, choice: hj.ModelChoice | None) -> None:
        """Switch the panel between heatmap and slide-level controls for ``choice``."""
        mil = choice is not None and choice.is_mil
        panel = self.heatmap_panel
        if mil and choice.mil is not None and panel.clinical_form.names != [f.name for f in choice.mil.clinical]:
            panel.clinical_form.set_fields(choice.mil.clinical)
        panel.set_mode(mil)
        self.tabs.setTabText(0, "Prediction" if mil else "Heatmap")  # type: ignore[attr-defined]

    # -- running ---------------------------------------------------------------------------
    def run_prediction(self) -> None:
        """Predict the open slide with the chosen MIL model, in a child process."""
        choice = self._current_choice()  # type: ignore[attr-defined]
        if self.reader is None or choice is None or not choice.is_mil or self.running:  # type: ignore[attr-defined]
            return
        extractor = self._extractor_for(choice)
        if not extractor:
            self._ask_extractor(choice)
            return
        mpp = None
        if self.reader.info.mpp is None:
            mpp = self._ask_mpp()  # type: ignore[attr-defined]
            if mpp is None:
                return
        clinical = self.heatmap_panel.clinical_form.values()
        self._show_result(None)  # type: ignore[attr-defined]
        worker = ProcessWorker(self.prediction_job, self.slide_path, choice.path, extractor, clinical, mpp)
        self._connect_run(worker)  # type: ignore[attr-defined]
        self._worker = worker
        self._worker_started = time.monotonic()
        self.heatmap_panel.set_progress(None, "Finding tissue…")
        self._update_enabled()  # type: ignore[attr-defined]
        worker.start()
        self.status_message.emit(f"Predicting the slide with {choice.label}…", 0)

    def _ask_extractor(self, choice: hj.ModelChoice) -> None:
        """The model's feature extractor is not in the library: ask for the file, then check it."""
        info = choice.mil
        name = info.extractor_name if info is not None else "its feature extractor"
        start = self.settings.get("dialogs/last_model_dir") or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(
            self, f"Find the feature extractor '{name}'", start,  # type: ignore[arg-type]
            "ONNX models (*.onnx);;All files (*)")
        if not path:
            self.status_message.emit(f"{choice.label} needs its feature extractor '{name}' to run", 8000)
            return
        worker = Worker(mj.check_extractor, path, info.extractor_sha256 if info is not None else "")
        worker.signals.finished.connect(lambda p, c=choice: self._on_extractor_checked(c, p))
        worker.signals.failed.connect(self._on_extractor_check_failed)
        self._start_misc(worker)  # type: ignore[attr-defined]

    def _on_extractor_checked(self, choice: hj.ModelChoice, path: str) -> None:
        self._extractors[choice.sha256] = path
        self.settings.set("dialogs/last_model_dir", str(Path(path).parent))
        self.status_message.emit(f"Using the feature extractor {Path(path).name}", 5000)
        self.run_prediction()

    def _on_extractor_check_failed(self, message: str, user_error: bool, details: str) -> None:
        show_error(self, "Not the right feature extractor", message, "" if user_error else details)  # type: ignore[arg-type]

    # -- result ----------------------------------------------------------------------------
    def _show_prediction(self, pred: Any) -> None:
        """Show a slide-level prediction: class bars, summary, attention overlay, top regions."""
        self.prediction = pred
        panel = self.heatmap_panel
        overlay = HeatmapOverlay(pred.attention_grid.copy(),
                                 GridGeometry((float(pred.origin_level0[0]), float(pred.origin_level0[1])),
                                              float(pred.stride_level0), float(pred.tile_size_level0)),
                                 value_label="attention")
        self._apply_overlay_settings(overlay)  # type: ignore[attr-defined]
        self.viewer.set_overlay(overlay)
        self.viewer.set_qc_layer(None)  # the heatmap's QC mask does not describe this prediction
        panel.set_class_probabilities(list(pred.class_names), [float(p) for p in pred.probabilities])
        panel.set_summary_html(mj.prediction_html(pred))
        self._refresh_regions()  # type: ignore[attr-defined]
        self.overview.update()
        self._update_enabled()  # type: ignore[attr-defined]
        self.heatmap_loaded.emit()

    def _clear_prediction(self) -> None:
        self.prediction = None
        self.heatmap_panel.set_class_probabilities(None, None)

    def export_prediction_to(self, folder: str) -> None:
        """Write prediction.json, attention.npy/png and tiles.csv of the prediction on screen."""
        if self.prediction is None:
            return
        worker = Worker(mj.export_prediction, self.prediction, folder)
        worker.signals.finished.connect(self._on_export_finished)  # type: ignore[attr-defined]
        worker.signals.failed.connect(self._on_export_failed)  # type: ignore[attr-defined]
        self.status_message.emit("Exporting the prediction…", 0)
        self._start_misc(worker)  # type: ignore[attr-defined]
