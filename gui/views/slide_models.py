"""The model list and model choice in the slide view: the part of
:class:`~gui.views.slide_view.SlideView` that lists the model library (and the demo/starter
models) in a worker, follows the library folder, describes a model file chosen with Browse, and
switches the panel to the chosen model (its mode and operating threshold).

A mixin (like :mod:`gui.views.slide_mil` and :mod:`gui.views.slide_open`) so the slide view stays
one widget while this code lives in its own module. It uses the view's ``heatmap_panel``,
``settings``, ``_models``, ``_models_watcher``, ``_pending_run_model``, ``running`` and its worker
plumbing, and emits its ``status_message`` and ``models_refreshed`` signals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QFileDialog

from engine.paths import models_dir
from gui import heatmap_job as hj
from gui.dialogs import show_error
from gui.widgets.heatmap_panel import BROWSE
from gui.workers import Worker


class SlideModelsMixin:
    """List, describe and choose the models of the slide view (mixed into ``SlideView``)."""

    # provided by SlideView
    heatmap_panel: Any
    settings: Any
    status_message: Any
    models_refreshed: Any
    running: bool
    _models: dict[str, hj.ModelChoice]
    _models_watcher: Any
    _pending_run_model: str | None
    _start_misc: Any
    _update_enabled: Any
    _try_load_cached: Any
    _run_or_load_cached: Any
    _show_result: Any  # SlideResultMixin
    _apply_model_mode: Any  # SlidePredictionMixin

    def refresh_models(self) -> None:
        """Re-read the model library (and the demo/starter models) in the background."""
        extra = [p for p in self._models if not self._models[p].in_library]
        worker = Worker(hj.list_models, extra)
        worker.signals.finished.connect(self._on_models_listed)
        worker.signals.failed.connect(lambda msg, *_: self.status_message.emit(f"Could not list models: {msg}", 8000))
        self._start_misc(worker)
        folder = models_dir()
        if folder.is_dir() and str(folder) not in self._models_watcher.directories():
            self._models_watcher.addPath(str(folder))

    def _on_models_listed(self, models: list[hj.ModelChoice]) -> None:
        listed = {m.path: m for m in models}
        # models chosen with Browse (or described while the list was read) stay selectable
        for path, old in self._models.items():
            if path not in listed and not old.in_library and Path(path).is_file():
                listed[path] = old
        self._models = listed
        wanted = self._pending_run_model or self.heatmap_panel.current_model() or self.settings.get("heatmap/model")
        self.heatmap_panel.set_models([(m.label, m.path, m.tooltip) for m in listed.values()], wanted)
        current = self._current_choice()
        self.heatmap_panel.model_info.setText(current.description if current else "")
        self._apply_model_mode(current)
        self._update_enabled()
        self.models_refreshed.emit()
        if self._pending_run_model in listed:
            self._start_pending_run()
        else:
            self._try_load_cached()

    def _start_pending_run(self) -> None:
        """The demo journey: once its model is known, show the cached heatmap or compute it."""
        self._pending_run_model = None
        self._run_or_load_cached()

    def select_model(self, path: str) -> None:
        """Choose a model file (adds it to the list if needed)."""
        p = str(Path(path).resolve())
        if p not in self._models:
            worker = Worker(hj.describe_model, p)
            worker.signals.finished.connect(self._on_model_described)
            worker.signals.failed.connect(self._on_model_describe_failed)
            self._start_misc(worker)
            return
        self.heatmap_panel.add_and_select_model(self._models[p].label, p, self._models[p].tooltip)
        self._on_model_selected(p)

    def _on_model_described(self, choice: hj.ModelChoice) -> None:
        self._models[choice.path] = choice
        self.heatmap_panel.add_and_select_model(choice.label, choice.path, choice.tooltip)
        self._on_model_selected(choice.path)
        if self._pending_run_model == choice.path:
            self._start_pending_run()

    def _on_model_describe_failed(self, message: str, user_error: bool, details: str) -> None:
        self._pending_run_model = None
        self.heatmap_panel.set_models([(m.label, m.path, m.tooltip) for m in self._models.values()],
                                      self.settings.get("heatmap/model"))
        show_error(self, "Cannot use this model", message, "" if user_error else details)

    def _on_heatmap_panel_model_changed(self, path: str) -> None:
        if path == BROWSE:
            start = self.settings.get("dialogs/last_model_dir") or str(models_dir())
            chosen, _ = QFileDialog.getOpenFileName(self, "Choose a model", start, "ONNX models (*.onnx);;All files (*)")
            if chosen:
                self.settings.set("dialogs/last_model_dir", str(Path(chosen).parent))
                self.select_model(chosen)
            else:
                self.heatmap_panel.set_models([(m.label, m.path, m.tooltip) for m in self._models.values()],
                                              self.settings.get("heatmap/model"))
            return
        self._on_model_selected(path)

    def _on_model_selected(self, path: str) -> None:
        self.settings.set("heatmap/model", path)
        choice = self._models.get(path)
        self.heatmap_panel.model_info.setText(choice.description if choice else "")
        self._apply_model_mode(choice)
        if choice is not None and not choice.is_mil:
            # the display threshold starts at the model's operating threshold (the one its
            # heatmaps, lesions and `metascope heatmap` use); the slider still moves it
            panel = self.heatmap_panel
            panel.set_overlay_settings(panel.colormap, panel.opacity, choice.threshold, panel.overlay_visible)
        self._update_enabled()
        if not self.running:
            self._show_result(None)
            self._try_load_cached()

    def _current_choice(self) -> hj.ModelChoice | None:
        return self._models.get(self.heatmap_panel.current_model())
