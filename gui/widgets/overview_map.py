"""OverviewMap: the whole slide in miniature with the viewer's viewport; click or drag to jump."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from gui.widgets.slide_viewer import SlideViewer


class OverviewMap(QWidget):
    """Thumbnail of the viewer's slide (with the heatmap overlay) and its viewport rectangle."""

    def __init__(self, viewer: SlideViewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.setMinimumSize(160, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Click or drag to move the view")
        viewer.view_changed.connect(self.update)
        viewer.thumbnail_loaded.connect(self.update)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(300, 150)

    def _image_rect(self) -> QRectF | None:
        """Where the slide is drawn inside this widget (aspect preserved, centred)."""
        if self.viewer.reader is None:
            return None
        w0, h0 = self.viewer.reader.info.dimensions
        avail = QRectF(self.rect()).adjusted(4, 4, -4, -4)
        scale = min(avail.width() / w0, avail.height() / h0)
        w, h = w0 * scale, h0 * scale
        return QRectF(avail.center().x() - w / 2, avail.center().y() - h / 2, w, h)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(226, 228, 232))
        r = self._image_rect()
        if r is None:
            p.setPen(QColor(120, 124, 130))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No slide")
            p.end()
            return
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        p.fillRect(r, Qt.GlobalColor.white)
        if self.viewer.thumbnail is not None:
            p.drawImage(r, self.viewer.thumbnail)
        ov = self.viewer.overlay
        w0, h0 = self.viewer.reader.info.dimensions  # type: ignore[union-attr]
        sx, sy = r.width() / w0, r.height() / h0
        if ov is not None and ov.visible:
            x, y, w, h = ov.extent_level0()
            p.save()
            p.setOpacity(ov.opacity)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
            p.drawImage(QRectF(r.x() + x * sx, r.y() + y * sy, w * sx, h * sy), ov.image())
            p.restore()
        vx, vy, vw, vh = self.viewer.visible_rect_level0()
        view = QRectF(r.x() + vx * sx, r.y() + vy * sy, vw * sx, vh * sy).intersected(r.adjusted(-1, -1, 1, 1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(QColor(255, 255, 255), 3))
        p.drawRect(view)
        p.setPen(QPen(QColor(0, 120, 215), 1.5))
        p.drawRect(view)
        p.setPen(QPen(QColor(160, 164, 170), 1))
        p.drawRect(r)
        p.end()

    def _jump(self, pos: QPointF) -> None:
        r = self._image_rect()
        if r is None:
            return
        w0, h0 = self.viewer.reader.info.dimensions  # type: ignore[union-attr]
        x0 = (pos.x() - r.x()) / r.width() * w0
        y0 = (pos.y() - r.y()) / r.height() * h0
        self.viewer.center_on(x0, y0)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if event.button() == Qt.MouseButton.LeftButton:
            self._jump(event.position())

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._jump(event.position())
