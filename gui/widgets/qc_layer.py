"""The slide-QC layer of the viewer: tiles QC flagged (hatched, in their reason's colour) and
tiles that could not be decoded (solid), from a heatmap result's summary; plus the placeholder
the viewer paints where a display tile cannot be decoded.

The colours and hatching are :mod:`engine.slides.qc_render`'s, so the app, ``overlay.png`` and
the ``metascope qc`` report look the same.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen

from engine.slides.qc import REASONS
from engine.slides.qc_render import reason_rgba
from engine.slides.qc_summary import reason_grid
from gui.widgets.heatmap_overlay import GridGeometry

#: Layer pixels per grid cell side (room for the hatching).
CELL_PX = 12
#: Largest layer image side; coarser cells on huge grids keep the image small.
MAX_IMAGE_PX = 4096
REASON_TEXT = {
    "pen": "pen mark",
    "fold": "tissue fold",
    "bubble": "air bubble / coverslip edge",
    "blur": "out of focus",
    "unreadable": "unreadable (damaged data)",
    "background": "background",
}


class QCLayer:
    """Reason per heatmap grid cell, shown hatched over the slide.

    Args:
        reasons: uint8 ``(rows, cols)`` codes (index into :data:`engine.slides.qc.REASONS`).
        geometry: where the grid lies on the slide (the heatmap's).
        left_out: flagged tiles were left out of the analysis (False: kept and analysed).
    """

    def __init__(self, reasons: np.ndarray, geometry: GridGeometry, left_out: bool = True) -> None:
        self.reasons = np.asarray(reasons, dtype=np.uint8)
        self.geometry = geometry
        self.left_out = left_out
        self.visible = True
        self.opacity = 0.85
        self._image: QImage | None = None

    @classmethod
    def from_summary(
        cls, summary: dict[str, Any], grid_shape: tuple[int, int], geometry: GridGeometry
    ) -> QCLayer | None:
        """The layer of a result summary, or ``None`` when nothing was flagged."""
        reasons = reason_grid(summary, grid_shape)
        if not reasons.any():
            return None
        keep = bool((summary.get("qc") or {}).get("keep_failed"))
        return cls(reasons, geometry, left_out=not keep)

    @property
    def count(self) -> int:
        return int((self.reasons > 0).sum())

    def extent_level0(self) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, w, h)`` covered by :meth:`image` (cells drawn at their stride square)."""
        rows, cols = self.reasons.shape
        x, y, _, _ = self.geometry.cell_rect(0, 0)
        return x, y, cols * self.geometry.stride, rows * self.geometry.stride

    def image(self) -> QImage:
        """Premultiplied ARGB image of the layer (``cell`` px per cell, hatched)."""
        if self._image is None:
            rows, cols = self.reasons.shape
            cell = max(1, min(CELL_PX, MAX_IMAGE_PX // max(rows, cols, 1)))
            codes = np.kron(self.reasons, np.ones((cell, cell), dtype=np.uint8))
            rgba = reason_rgba(codes, hatch=cell >= 4)
            a = rgba[..., 3:4].astype(np.uint16)
            bgra = np.empty_like(rgba)
            for dst, src in ((0, 2), (1, 1), (2, 0)):
                bgra[..., dst] = (rgba[..., src].astype(np.uint16) * a[..., 0] // 255).astype(np.uint8)
            bgra[..., 3] = rgba[..., 3]
            h, w = codes.shape
            img = QImage(bgra.tobytes(), w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied)
            self._image = img.copy()  # own the pixels
        return self._image

    def reason_at(self, x0: float, y0: float) -> str | None:
        """The QC reason of the cell under a level-0 point, or ``None``."""
        row, col = self.geometry.cell_at(x0, y0)
        rows, cols = self.reasons.shape
        if not (0 <= row < rows and 0 <= col < cols):
            return None
        code = int(self.reasons[row, col])
        return REASONS[code] if code > 0 else None

    def hover_text(self, x0: float, y0: float) -> str | None:
        """``"QC: pen mark (left out)"`` for the cell under a level-0 point, or ``None``."""
        reason = self.reason_at(x0, y0)
        if reason is None:
            return None
        if reason == "unreadable":
            return f"QC: {REASON_TEXT[reason]}, not analysed"
        return f"QC: {REASON_TEXT.get(reason, reason)} ({'left out' if self.left_out else 'kept'})"


def paint_placeholder(p: QPainter, rect: QRectF) -> None:
    """Where a display tile cannot be decoded: grey with magenta hatching and a thin border."""
    p.save()
    p.fillRect(rect, QColor(236, 236, 236))
    p.setBrush(QBrush(QColor(255, 0, 255, 150), Qt.BrushStyle.BDiagPattern))
    p.setPen(Qt.PenStyle.NoPen)
    p.drawRect(rect)
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.setPen(QPen(QColor(255, 0, 255), 1))
    p.drawRect(rect.adjusted(0.5, 0.5, -0.5, -0.5))
    p.restore()


def qc_html(summary: dict[str, Any]) -> str:
    """Lines for the summary panel: warnings, unreadable tiles, tiles QC flagged; ``""`` if none."""
    parts: list[str] = []
    for w in summary.get("warnings", []) or []:
        parts.append(f"<b style='color:#b35900'>Warning:</b> {html.escape(str(w))}")
    n = int(summary.get("unreadable_tiles") or 0)
    if n:
        parts.append(
            f"{n:,} tile{'s' if n != 1 else ''} could not be decoded and {'were' if n != 1 else 'was'} left out."
        )
    qc = summary.get("qc") or {}
    flagged = {k: int(v) for k, v in (qc.get("flagged") or {}).items() if v}
    if flagged:
        what = ", ".join(f"{v:,} {REASON_TEXT.get(k, k)}" for k, v in flagged.items())
        verb = "flagged (kept)" if qc.get("keep_failed") else "left out"
        parts.append(f"Slide QC {verb}: {html.escape(what)}.")
    return "<br>".join(parts)
