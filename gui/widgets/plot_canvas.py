"""An embedded matplotlib figure (imported lazily: opening the app must not pay for matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

#: Colours used across MetaScope's charts (colour-blind-safe Okabe-Ito order).
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def _qcolor_hex(widget: QWidget, role: QPalette.ColorRole) -> str:
    return widget.palette().color(role).name()


class PlotCanvas(QWidget):
    """A QWidget holding one matplotlib ``Figure`` drawn with the Qt Agg backend.

    Draw on :attr:`figure` (or the axes from :meth:`reset`) and call :meth:`redraw`.
    """

    def __init__(self, parent: QWidget | None = None, *, min_height: int = 180) -> None:
        super().__init__(parent)
        # lazy: matplotlib costs ~0.3 s to import; only views with charts pay for it
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(5, 3), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(min_height)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._apply_palette()

    def _apply_palette(self) -> None:
        # follow the app's palette so charts do not glare as white boxes in a dark theme
        bg = _qcolor_hex(self, QPalette.ColorRole.Base)
        self._fg = _qcolor_hex(self, QPalette.ColorRole.Text)
        self.figure.set_facecolor(bg)

    def reset(self, nrows: int = 1, ncols: int = 1, **subplot_kw: Any) -> list[Any]:
        """Clear the figure and return ``nrows * ncols`` styled axes (row-major)."""
        self.figure.clear()
        axes = self.figure.subplots(nrows, ncols, squeeze=False, subplot_kw=subplot_kw or None)
        flat = [ax for row in axes for ax in row]
        for ax in flat:
            self.style_axes(ax)
        return flat

    def style_axes(self, ax: Any) -> None:
        """Small fonts, light grid, no top/right spines, palette-aware colours."""
        ax.set_facecolor(self.figure.get_facecolor())
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color(self._fg)
        ax.tick_params(labelsize=8, colors=self._fg)
        ax.grid(True, alpha=0.25, linewidth=0.6)
        ax.xaxis.label.set_color(self._fg)
        ax.yaxis.label.set_color(self._fg)
        ax.title.set_color(self._fg)
        ax.xaxis.label.set_size(9)
        ax.yaxis.label.set_size(9)
        ax.title.set_size(10)

    def message(self, text: str) -> None:
        """Show a centred grey message instead of a chart (e.g. "no data yet")."""
        self.figure.clear()
        self.figure.text(0.5, 0.5, text, ha="center", va="center", color="#808080", fontsize=10)
        self.redraw()

    def redraw(self) -> None:
        self.canvas.draw_idle()

    def draw_now(self) -> None:
        """Render synchronously (screenshots, tests)."""
        self.canvas.draw()

    def save_png(self, path: str | Path, dpi: int = 150) -> None:
        self.figure.savefig(str(path), dpi=dpi, facecolor=self.figure.get_facecolor())


def bar_chart(
    canvas: PlotCanvas, labels: Sequence[str], values: Sequence[float], *, title: str = "", ylabel: str = ""
) -> None:
    """One bar per label with its value written above (class-balance charts)."""
    (ax,) = canvas.reset()
    colours = [SERIES_COLOURS[i % len(SERIES_COLOURS)] for i in range(len(labels))]
    bars = ax.bar(range(len(labels)), values, color=colours, width=0.6)
    ax.set_xticks(range(len(labels)), [str(lb) for lb in labels], rotation=0 if len(labels) <= 6 else 30)
    total = float(sum(values)) or 1.0
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(
            f"{int(v):,} ({100 * v / total:.0f}%)",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            color=canvas._fg,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_ylim(0, max(values, default=1) * 1.18 or 1)
    ax.grid(True, axis="y", alpha=0.25)
    ax.grid(False, axis="x")
    if title:
        ax.set_title(title)
    if ylabel:
        ax.set_ylabel(ylabel)
    canvas.redraw()
