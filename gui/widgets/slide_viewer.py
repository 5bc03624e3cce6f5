"""SlideViewer: a tiled, zoomable whole-slide view with an optional heatmap overlay.

The view is defined by a centre in level-0 pixels and a downsample (level-0 pixels per screen
pixel). Painting picks the display level for that downsample, draws the slide thumbnail, then
cached tiles of coarser levels, then cached tiles of the wanted level on top, so missing tiles
show a blurrier version instead of a hole. Missing tiles are requested from a
:class:`TileScheduler` nearest-first; the GUI thread never reads pixels.
"""

from __future__ import annotations

import math
import time

from PySide6.QtCore import QEasingCurve, QEvent, QPointF, QRectF, Qt, QTimer, QVariantAnimation, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QNativeGestureEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QGestureEvent, QPinchGesture, QSizePolicy, QWidget

from engine.slides.base import SlideReader
from gui.widgets.heatmap_overlay import HeatmapOverlay
from gui.widgets.qc_layer import QCLayer, paint_placeholder
from gui.widgets.tiles import TILE_SIZE, TileKey, TileScheduler, display_levels, level_for_downsample
from gui.widgets.viewer_paint import draw_scale_bar, draw_text_chip, format_magnification, magnification

MIN_DOWNSAMPLE = 1 / 8  # 8x digital zoom past the scanned resolution
WHEEL_STEP = 1.25  # zoom factor per wheel notch
KEY_STEP = 1.5
FALLBACK_LEVELS = 3  # coarser cached levels drawn under missing tiles
SMOOTH_DELAY_S = 0.15  # navigation pause after which frames are drawn with bilinear scaling
BACKGROUND = QColor(226, 228, 232)
TILE_REPAINT_MS = 25  # arriving tiles are painted together, at most every 25 ms


