"""Painting helpers for the slide viewer: scale bar, magnification text, info chips."""

from __future__ import annotations

import math
from collections import OrderedDict

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPen

SCALE_BAR_MIN_PX = 70
SCALE_BAR_MAX_PX = 180
CHIP_CACHE_SIZE = 64
_CHIP_CACHE: OrderedDict[tuple[int, int, int], QImage] = OrderedDict()


def nice_scale_length_um(um_per_px: float) -> tuple[float, float]:
    """A round length (1, 2 or 5 x 10^k micrometres) whose bar is 70-180 screen pixels long.

    Returns:
        ``(length_um, length_px)``.
    """
    target_um = um_per_px * (SCALE_BAR_MIN_PX + SCALE_BAR_MAX_PX) / 2
    exp = math.floor(math.log10(target_um))
    best = None
    for e in (exp - 1, exp, exp + 1):
        for m in (1, 2, 5):
            um = m * 10.0**e
            px = um / um_per_px
            if SCALE_BAR_MIN_PX <= px <= SCALE_BAR_MAX_PX and (best is None or abs(px - 120) < abs(best[1] - 120)):
                best = (um, px)
    if best is None:
        um = 10.0**exp
        best = (um, um / um_per_px)
    return best


def format_length_um(um: float) -> str:
    if um >= 1000:
        mm = um / 1000
        return f"{mm:g} mm"
    return f"{um:g} µm"


def magnification(um_per_screen_px: float) -> float:
    """Equivalent objective magnification: 10x at 1 µm/px, 20x at 0.5 µm/px, 40x at 0.25 µm/px."""
    return 10.0 / um_per_screen_px


def format_magnification(mag: float) -> str:
    if mag >= 10:
        return f"{mag:.0f}x"
    if mag >= 1:
        return f"{mag:.1f}x"
    return f"{mag:.2f}x"


def _chip_image(w: int, h: int, dpr: float) -> QImage:
    """A translucent white rounded box of ``w`` x ``h`` logical pixels, rendered once per size.

    An antialiased rounded rectangle costs about a millisecond to fill on the raster engine,
    several per frame; blitting a cached image costs microseconds.
    """
    key = (w, h, round(dpr * 100))
    img = _CHIP_CACHE.get(key)
    if img is None:
        img = QImage(max(1, round(w * dpr)), max(1, round(h * dpr)), QImage.Format.Format_ARGB32_Premultiplied)
        img.setDevicePixelRatio(dpr)
        img.fill(Qt.GlobalColor.transparent)
        q = QPainter(img)
        q.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        q.setPen(Qt.PenStyle.NoPen)
        q.setBrush(QColor(255, 255, 255, 215))
        q.drawRoundedRect(QRectF(0, 0, w, h), 4, 4)
        q.end()
        _CHIP_CACHE[key] = img
        while len(_CHIP_CACHE) > CHIP_CACHE_SIZE:
            _CHIP_CACHE.popitem(last=False)
    else:
        _CHIP_CACHE.move_to_end(key)
    return img


def _chip(painter: QPainter, rect: QRectF) -> None:
    device = painter.device()
    dpr = device.devicePixelRatioF() if device is not None else 1.0
    painter.drawImage(QPointF(round(rect.x()), round(rect.y())),
                      _chip_image(math.ceil(rect.width()), math.ceil(rect.height()), dpr))


def draw_text_chip(painter: QPainter, anchor: QPointF, lines: list[str], align_right: bool = False,
                   align_bottom: bool = False) -> QRectF:
    """Draw ``lines`` on a translucent white rounded box; ``anchor`` is the chosen corner."""
    font = QFont(painter.font())
    font.setPointSizeF(max(8.5, font.pointSizeF()))
    painter.setFont(font)
    fm = QFontMetrics(font)
    pad = 6
    w = max(fm.horizontalAdvance(s) for s in lines) + 2 * pad
    h = fm.height() * len(lines) + 2 * pad
    x = anchor.x() - w if align_right else anchor.x()
    y = anchor.y() - h if align_bottom else anchor.y()
    rect = QRectF(x, y, w, h)
    _chip(painter, rect)
    painter.setPen(QColor(30, 30, 30))
    for i, s in enumerate(lines):
        painter.drawText(QPointF(x + pad, y + pad + fm.ascent() + i * fm.height()), s)
    return rect


def draw_scale_bar(painter: QPainter, bottom_left: QPointF, um_per_px: float) -> QRectF:
    """Scale bar with its length in µm/mm, drawn above ``bottom_left``."""
    um, px = nice_scale_length_um(um_per_px)
    fm = QFontMetrics(painter.font())
    label = format_length_um(um)
    pad = 6
    w = max(px, fm.horizontalAdvance(label)) + 2 * pad
    h = fm.height() + 14 + 2 * pad
    rect = QRectF(bottom_left.x(), bottom_left.y() - h, w, h)
    _chip(painter, rect)
    painter.setPen(QColor(30, 30, 30))
    painter.drawText(QPointF(rect.x() + pad, rect.y() + pad + fm.ascent()), label)
    y = rect.bottom() - pad - 4
    x0, x1 = rect.x() + pad, rect.x() + pad + px
    painter.setPen(QPen(QColor(20, 20, 20), 3, Qt.PenStyle.SolidLine, Qt.PenCapStyle.FlatCap))
    painter.drawLine(QPointF(x0, y), QPointF(x1, y))
    painter.setPen(QPen(QColor(20, 20, 20), 2))
    painter.drawLine(QPointF(x0, y - 5), QPointF(x0, y + 3))
    painter.drawLine(QPointF(x1, y - 5), QPointF(x1, y + 3))
    return rect
