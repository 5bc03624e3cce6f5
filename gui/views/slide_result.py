"""The result on screen in the slide view: the part of :class:`~gui.views.slide_view.SlideView`
that shows a heatmap (or clears it) with its overlay settings, its region list, its lesions
(listed and outlined), its slide-QC mask and warnings, and the text under the cursor.

A mixin (like :mod:`gui.views.slide_mil` and :mod:`gui.views.slide_open`) so the slide view stays
one widget with one overlay, while this code lives in its own module. It uses the view's
``viewer``, ``overview``, ``heatmap_panel``, ``lesion_panel``, ``lesion_outlines``,
``overlay_action``, ``qc_action``, ``settings``, ``result``, ``prediction``, ``_regions`` and
``_lesion_summary``, and emits its ``status_message``, ``heatmap_loaded`` and
``hover_text_changed`` signals.
"""

from __future__ import annotations

from typing import Any

from gui import heatmap_job as hj
from gui.widgets.heatmap_overlay import GridGeometry, HeatmapOverlay
from gui.widgets.lesion_panel import category_html, compute_lesions
from gui.widgets.qc_layer import QCLayer, qc_html


class SlideResultMixin:
    """Show a result over the slide and in the side panel (mixed into ``SlideView``)."""

    # provided by SlideView
    viewer: Any
    overview: Any
    heatmap_panel: Any
    lesion_panel: Any
    lesion_outlines: Any
    overlay_action: Any
    qc_action: Any
    settings: Any
    result: hj.HeatmapData | None
    prediction: Any
    running: bool
    status_message: Any
    heatmap_loaded: Any
    hover_text_changed: Any
    _regions: list[tuple[float, int, int]]
    _lesion_summary: dict[str, Any] | None
    _update_enabled: Any
    _clear_prediction: Any  # SlidePredictionMixin

    def _show_result(self, data: hj.HeatmapData | None) -> None:
        """Show a complete result (or clear the overlay, summary and region list)."""
        self.result = data
        self._clear_prediction()
        self._show_qc(data)
        self._show_lesions(data)
        if data is None:
            self.viewer.set_overlay(None)
            self.viewer.highlight = None
            self.heatmap_panel.set_summary_html("Predict the slide to see its class probabilities."
                                                if self.heatmap_panel.mil_mode
                                                else "Run a heatmap to see the slide-level result.")
            self.heatmap_panel.set_regions([])
            self._regions = []
        else:
            overlay = HeatmapOverlay(data.grid, GridGeometry(data.origin_xy, data.stride, data.tile_size))
            self._apply_overlay_settings(overlay)
            self.viewer.set_overlay(overlay)
            self.heatmap_panel.set_summary_html(self._summary_html(data, self.heatmap_panel.threshold))
            self._refresh_regions()
            self.heatmap_loaded.emit()
        self.overview.update()
        self._update_enabled()

    def _refresh_regions(self) -> None:
        """The region list: the highest distinct cells at or above the display threshold."""
        overlay = self.viewer.overlay
        panel = self.heatmap_panel
        if overlay is None:
            self._regions = []
            panel.set_regions([])
            return
        self._regions = [r for r in overlay.top_regions(10) if r[0] >= panel.threshold]
        attention = self.prediction is not None
        panel.set_regions(
            [(v, "x {:,}, y {:,}".format(*(int(t) for t in overlay.geometry.tile_rect(r, c)[:2])))
             for v, r, c in self._regions],
            value_name="attention" if attention else "p =",
            empty_text=f"No tile at or above {panel.threshold:.2f}.")

    # -- overlay controls ------------------------------------------------------------------
    def _apply_overlay_settings(self, overlay: HeatmapOverlay) -> None:
        panel = self.heatmap_panel
        overlay.colormap, overlay.opacity = panel.colormap, panel.opacity
        overlay.threshold, overlay.visible = panel.threshold, panel.overlay_visible
        overlay.invalidate()

    def _on_heatmap_panel_overlay_settings_changed(self) -> None:
        panel = self.heatmap_panel
        self.settings.set("heatmap/colormap", panel.colormap)
        self.settings.set("heatmap/opacity", panel.opacity)
        self.settings.set("heatmap/threshold", panel.threshold)
        self.settings.set("heatmap/visible", panel.overlay_visible)
        self.overlay_action.setChecked(panel.overlay_visible)
        if self.viewer.overlay is not None:
            threshold_changed = self.viewer.overlay.threshold != panel.threshold
            self._apply_overlay_settings(self.viewer.overlay)
            self.viewer.update()
            self.overview.update()
            if threshold_changed and not self.running:
                self._refresh_regions()
        if self.result is not None:
            self.heatmap_panel.set_summary_html(self._summary_html(self.result, panel.threshold))

    def _on_overlay_action_toggled(self) -> None:
        self.heatmap_panel.show_check.setChecked(self.overlay_action.isChecked())

    # -- slide QC --------------------------------------------------------------------------
    def _summary_html(self, data: hj.HeatmapData, threshold: float) -> str:
        extras = [e for e in (category_html(self._lesion_summary), qc_html(data.summary)) if e]
        return hj.summary_html(data, threshold) + "".join(f"<br>{e}" for e in extras)

    # -- lesions ---------------------------------------------------------------------------
    def _show_lesions(self, data: hj.HeatmapData | None) -> None:
        """The lesions of a heatmap (at its operating threshold) in the list and over the slide."""
        model_path = str(data.model.path) if data is not None and getattr(data.model, "path", None) else None
        lesions, summary = compute_lesions(data.result, model_path) if data is not None else ([], None)
        self._lesion_summary = summary
        self.lesion_panel.set_lesions(lesions, summary)
        self.lesion_outlines.set_lesions(lesions)
        self.lesion_panel.setVisible(not self.heatmap_panel.mil_mode)

    def _on_lesion_panel_lesion_activated(self, index: int) -> None:
        lesions = self.lesion_panel.lesions
        if not 0 <= index < len(lesions):
            return
        x0, y0, x1, y1 = lesions[index].bbox
        self.viewer.show_region(x0, y0, x1 - x0, y1 - y0, highlight=False)
        self.lesion_outlines.select(index)
        self.viewer.setFocus()

    def _show_qc(self, data: hj.HeatmapData | None) -> None:
        """The QC mask layer of a result (flagged and unreadable tiles) and its warnings."""
        layer = None
        if data is not None:
            geometry = GridGeometry(data.origin_xy, data.stride, data.tile_size)
            layer = QCLayer.from_summary(data.summary, tuple(data.grid.shape), geometry)
            for warning in data.summary.get("warnings", []) or []:
                self.status_message.emit(f"Warning: {warning}", 0)
        if layer is not None:
            layer.visible = self.qc_action.isChecked()
        self.viewer.set_qc_layer(layer)

    def _on_qc_action_toggled(self) -> None:
        if self.viewer.qc_layer is not None:
            self.viewer.qc_layer.visible = self.qc_action.isChecked()
            self.viewer.update()

    def _on_heatmap_panel_region_activated(self, index: int) -> None:
        if self.viewer.overlay is None or not 0 <= index < len(self._regions):
            return
        _, row, col = self._regions[index]
        x, y, w, h = self.viewer.overlay.geometry.tile_rect(row, col)
        self.viewer.show_region(x, y, w, h)
        self.viewer.setFocus()

    # -- text under the cursor ------------------------------------------------------------
    def _on_viewer_hovered(self, info: object) -> None:
        if info is None:
            self.hover_text_changed.emit("")
            return
        x0, y0, prob, _rect = info  # type: ignore[misc]
        text = f"x {x0:,}  y {y0:,}"
        if prob is not None:
            name = "attention" if self.prediction is not None else "p ="
            text = f"{name} {prob:.2f}  ·  {text}"
        qc = self.viewer.qc_layer
        reason = qc.hover_text(x0, y0) if qc is not None and qc.visible else None
        if reason:
            text = f"{text}  ·  {reason}"
        self.hover_text_changed.emit(text)
