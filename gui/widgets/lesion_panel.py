"""Lesions of a heatmap in the slide view: the list (largest first, click to go there), the slide's
category, and the lesion outlines drawn over the slide.

The lesions come from :mod:`engine.infer.lesions` (connected tumour regions at the heatmap's
operating threshold, with hysteresis).
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QEvent, QObject, QPointF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QGroupBox, QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

OUTLINE_RGB = (255, 0, 255)
SELECTED_RGB = (0, 150, 255)


def compute_lesions(result: Any, model_path: str | None = None) -> tuple[list[Any], dict[str, Any]]:
    """``(lesions largest first, heatmap.json "lesions" summary)`` of a heatmap result, at the
    model package's operating threshold when ``model_path`` records one, else the heatmap's."""
    from engine.errors import MetaScopeError
    from engine.infer.lesions import find_lesions, lesion_summary, operating_threshold

    threshold = None
    if model_path:
        from engine.modelpkg import read_metadata

        try:
            meta = read_metadata(model_path)
        except (MetaScopeError, OSError):
            meta = None  # the package moved or changed since: keep the heatmap's threshold
        if meta is not None and "operating_threshold" in (meta.extra or {}):
            threshold = operating_threshold(meta)
    lesions = find_lesions(result, threshold)
    return lesions, lesion_summary(result, lesions, threshold)


def lesion_text(index: int, lesion: Any) -> str:
    """One list row: ``1.  2.31 mm, 1.204 mm², max 0.98``."""
    if lesion.diameter_mm is None:
        size = f"{lesion.diameter_px:,.0f} px across"
    else:
        size = f"{lesion.diameter_mm:.2f} mm, {lesion.area_mm2:.3f} mm\u00b2"
    return f"{index + 1}.  {size}, max {lesion.max_probability:.2f}"


def category_html(summary: dict[str, Any] | None) -> str:
    """The slide result line for the largest lesion's category ("" without a summary)."""
    if not summary:
        return ""
    cat = html.escape(str(summary["category"]))
    if not summary["count"]:
        return f"<b>Lesions:</b> none at p \u2265 {summary['threshold']:.2f} ({cat})"
    size = summary.get("largest_diameter_mm")
    largest = "" if size is None else f", largest {size:.2f} mm"
    return f"<b>Category:</b> {cat} ({summary['count']} lesion(s){largest})"


class LesionPanel(QGroupBox):
    """The lesions of the shown heatmap, largest first; ``lesion_activated(index)`` on click."""

    lesion_activated = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Lesions", parent)
        layout = QVBoxLayout(self)
        self.category_label = QLabel("")
        self.category_label.setWordWrap(True)
        self.category_label.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.category_label)
        self.list = QListWidget()
        self.list.setToolTip("Click a lesion to go there")
        self.list.setMinimumHeight(90)
        self.list.itemClicked.connect(self._on_list_item_clicked)
        self.list.itemActivated.connect(self._on_list_item_clicked)
        layout.addWidget(self.list)
        self.lesions: list[Any] = []
        self.summary: dict[str, Any] | None = None
        self.set_lesions([], None)

    def set_lesions(self, lesions: list[Any], summary: dict[str, Any] | None) -> None:
        self.lesions, self.summary = list(lesions), summary
        self.list.clear()
        for i, les in enumerate(self.lesions):
            item = QListWidgetItem(lesion_text(i, les))
            item.setData(Qt.ItemDataRole.UserRole, i)
            self.list.addItem(item)
        if not self.lesions:
            item = QListWidgetItem("No lesion." if summary else "Run a heatmap to find lesions.")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            item.setForeground(QColor(120, 120, 120))
            self.list.addItem(item)
        self.category_label.setText(category_html(summary))
        self.category_label.setVisible(bool(summary))

    def _on_list_item_clicked(self, item: QListWidgetItem) -> None:
        index = item.data(Qt.ItemDataRole.UserRole)
        if index is not None:
            self.lesion_activated.emit(int(index))


class LesionOutlines(QWidget):
    """A see-through layer over a :class:`gui.widgets.slide_viewer.SlideViewer` drawing lesion
    outlines in slide coordinates (it follows the viewer's size and repaints with it)."""

    def __init__(self, viewer: QWidget) -> None:
        super().__init__(viewer)
        self.viewer = viewer
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.lesions: list[Any] = []
        self.selected: int | None = None
        self.visible_outlines = True
        self.setGeometry(viewer.rect())
        viewer.installEventFilter(self)
        self.show()

    def set_lesions(self, lesions: list[Any]) -> None:
        self.lesions, self.selected = list(lesions), None
        self.update()

    def select(self, index: int | None) -> None:
        self.selected = index
        self.update()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if watched is self.viewer and event.type() == QEvent.Type.Resize:
            self.setGeometry(self.viewer.rect())
        return False

    def path(self, lesion: Any) -> QPainterPath:
        """The lesion's outline (holes included) in this widget's coordinates."""
        path = QPainterPath()
        path.setFillRule(Qt.FillRule.OddEvenFill)
        to_screen = self.viewer.to_screen
        for poly in lesion.polygons:
            for ring in poly:
                pts = [to_screen(float(x), float(y)) for x, y in ring]
                if len(pts) < 3:
                    continue
                path.moveTo(pts[0])
                for q in pts[1:]:
                    path.lineTo(q)
                path.closeSubpath()
        return path

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        if not self.lesions or not self.visible_outlines or getattr(self.viewer, "reader", None) is None:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setBrush(Qt.BrushStyle.NoBrush)
        view = self.rect().adjusted(-50, -50, 50, 50)
        for i, les in enumerate(self.lesions):
            x0, y0, x1, y1 = les.bbox
            box = QPointF(*_xy(self.viewer.to_screen(x0, y0))), QPointF(*_xy(self.viewer.to_screen(x1, y1)))
            if box[1].x() < view.left() or box[0].x() > view.right() or box[1].y() < view.top() or box[0].y() > view.bottom():
                continue
            path = self.path(les)
            rgb = SELECTED_RGB if i == self.selected else OUTLINE_RGB
            p.setPen(QPen(QColor(255, 255, 255, 200), 4))
            p.drawPath(path)
            p.setPen(QPen(QColor(*rgb), 2))
            p.drawPath(path)
        p.end()


def _xy(q: QPointF) -> tuple[float, float]:
    return q.x(), q.y()
