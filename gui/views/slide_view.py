"""SlideView: slide review with a live heatmap overlay (viewer, overview, heatmap and properties)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QFileSystemWatcher, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from engine.errors import MetaScopeError
from engine.jobs import ProgressEvent
from engine.slides.base import SlideReader
from gui import heatmap_job as hj
from gui.dialogs import confirm, show_error, show_warning
from gui.icons import icon
from gui.settings import Settings
from gui.views.slide_mil import SlidePredictionMixin
from gui.views.slide_models import SlideModelsMixin
from gui.views.slide_open import SlideOpeningMixin
from gui.views.slide_result import SlideResultMixin
from gui.widgets.heatmap_overlay import GridGeometry, HeatmapOverlay
from gui.widgets.heatmap_panel import HeatmapPanel, format_eta
from gui.widgets.lesion_panel import LesionOutlines, LesionPanel
from gui.widgets.overview_map import OverviewMap
from gui.widgets.properties_panel import PropertiesPanel
from gui.widgets.slide_viewer import SlideViewer
from gui.widgets.tiles import TileScheduler, rgb_to_qimage
from gui.workers import ProcessWorker, Worker

#: Part of the stain check's refusal (engine.slides.qc_summary.stain_warnings) naming the override.
STAIN_OVERRIDE_HINT = "use --ignore-stain"

SLIDE_FILTER = (
    "Slides and images (*.svs *.tif *.tiff *.ndpi *.mrxs *.scn *.bif *.vms *.vmu *.svslide *.dcm "
    "*.png *.jpg *.jpeg *.bmp);;All files (*)"
)
OVERLAY_REPAINT_MS = 100  # live overlay refresh while batches arrive (~10/s)
SIDE_PANEL_WIDTH = 340
EMPTY_TEXT = "Open a slide with File > Open, or drop a slide file here."


class SlideView(SlideOpeningMixin, SlidePredictionMixin, SlideModelsMixin, SlideResultMixin, QWidget):
    """The "load a slide and see a heatmap" journey in one view (and slide-level MIL prediction).

    Split by responsibility into mixins: opening slides (:mod:`gui.views.slide_open`), the model
    list and choice (:mod:`gui.views.slide_models`), the result on screen: overlay, regions,
    lesions, QC mask, hover text (:mod:`gui.views.slide_result`), and slide-level prediction
    (:mod:`gui.views.slide_mil`); the heatmap run, export and label images stay here.
    """

    status_message = Signal(str, int)
    slide_opened = Signal(str)  # path ("" when closed)
    slide_open_failed = Signal(str, str)  # path, message (after the error dialog)
    hover_text_changed = Signal(str)
    zoom_text_changed = Signal(str)
    heatmap_finished = Signal()
    heatmap_cancelled = Signal()
    heatmap_failed = Signal(str)
    heatmap_loaded = Signal()  # a result (computed or cached) is on screen
    heatmap_batch = Signal(int)  # a running heatmap's batch reached the overlay: tiles done so far
    models_refreshed = Signal()
    export_finished = Signal(str)

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.reader: SlideReader | None = None
        self.slide_path: str = ""
        self.result: hj.HeatmapData | None = None
        self._models: dict[str, hj.ModelChoice] = {}
        self._worker: ProcessWorker | None = None
        self._worker_started = 0.0
        self._misc_workers: set[Worker] = set()
        # what computes a heatmap in the child process (a module-level, picklable function)
        self.heatmap_job: Any = hj.run_heatmap
        self._init_prediction()
        self._init_opening(EMPTY_TEXT)
        self._pending_run_model: str | None = None  # run a heatmap as soon as this model is listed
        self._user_mpp: dict[str, float] = {}  # resolution typed in for slides that record none
        self._regions: list[tuple[float, int, int]] = []

        threads = max(1, int(settings.get("viewer/tile_threads")))
        cache_mb = max(32, int(settings.get("viewer/tile_cache_mb")))
        self.viewer = SlideViewer(TileScheduler(threads, cache_mb << 20))
        self.overview = OverviewMap(self.viewer)
        self.heatmap_panel = HeatmapPanel()
        self.properties = PropertiesPanel()
        # lesions (largest first, click to go there) under the slide result; outlines over the slide
        self.lesion_panel = LesionPanel()
        panel_layout = self.heatmap_panel.layout()
        panel_layout.insertWidget(panel_layout.indexOf(self.heatmap_panel.regions_box), self.lesion_panel)
        self.lesion_outlines = LesionOutlines(self.viewer)
        self._lesion_summary: dict[str, Any] | None = None
        self._build_actions()
        self._build_layout()

        self.heatmap_panel.set_overlay_settings(
            settings.get("heatmap/colormap"), settings.get("heatmap/opacity"),
            settings.get("heatmap/threshold"), settings.get("heatmap/visible"),
        )
        self.heatmap_panel.run_requested.connect(self.run_heatmap)
        self.heatmap_panel.cancel_requested.connect(self.cancel_heatmap)
        self.heatmap_panel.model_changed.connect(self._on_heatmap_panel_model_changed)
        self.heatmap_panel.overlay_settings_changed.connect(self._on_heatmap_panel_overlay_settings_changed)
        self.heatmap_panel.region_activated.connect(self._on_heatmap_panel_region_activated)
        self.lesion_panel.lesion_activated.connect(self._on_lesion_panel_lesion_activated)
        self.properties.associated_requested.connect(self.show_associated_images)
        self.viewer.hovered.connect(self._on_viewer_hovered)
        self.viewer.view_changed.connect(self._on_viewer_view_changed)
        self.viewer.tile_failed.connect(self._on_viewer_tile_failed)

        self._repaint_timer = QTimer(self)
        self._repaint_timer.setInterval(OVERLAY_REPAINT_MS)
        self._repaint_timer.timeout.connect(self._on_repaint_timer_timeout)
        self._overlay_dirty = False
        self._tile_error_shown = False

        self._models_watcher = QFileSystemWatcher(self)
        self._models_watcher.directoryChanged.connect(self.refresh_models)
        self._update_enabled()

    # -- construction ----------------------------------------------------------------------
    def _action(self, icon_name: str, text: str, slot: Any, shortcut: Any = None, tip: str = "") -> QAction:
        action = QAction(icon(icon_name) if icon_name else icon("info"), text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setToolTip(tip)
            action.setStatusTip(tip)
        action.triggered.connect(slot)
        return action

    def _build_actions(self) -> None:
        self.open_action = self._action("open", "Open Slide…", self.open_dialog, tip="Open a slide file")
        self.zoom_in_action = self._action("zoom-in", "Zoom In", lambda: self.viewer.zoom_by(1.5, animate=True),
                                           QKeySequence.StandardKey.ZoomIn)
        self.zoom_out_action = self._action("zoom-out", "Zoom Out",
                                            lambda: self.viewer.zoom_by(1 / 1.5, animate=True),
                                            QKeySequence.StandardKey.ZoomOut)
        self.fit_action = self._action("zoom-fit", "Fit Slide", self.viewer.fit, "Ctrl+0",
                                       "Show the whole slide")
        self.one_to_one_action = self._action("zoom-1to1", "Actual Pixels (1:1)", self.viewer.one_to_one, "Ctrl+1",
                                              "One screen pixel per scanned pixel")
        self.overlay_action = self._action("heatmap", "Show Heatmap Overlay", self._on_overlay_action_toggled, "H",
                                           "Show or hide the heatmap over the slide")
        self.overlay_action.setCheckable(True)
        self.overlay_action.setChecked(self.heatmap_panel.overlay_visible)
        self.qc_action = self._action("", "Show QC Mask", self._on_qc_action_toggled, "Q",
                                      "Show or hide the slide-QC mask: pen marks, folds, bubbles, blur "
                                      "(hatched) and unreadable tiles (solid); hover a tile for its reason")
        self.qc_action.setCheckable(True)
        self.qc_action.setChecked(True)
        self.export_action = self._action("export", "Export Heatmap…", self.export_dialog, "Ctrl+E",
                                          "Save the overlay image, GeoJSON (QuPath) and CSV of the heatmap")
        self.associated_action = self._action("label", "Show Label and Macro Images…", self.show_associated_images,
                                              tip="May show patient identifiers")

    def view_actions(self) -> list[QAction | None]:
        """Actions for the View menu (None marks a separator)."""
        return [self.zoom_in_action, self.zoom_out_action, self.fit_action, self.one_to_one_action, None,
                self.overlay_action, self.qc_action, None, self.associated_action]

    def _build_layout(self) -> None:
        toolbar = QToolBar("Slide")
        toolbar.setIconSize(toolbar.iconSize() * 0.9)
        toolbar.setMovable(False)
        for a in (self.open_action, None, self.zoom_out_action, self.zoom_in_action, self.fit_action,
                  self.one_to_one_action, None, self.overlay_action, self.export_action):
            if a is None:
                toolbar.addSeparator()
            else:
                toolbar.addAction(a)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(8, 8, 8, 8)
        overview_box = QGroupBox("Overview")
        ob = QVBoxLayout(overview_box)
        ob.setContentsMargins(6, 6, 6, 6)
        ob.addWidget(self.overview)
        side_layout.addWidget(overview_box)
        self.tabs = QTabWidget()
        heat_scroll = QScrollArea()
        heat_scroll.setWidgetResizable(True)
        heat_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        heat_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        heat_page = QWidget()
        hp = QVBoxLayout(heat_page)
        hp.setContentsMargins(6, 8, 6, 6)
        hp.addWidget(self.heatmap_panel)
        heat_scroll.setWidget(heat_page)
        self.tabs.addTab(heat_scroll, icon("heatmap"), "Heatmap")
        props_page = QWidget()
        pp = QVBoxLayout(props_page)
        pp.setContentsMargins(6, 8, 6, 6)
        pp.addWidget(self.properties)
        self.tabs.addTab(props_page, icon("info"), "Properties")
        side_layout.addWidget(self.tabs, 1)
        side.setMinimumWidth(300)

        self.splitter = QSplitter()
        self.splitter.addWidget(self.viewer)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setCollapsible(0, False)
        self.splitter.setSizes([1000, SIDE_PANEL_WIDTH])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(toolbar)
        layout.addWidget(self.splitter, 1)

    def _update_enabled(self) -> None:
        has_slide = self.reader is not None
        for a in (self.zoom_in_action, self.zoom_out_action, self.fit_action, self.one_to_one_action):
            a.setEnabled(has_slide)
        self.export_action.setEnabled((self.result is not None or self.prediction is not None) and not self.running)
        self.associated_action.setEnabled(has_slide and bool(self.reader and self.reader.info.associated_images))
        self.heatmap_panel.set_running(self.running)
        if not has_slide:
            self.heatmap_panel.run_button.setEnabled(False)

    @property
    def running(self) -> bool:
        return self._worker is not None

    # -- background helpers ----------------------------------------------------------------
    def _start_misc(self, worker: Worker) -> Worker:
        """Run a short job on the global pool, keeping it referenced until it ends."""
        self._misc_workers.add(worker)
        for sig in (worker.signals.finished, worker.signals.failed, worker.signals.cancelled):
            sig.connect(lambda *_a, w=worker: self._misc_workers.discard(w))
        QThreadPool.globalInstance().start(worker)
        return worker

    # -- opening slides --------------------------------------------------------------------
    def open_dialog(self) -> None:
        start = self.settings.get("dialogs/last_open_dir") or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open Slide", start, SLIDE_FILTER)
        if path:
            self.settings.set("dialogs/last_open_dir", str(Path(path).parent))
            self.open_slide(path)

    def _show_slide(self, p: str, reader: SlideReader) -> None:
        """Show a slide read by :meth:`open_slide` (a damaged file gave a dialog there instead)."""
        self.cancel_heatmap(wait=True)
        self.reader = reader
        self.slide_path = p
        self._tile_error_shown = False
        self.viewer.set_slide(reader)
        self.properties.set_info(reader.info)
        self._show_result(None)
        self._update_enabled()
        w, h = reader.info.dimensions
        self.status_message.emit(f"Opened {Path(p).name} ({w:,} x {h:,} px, {reader.info.level_count} levels)", 6000)
        self._try_load_cached()
        self.slide_opened.emit(p)

    def close_slide(self) -> None:
        self._drop_pending_open()
        self.cancel_heatmap(wait=True)
        self.reader = None
        self.slide_path = ""
        self.viewer.set_slide(None)
        self.properties.set_info(None)
        self._show_result(None)
        self._update_enabled()
        self.slide_opened.emit("")

    # -- heatmap ---------------------------------------------------------------------------
    def _try_load_cached(self, announce_missing: bool = True) -> bool:
        """Show the cached heatmap of (slide, model) if there is one; True when shown."""
        choice = self._current_choice()
        if self.reader is None or choice is None or choice.is_mil or self.running:
            return False
        try:
            data = hj.load_cached(self.slide_path, choice, self._user_mpp.get(self.slide_path))
        except MetaScopeError as exc:
            self.status_message.emit(f"Ignoring an unreadable cached heatmap: {exc}", 8000)
            return False
        if data is None:
            if announce_missing:
                self.heatmap_panel.reset_progress("No heatmap for this slide and model yet. Press Run Heatmap.")
            return False
        self._show_result(data)
        self.heatmap_panel.reset_progress(f"Loaded from cache ({data.n_tiles:,} tiles, computed earlier).")
        self.heatmap_panel.progress.setValue(1000)
        self.status_message.emit("Heatmap loaded from cache", 5000)
        return True

    def start_demo(self) -> None:
        """First start: generate (once) the demo slide and model, then open them and run."""
        from engine.demo import ensure_demo_assets

        self.refresh_models()
        self.viewer.empty_text = "Preparing the demo slide and model (first start only)…"
        self.viewer.update()
        self.status_message.emit("Preparing the demo slide…", 0)

        def job(progress: Any, cancel: Any, partial: Any) -> tuple[Path, Path]:
            return ensure_demo_assets(progress=progress, cancel=cancel)

        worker = Worker(job)
        worker.signals.finished.connect(self._on_demo_assets_ready)
        worker.signals.failed.connect(self._on_demo_assets_failed)
        self._start_misc(worker)

    def _on_demo_assets_ready(self, paths: tuple[Path, Path]) -> None:
        self.viewer.empty_text = EMPTY_TEXT
        self.status_message.emit("Demo slide ready", 4000)
        self.run_demo(str(paths[0]), str(paths[1]))

    def _on_demo_assets_failed(self, message: str, user_error: bool, details: str) -> None:
        self.viewer.empty_text = EMPTY_TEXT
        self.viewer.update()
        show_error(self, "Cannot prepare the demo", message, "" if user_error else details)

    def _run_or_load_cached(self) -> None:
        if not self._try_load_cached():
            self.run_heatmap()

    def _ask_mpp(self) -> float | None:
        """The resolution of a slide that records none, asked once per slide; None if declined."""
        if self.slide_path in self._user_mpp:
            return self._user_mpp[self.slide_path]
        value, ok = QInputDialog.getDouble(
            self, "Slide resolution needed",
            "This slide does not record its resolution, which the model needs to read tiles at the right\n"
            "magnification. Enter the microns per pixel of the full-resolution image\n"
            "(about 0.25 for a 40x scan, 0.5 for 20x):", 0.5, 0.01, 100.0, 4)
        if not ok:
            return None
        self._user_mpp[self.slide_path] = value
        return value

    def run_heatmap(self, ignore_stain: bool = False) -> None:
        """Compute the heatmap of the open slide with the chosen model, in a child process (for a
        slide-level model: predict the slide, see :meth:`run_prediction`). ``ignore_stain``: the
        user chose to analyse a non-H&E slide with a model that needs H&E."""
        choice = self._current_choice()
        if self.reader is None or choice is None or self.running:
            return
        if choice.is_mil:
            self.run_prediction()
            return
        mpp = None
        if self.reader.info.mpp is None:
            mpp = self._ask_mpp()
            if mpp is None:
                return
        self._show_result(None)
        extra = {"ignore_stain": True} if ignore_stain else {}
        worker = ProcessWorker(self.heatmap_job, self.slide_path, choice, mpp, **extra)
        self._connect_run(worker)
        self._worker = worker
        self._worker_started = time.monotonic()
        self.heatmap_panel.set_progress(None, "Finding tissue…")
        self._update_enabled()
        self._repaint_timer.start()
        worker.start()
        self.status_message.emit(f"Computing heatmap with {choice.label}…", 0)

    def _connect_run(self, worker: ProcessWorker) -> None:
        worker.signals.progress.connect(self._on_worker_progress)
        worker.signals.partial.connect(self._on_worker_partial)
        worker.signals.finished.connect(self._on_worker_finished)
        worker.signals.failed.connect(self._on_worker_failed)
        worker.signals.cancelled.connect(self._on_worker_cancelled)

    def cancel_heatmap(self, wait: bool = False) -> None:
        """Stop a running heatmap; with ``wait`` block until its thread has returned."""
        if self._worker is None:
            return
        self._worker.cancel()
        self.heatmap_panel.progress_label.setText("Cancelling…")
        self.heatmap_panel.cancel_button.setEnabled(False)
        if wait:
            self._worker.wait()
            # the terminal signal is still queued; apply its effect now so a new slide starts clean
            self._end_run()
            self._show_result(None)

    def _end_run(self) -> None:
        self._worker = None
        self._repaint_timer.stop()
        self._update_enabled()

    def _on_worker_progress(self, event: ProgressEvent) -> None:
        if self.sender() is not (self._worker.signals if self._worker else None):
            return
        frac = event.fraction
        counting = event.stage in ("heatmap", "inference", "features") and frac is not None and bool(event.total)
        text = event.message or event.stage.capitalize()
        if counting:
            eta = event.metrics.get("eta_s") if event.metrics else None
            if eta is None and frac is not None and frac > 0.02:
                elapsed = time.monotonic() - self._worker_started
                eta = elapsed * (1 - frac) / frac
            text = f"{event.step:,} / {event.total:,} tiles · {format_eta(eta)}"
            if event.message:
                text += f" · {event.message}"
        elif event.stage == "tissue":
            text = "Finding tissue…"
        elif event.stage == "tiling":
            text = f"Planning tiles: {event.message}" if event.message else "Planning tiles…"
        elif event.stage == "aggregate":
            text = "Scoring the slide…"
        self.heatmap_panel.set_progress(frac if counting else None, text)

    def _on_worker_partial(self, chunk: object) -> None:
        if self.sender() is not (self._worker.signals if self._worker else None):
            return  # a cancelled run's last batches
        if isinstance(chunk, hj.HeatmapStarted):
            grid = np.full(chunk.shape, np.nan, dtype=np.float32)
            overlay = HeatmapOverlay(grid, GridGeometry(chunk.origin_xy, chunk.stride, chunk.tile_size))
            self._apply_overlay_settings(overlay)
            self.viewer.set_overlay(overlay)
            self.viewer.set_qc_layer(None)  # the new run's QC comes with its result
            self.overview.update()
        elif isinstance(chunk, hj.HeatmapBatch) and self.viewer.overlay is not None:
            self.viewer.overlay.update_cells(chunk.rows, chunk.cols, chunk.probs)
            self._overlay_dirty = True
            self.heatmap_batch.emit(self.viewer.overlay.analysed_count())

    def _on_repaint_timer_timeout(self) -> None:
        if self._overlay_dirty:
            self._overlay_dirty = False
            self.viewer.update()
            self.overview.update()

    def _on_worker_finished(self, data: Any) -> None:
        self._end_run()
        secs = time.monotonic() - self._worker_started
        if isinstance(data, hj.HeatmapData):
            self._show_result(data)
            self.heatmap_panel.set_progress(1.0, f"Done: {data.n_tiles:,} tiles in {secs:.1f} s.")
            self.status_message.emit(f"Heatmap done in {secs:.1f} s", 8000)
        else:
            self._show_prediction(data)
            self.heatmap_panel.set_progress(1.0, f"Done: {int(data.attention.size):,} tiles in {secs:.1f} s.")
            self.status_message.emit(f"Slide predicted as {data.predicted_class} in {secs:.1f} s", 8000)
        self.heatmap_finished.emit()

    def _on_worker_failed(self, message: str, user_error: bool, details: str) -> None:
        self._end_run()
        self._show_result(None)
        mil = self.heatmap_panel.mil_mode
        self.heatmap_panel.reset_progress("The prediction could not be made." if mil
                                          else "The heatmap could not be computed.")
        self.heatmap_failed.emit(message)
        title = "Cannot run this model on this slide" if user_error else ("Prediction failed" if mil
                                                                          else "Heatmap failed")
        if user_error and not mil and STAIN_OVERRIDE_HINT in message:
            # the stain check refused the slide for an H&E-only model: the user may overrule it
            text = message.replace(f" ({STAIN_OVERRIDE_HINT} to analyse it anyway)", "")
            if confirm(self, "Not an H&E slide", f"{text}.\n\nAnalyse it anyway? The heatmap may be meaningless.",
                       ok_text="Analyse Anyway"):
                self.run_heatmap(ignore_stain=True)
            return
        show_error(self, title, message, "" if user_error else details)

    def _on_worker_cancelled(self) -> None:
        if self._worker is None:
            return  # already cleaned up by cancel_heatmap(wait=True)
        self._end_run()
        self._show_result(None)
        self.heatmap_panel.reset_progress("Cancelled. Nothing was saved.")
        self.status_message.emit("Prediction cancelled" if self.heatmap_panel.mil_mode else "Heatmap cancelled", 5000)
        self.heatmap_cancelled.emit()
        self._try_load_cached(announce_missing=False)

    # -- viewer feedback -------------------------------------------------------------------
    def _on_viewer_view_changed(self) -> None:
        self.zoom_text_changed.emit(self.viewer.magnification_text() if self.reader is not None else "")

    def _on_viewer_tile_failed(self, message: str) -> None:
        if not self._tile_error_shown:
            self._tile_error_shown = True
            self.status_message.emit(f"Part of this slide could not be read: {message}", 0)

    # -- export ----------------------------------------------------------------------------
    def export_dialog(self) -> None:
        if self.result is None and self.prediction is None:
            return
        start = self.settings.get("dialogs/last_export_dir") or str(Path.home())
        what = "prediction" if self.prediction is not None else "heatmap"
        folder = QFileDialog.getExistingDirectory(self, f"Export {what} to folder", start)
        if folder:
            self.settings.set("dialogs/last_export_dir", folder)
            self.export_to(folder)

    def export_to(self, folder: str | os.PathLike[str]) -> None:
        """Write overlay PNG, GeoJSON and CSV of the current result into ``folder/<slide name>/``
        (for a slide-level prediction: its JSON, attention map and tile CSV)."""
        if self.prediction is not None:
            self.export_prediction_to(str(folder))
            return
        if self.result is None:
            return
        worker = Worker(hj.export_result, self.result, str(folder))
        worker.signals.finished.connect(self._on_export_finished)
        worker.signals.failed.connect(self._on_export_failed)
        self.status_message.emit("Exporting heatmap…", 0)
        self._start_misc(worker)

    def _on_export_finished(self, out_dir: str) -> None:
        self.status_message.emit(f"Exported to {out_dir}", 10000)
        self.export_finished.emit(out_dir)

    def _on_export_failed(self, message: str, user_error: bool, details: str) -> None:
        self.status_message.emit("Export failed", 8000)
        show_error(self, "Cannot export the result", message, "" if user_error else details)

    # -- label and macro images ------------------------------------------------------------
    def show_associated_images(self) -> None:
        """Show label/macro images after an explicit warning (they can identify the patient)."""
        if self.reader is None or not self.reader.info.associated_images:
            return
        if not confirm(
            self, "Show label and macro images?",
            "Label and macro images can show patient names, record numbers or barcodes.\n\n"
            "Show them only if you are allowed to see this information. They are never exported.",
            "Show Images",
        ):
            return
        dialog = QDialog(self)
        dialog.setWindowTitle(f"Label and macro images — {Path(self.slide_path).name}")
        row = QHBoxLayout(dialog)
        for name in self.reader.info.associated_images:
            try:
                rgb = self.reader.associated_image(name)
            except (KeyError, MetaScopeError) as exc:
                show_warning(self, "Cannot read image", f"{name}: {exc}")
                continue
            box = QGroupBox(name)
            bl = QVBoxLayout(box)
            label = QLabel()
            pix = QPixmap.fromImage(rgb_to_qimage(rgb))
            label.setPixmap(pix.scaled(360, 360, Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation))
            bl.addWidget(label)
            row.addWidget(box)
        dialog.exec()

    # -- shutdown --------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop background work and release the slide (window closing)."""
        self._drop_pending_open()
        self.cancel_heatmap(wait=True)
        QThreadPool.globalInstance().waitForDone(10000)
        self.viewer.set_slide(None)  # retires the reader: closed once no tile read uses it
        self.viewer.scheduler.shutdown()
        self.reader = None