class SlideViewer(QWidget):
    """Zoom/pan view of one slide; emits ``view_changed`` and ``hovered`` for the panels around it."""

    view_changed = Signal()
    hovered = Signal(object)  # (x0, y0, probability or None, tile rect or None) or None when outside
    tile_failed = Signal(str)
    thumbnail_loaded = Signal(object)  # QImage
    fully_drawn = Signal()  # every visible tile of the wanted level is on screen

    def __init__(self, scheduler: TileScheduler | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(320, 240)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.grabGesture(Qt.GestureType.PinchGesture)
        self.scheduler = scheduler or TileScheduler(parent=self)
        self.scheduler.tile_loaded.connect(self._on_scheduler_tile_loaded)
        self.scheduler.tile_failed.connect(self._on_scheduler_tile_failed)
        self.scheduler.thumbnail_loaded.connect(self._on_scheduler_thumbnail_loaded)
        self.reader: SlideReader | None = None
        self.overlay: HeatmapOverlay | None = None
        self.qc_layer: QCLayer | None = None  # slide-QC mask, drawn over the heatmap
        self.thumbnail: QImage | None = None
        self.highlight: tuple[float, float, float, float] | None = None
        self.empty_text = "Open a slide with File > Open, or drop a slide file here."
        self._center = (0.0, 0.0)
        self._ds = 1.0
        self._fitted = True
        self._drag_from: QPointF | None = None
        self._hover_text: list[str] = []
        self._anim = QVariantAnimation(self)
        self._anim.setDuration(160)
        self._anim.setEasingCurve(QEasingCurve.Type.OutCubic)
        self._anim.valueChanged.connect(self._on_anim_value_changed)
        self._anim_anchor: tuple[QPointF, tuple[float, float]] | None = None
        self._smooth_after = 0.0
        self._smooth_timer = QTimer(self)
        self._smooth_timer.setSingleShot(True)
        self._smooth_timer.setInterval(int(SMOOTH_DELAY_S * 1000) + 10)
        self._smooth_timer.timeout.connect(self.update)
        self._tile_repaint_timer = QTimer(self)
        self._tile_repaint_timer.setSingleShot(True)
        self._tile_repaint_timer.setInterval(TILE_REPAINT_MS)
        self._tile_repaint_timer.timeout.connect(self.update)
        self.missing_tiles = 0
        self.opened_at = 0.0
        self.first_paint_s: float | None = None
        self.fully_drawn_s: float | None = None

    # -- slide -----------------------------------------------------------------------------
    def set_slide(self, reader: SlideReader | None) -> None:
        """Show ``reader`` (or nothing); the previous reader is closed once its reads finish."""
        old = self.reader
        self._anim.stop()
        self.reader = reader
        self.thumbnail = None
        self.overlay = None
        self.qc_layer = None
        self.highlight = None
        self._hover_text = []
        self.missing_tiles = 0
        self.opened_at = time.perf_counter()
        self.first_paint_s = None
        self.fully_drawn_s = None
        levels = display_levels(reader.info) if reader is not None else []
        self.scheduler.set_slide(reader, levels)
        if old is not None and old is not reader:
            self.scheduler.retire(old)
        if reader is not None:
            self.fit()
        self.update()
        self.view_changed.emit()

    def set_overlay(self, overlay: HeatmapOverlay | None) -> None:
        self.overlay = overlay
        self.update()

    def set_qc_layer(self, layer: QCLayer | None) -> None:
        """Show a slide-QC mask (or none); its reasons appear in the hover text."""
        self.qc_layer = layer
        self.update()

    # -- geometry --------------------------------------------------------------------------
    @property
    def downsample(self) -> float:
        """Level-0 pixels per screen pixel."""
        return self._ds

    @property
    def center(self) -> tuple[float, float]:
        return self._center

    def _slide_dims(self) -> tuple[int, int]:
        return self.reader.info.dimensions if self.reader is not None else (1, 1)

    def fit_downsample(self) -> float:
        w0, h0 = self._slide_dims()
        return max(w0 / max(1, self.width() - 24), h0 / max(1, self.height() - 24))

    def max_downsample(self) -> float:
        return max(self.fit_downsample() * 2, 1.0)

    def to_screen(self, x0: float, y0: float) -> QPointF:
        return QPointF((x0 - self._center[0]) / self._ds + self.width() / 2,
                       (y0 - self._center[1]) / self._ds + self.height() / 2)

    def to_level0(self, p: QPointF) -> tuple[float, float]:
        return ((p.x() - self.width() / 2) * self._ds + self._center[0],
                (p.y() - self.height() / 2) * self._ds + self._center[1])

    def visible_rect_level0(self) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, w, h)`` shown in the widget (may extend past the slide)."""
        x, y = self.to_level0(QPointF(0, 0))
        return x, y, self.width() * self._ds, self.height() * self._ds

    def um_per_screen_px(self) -> float | None:
        if self.reader is None or self.reader.info.mpp is None:
            return None
        return self.reader.info.mpp_or(None) * self._ds

    def magnification_text(self) -> str:
        um = self.um_per_screen_px()
        if um is not None:
            return f"{format_magnification(magnification(um))}  ·  {um:.2f} µm/px"
        if self.reader is not None and self.reader.info.objective_power:
            return f"{format_magnification(self.reader.info.objective_power / self._ds)} (objective-based)"
        return f"zoom {100 / self._ds:.0f}%  ·  resolution unknown"

    def current_level(self) -> int:
        """Index of the display level used at the current zoom."""
        dpr = max(1.0, self.devicePixelRatioF())
        return level_for_downsample(self.scheduler.levels, self._ds / dpr) if self.scheduler.levels else 0

    # -- navigation ------------------------------------------------------------------------
    def _clamp(self) -> None:
        w0, h0 = self._slide_dims()
        self._ds = min(max(self._ds, MIN_DOWNSAMPLE), self.max_downsample())
        self._center = (min(max(self._center[0], 0.0), float(w0)), min(max(self._center[1], 0.0), float(h0)))

    def _changed(self) -> None:
        self._clamp()
        self._smooth_after = time.perf_counter() + SMOOTH_DELAY_S
        self._smooth_timer.start()
        self.update()
        self.view_changed.emit()

    def fit(self) -> None:
        """Whole slide in view."""
        self._anim.stop()
        w0, h0 = self._slide_dims()
        self._ds = self.fit_downsample()
        self._center = (w0 / 2, h0 / 2)
        self._fitted = True
        self._changed()

    def one_to_one(self) -> None:
        """One screen pixel per scanned (level-0) pixel, keeping the centre."""
        self.set_downsample(1.0, animate=False)

    def set_downsample(self, ds: float, anchor: QPointF | None = None, animate: bool = False) -> None:
        """Zoom to ``ds`` keeping the slide point under ``anchor`` (default: centre) fixed."""
        if self.reader is None:
            return
        anchor = anchor if anchor is not None else QPointF(self.width() / 2, self.height() / 2)
        target = min(max(ds, MIN_DOWNSAMPLE), self.max_downsample())
        self._fitted = False
        if animate:
            self._anim.stop()
            self._anim_anchor = (anchor, self.to_level0(anchor))
            self._anim.setStartValue(math.log(self._ds))
            self._anim.setEndValue(math.log(target))
            self._anim.start()
            return
        self._apply_zoom(target, anchor, self.to_level0(anchor))

    def _apply_zoom(self, ds: float, anchor: QPointF, anchor_level0: tuple[float, float]) -> None:
        self._ds = min(max(ds, MIN_DOWNSAMPLE), self.max_downsample())
        self._center = (anchor_level0[0] - (anchor.x() - self.width() / 2) * self._ds,
                        anchor_level0[1] - (anchor.y() - self.height() / 2) * self._ds)
        self._changed()

    def _on_anim_value_changed(self, value: object) -> None:
        if self._anim_anchor is not None:
            self._apply_zoom(math.exp(float(value)), *self._anim_anchor)

    def zoom_by(self, factor: float, anchor: QPointF | None = None, animate: bool = False) -> None:
        """Zoom in by ``factor`` (> 1 magnifies)."""
        base = self._anim.endValue() if self._anim.state() == QVariantAnimation.State.Running else None
        ds = math.exp(float(base)) if base is not None else self._ds
        self.set_downsample(ds / factor, anchor, animate)

    def pan_by(self, dx_px: float, dy_px: float) -> None:
        """Move the view by screen pixels (positive: content moves left/up)."""
        self._fitted = False
        self._center = (self._center[0] + dx_px * self._ds, self._center[1] + dy_px * self._ds)
        self._changed()

    def center_on(self, x0: float, y0: float) -> None:
        self._fitted = False
        self._center = (float(x0), float(y0))
        self._changed()

    def show_region(self, x0: float, y0: float, w0: float, h0: float, highlight: bool = True) -> None:
        """Centre a level-0 rectangle with context around it (it fills about a fifth of the view)."""
        self.highlight = (x0, y0, w0, h0) if highlight else None
        ds = max(w0 / max(1, self.width()), h0 / max(1, self.height())) * 5
        self._ds = min(max(ds, MIN_DOWNSAMPLE), self.max_downsample())
        self._fitted = False
        self._center = (x0 + w0 / 2, y0 + h0 / 2)
        self._changed()

    # -- painting --------------------------------------------------------------------------
    def _screen_rect(self, x0: float, y0: float, w0: float, h0: float) -> QRectF:
        # snap to whole pixels so neighbouring tiles share edges (no hairline seams)
        a = self.to_screen(x0, y0)
        b = self.to_screen(x0 + w0, y0 + h0)
        left, top = math.floor(a.x()), math.floor(a.y())
        return QRectF(left, top, max(1, math.floor(b.x()) - left), max(1, math.floor(b.y()) - top))

    def _visible_tiles(self, level_index: int, margin: int = 0) -> list[TileKey]:
        """Tiles of a display level that intersect the view (plus ``margin`` tiles), nearest first."""
        lv = self.scheduler.levels[level_index]
        span = TILE_SIZE * lv.downsample
        w0, h0 = self._slide_dims()
        x, y, w, h = self.visible_rect_level0()
        c0 = max(0, math.floor(x / span) - margin)
        r0 = max(0, math.floor(y / span) - margin)
        c1 = min(math.ceil(w0 / span) - 1, math.floor((x + w) / span) + margin)
        r1 = min(math.ceil(h0 / span) - 1, math.floor((y + h) / span) + margin)
        cx, cy = self._center[0] / span - 0.5, self._center[1] / span - 0.5
        keys = [(level_index, c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
        keys.sort(key=lambda k: (k[1] - cx) ** 2 + (k[2] - cy) ** 2)
        return keys

    def _tile_rect(self, key: TileKey) -> QRectF:
        lv = self.scheduler.levels[key[0]]
        span = TILE_SIZE * lv.downsample
        w0, h0 = self._slide_dims()
        x, y = key[1] * span, key[2] * span
        return self._screen_rect(x, y, min(span, w0 - x), min(span, h0 - y))

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), BACKGROUND)
        if self.reader is None:
            self._paint_empty(p)
            p.end()
            return
        # bilinear scaling only once navigation pauses: during a drag or zoom a frame must be cheap
        smooth = time.perf_counter() >= self._smooth_after
        w0, h0 = self._slide_dims()
        slide_rect = self._screen_rect(0, 0, w0, h0)
        target = self.current_level()
        cache = self.scheduler.cache
        levels = self.scheduler.levels
        keys = self._visible_tiles(target) if levels[target].loadable else []
        present: list[tuple[QRectF, QImage]] = []
        missing: list[TileKey] = []
        broken: list[TileKey] = []
        for key in keys:
            img = cache.get(key)
            if img is not None:
                present.append((self._tile_rect(key), img))
            elif key not in self.scheduler.failed:
                missing.append(key)
            else:
                broken.append(key)
        if missing or not keys:
            self._paint_underlay(p, slide_rect, target, missing if keys else None, smooth)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        for rect, img in present:
            p.drawImage(rect, img)
        for key in broken:  # damaged slide data: a placeholder, not a hole or a crash
            paint_placeholder(p, self._tile_rect(key))
        if keys:
            wanted = set(missing)
            ring = [k for k in self._visible_tiles(target, margin=1) if k not in cache and k not in wanted]
            self.scheduler.request(missing + ring)  # visible first, then a one-tile ring for panning
        self._paint_overlay(p)
        self._paint_hud(p, bool(missing))
        p.end()
        self._note_paint(len(missing))

    def _paint_underlay(self, p: QPainter, slide_rect: QRectF, target: int, missing: list[TileKey] | None,
                        smooth: bool) -> None:
        """Blurrier stand-ins where wanted tiles are missing: the thumbnail, then coarser cached tiles.

        Drawing is clipped to the bounding box of the missing tiles (``None``: everywhere), so a
        fully loaded view costs nothing here; the loaded tiles drawn afterwards cover the rest of
        the box. The box is one clip rectangle and the overlap tests are plain arithmetic: every
        Qt call that releases the GIL is a chance for a tile thread to hold up this paint.
        """
        cache = self.scheduler.cache
        if missing is None:
            holes = [(0.0, 0.0, float(self.width()), float(self.height()))]
        else:
            holes = []
            for key in missing:
                r = self._tile_rect(key)
                holes.append((r.left(), r.top(), r.right(), r.bottom()))
        box = (min(h[0] for h in holes), min(h[1] for h in holes), max(h[2] for h in holes), max(h[3] for h in holes))
        fallback: list[tuple[QRectF, QImage]] = []
        for li in range(min(target + FALLBACK_LEVELS, len(self.scheduler.levels) - 1), target, -1):
            for key in self._visible_tiles(li):
                img = cache.peek(key)
                if img is None:
                    continue
                rect = self._tile_rect(key)
                x0, y0, x1, y1 = rect.left(), rect.top(), rect.right(), rect.bottom()
                if any(x0 < h[2] and h[0] < x1 and y0 < h[3] and h[1] < y1 for h in holes):
                    fallback.append((rect, img))
        p.save()
        p.setClipRect(QRectF(box[0], box[1], box[2] - box[0], box[3] - box[1]))
        p.fillRect(slide_rect, Qt.GlobalColor.white)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        if self.thumbnail is not None:
            p.drawImage(slide_rect, self.thumbnail)
        for rect, img in fallback:
            p.drawImage(rect, img)
        p.restore()

    def _note_paint(self, missing: int) -> None:
        now = time.perf_counter()
        if self.first_paint_s is None:
            self.first_paint_s = now - self.opened_at
        was_missing = self.missing_tiles
        self.missing_tiles = missing
        if missing == 0 and (was_missing > 0 or self.fully_drawn_s is None):
            if self.fully_drawn_s is None:
                self.fully_drawn_s = now - self.opened_at
            self.fully_drawn.emit()

    def _paint_empty(self, p: QPainter) -> None:
        p.setPen(QColor(90, 94, 102))
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.2)
        p.setFont(font)
        p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.empty_text)

    def _paint_overlay(self, p: QPainter) -> None:
        ov = self.overlay
        if ov is not None and ov.visible:
            x, y, w, h = ov.extent_level0()
            p.save()
            p.setOpacity(ov.opacity)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)  # crisp tile cells
            p.drawImage(QRectF(self.to_screen(x, y), self.to_screen(x + w, y + h)), ov.image())
            p.restore()
        qc = self.qc_layer
        if qc is not None and qc.visible:
            x, y, w, h = qc.extent_level0()
            p.save()
            p.setOpacity(qc.opacity)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
            p.drawImage(QRectF(self.to_screen(x, y), self.to_screen(x + w, y + h)), qc.image())
            p.restore()
        if self.highlight is not None:
            x, y, w, h = self.highlight
            r = QRectF(self.to_screen(x, y), self.to_screen(x + w, y + h)).adjusted(-2, -2, 2, 2)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(QPen(QColor(255, 255, 255), 4))
            p.drawRect(r)
            p.setPen(QPen(QColor(0, 150, 255), 2))
            p.drawRect(r)

    def _paint_hud(self, p: QPainter, loading: bool) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        draw_text_chip(p, QPointF(10, 10), [self.magnification_text()])
        um = self.um_per_screen_px()
        if um is not None:
            draw_scale_bar(p, QPointF(10, self.height() - 10), um)
        if self._hover_text:
            draw_text_chip(p, QPointF(self.width() - 10, self.height() - 10), self._hover_text,
                           align_right=True, align_bottom=True)
        if loading:
            draw_text_chip(p, QPointF(self.width() - 10, 10), ["Loading tiles…"], align_right=True)

    # -- scheduler slots -------------------------------------------------------------------
    def _on_scheduler_tile_loaded(self, key: TileKey) -> None:
        # tiles arrive one by one: repaint once for all that arrive within a few milliseconds
        if not self._tile_repaint_timer.isActive():
            self._tile_repaint_timer.start()

    def _on_scheduler_tile_failed(self, key: TileKey, message: str) -> None:
        self.tile_failed.emit(message)
        self.update()

    def _on_scheduler_thumbnail_loaded(self, img: QImage) -> None:
        self.thumbnail = img
        self.thumbnail_loaded.emit(img)
        self.update()

    # -- input -----------------------------------------------------------------------------
    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if self.reader is not None:
            if self._fitted:
                self.fit()
            else:
                self._changed()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt API
        steps = event.angleDelta().y() / 120.0
        if steps and self.reader is not None:
            self.zoom_by(WHEEL_STEP**steps, event.position())
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if event.button() == Qt.MouseButton.LeftButton and self.reader is not None:
            self._drag_from = event.position()
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        pos = event.position()
        if self._drag_from is not None:
            d = pos - self._drag_from
            self._drag_from = pos
            self.pan_by(-d.x(), -d.y())
        self._update_hover(pos)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if event.button() == Qt.MouseButton.LeftButton:
            self._drag_from = None
            self.unsetCursor()
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if self.reader is not None:
            self.zoom_by(2.0, event.position(), animate=True)

    def leaveEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt API
        if self._hover_text:
            self._hover_text = []
            self.update()
        self.hovered.emit(None)
        super().leaveEvent(event)

    def _update_hover(self, pos: QPointF) -> None:
        if self.reader is None:
            return
        x0, y0 = self.to_level0(pos)
        w0, h0 = self._slide_dims()
        if not (0 <= x0 < w0 and 0 <= y0 < h0):
            info = None
            self._hover_text = []
        else:
            hit = self.overlay.value_at(x0, y0) if self.overlay is not None else None
            info = (int(x0), int(y0), hit[0] if hit else None, hit[1] if hit else None)
            lines = [f"x {int(x0):,}  y {int(y0):,} (level 0)"]
            if hit is not None:
                lines.insert(0, f"{self.overlay.value_label} {hit[0]:.2f}")  # type: ignore[union-attr]
            qc_text = self.qc_layer.hover_text(x0, y0) if self.qc_layer is not None and self.qc_layer.visible else None
            if qc_text:
                lines.insert(0, qc_text)
            self._hover_text = lines
        self.update()
        self.hovered.emit(info)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt API
        key = event.key()
        step = 0.15
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(KEY_STEP, animate=True)
        elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
            self.zoom_by(1 / KEY_STEP, animate=True)
        elif key == Qt.Key.Key_Left:
            self.pan_by(-self.width() * step, 0)
        elif key == Qt.Key.Key_Right:
            self.pan_by(self.width() * step, 0)
        elif key == Qt.Key.Key_Up:
            self.pan_by(0, -self.height() * step)
        elif key == Qt.Key.Key_Down:
            self.pan_by(0, self.height() * step)
        elif key in (Qt.Key.Key_Home, Qt.Key.Key_0):
            self.fit()
        elif key == Qt.Key.Key_1:
            self.one_to_one()
        else:
            super().keyPressEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Gesture and isinstance(event, QGestureEvent):
            pinch = event.gesture(Qt.GestureType.PinchGesture)
            if isinstance(pinch, QPinchGesture) and self.reader is not None:
                anchor = self.mapFromGlobal(pinch.centerPoint().toPoint())
                self.zoom_by(pinch.scaleFactor(), QPointF(anchor))
                event.accept()
                return True
        if (event.type() == QEvent.Type.NativeGesture and isinstance(event, QNativeGestureEvent)
                and event.gestureType() == Qt.NativeGestureType.ZoomNativeGesture and self.reader is not None):
            self.zoom_by(1.0 + event.value(), event.position())
            return True
        return super().event(event)
