"""An embedded matplotlib figure (imported lazily: opening the app must not pay for matplotlib)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    matplotlib is imported when the widget is first shown, not when it is built, so views with
    charts cost nothing at app start-up. Draw through :meth:`plot`: ``fn(canvas)`` runs at once
    when the figure exists, else when the widget is first shown (only the latest request is
    kept). Inside ``fn`` use :meth:`reset` for styled axes; :meth:`redraw` is called afterwards.
    """

    def __init__(self, parent: QWidget | None = None, *, min_height: int = 180) -> None:
        super().__init__(parent)
        self.setMinimumHeight(min_height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._min_height = min_height
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._figure: Any = None
        self.canvas: Any = None
        self._pending: Callable[[PlotCanvas], None] | None = None
        self._fg = _qcolor_hex(self, QPalette.ColorRole.Text)

    @property
    def realized(self) -> bool:
        return self._figure is not None

    @property
    def figure(self) -> Any:
        """The matplotlib ``Figure`` (created, and matplotlib imported, on first access)."""
        if self._figure is None:
            self._realize()
        return self._figure

    def _realize(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self._figure = Figure(figsize=(5, 3), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self._figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(self._min_height)
        self._layout.addWidget(self.canvas)
        # follow the app's palette so charts do not glare as white boxes in a dark theme
        self._figure.set_facecolor(_qcolor_hex(self, QPalette.ColorRole.Base))
        self._fg = _qcolor_hex(self, QPalette.ColorRole.Text)

    def plot(self, fn: Callable[[PlotCanvas], None]) -> None:
        """Draw with ``fn(self)`` now if the figure exists or the widget is visible, else on first show."""
        if self._figure is None and not self.isVisible():
            self._pending = fn
            return
        self._pending = None
        fn(self)
        self.redraw()

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        if self._pending is not None:
            fn, self._pending = self._pending, None
            fn(self)
            self.redraw()

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

        def draw(c: PlotCanvas) -> None:
            c.figure.clear()
            c.figure.text(0.5, 0.5, text, ha="center", va="center", color="#808080", fontsize=10)

        self.plot(draw)

    def redraw(self) -> None:
        if self.canvas is not None:
            self.canvas.draw_idle()

    def draw_now(self) -> None:
        """Render synchronously (screenshots, tests)."""
        if self.canvas is not None:
            self.canvas.draw()

    def save_png(self, path: str | Path, dpi: int = 150) -> None:
        self.figure.savefig(str(path), dpi=dpi, facecolor=self.figure.get_facecolor())


def bar_chart(
    canvas: PlotCanvas, labels: Sequence[str], values: Sequence[float], *, title: str = "", ylabel: str = ""
) -> None:
    """One bar per label with its count and share written above (class-balance charts)."""
    labels, values = list(labels), list(values)

    def draw(c: PlotCanvas) -> None:
        (ax,) = c.reset()
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
                color=c._fg,
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

    canvas.plot(draw)


def roc_axes(canvas: PlotCanvas, ax: Any, fpr: Sequence[float], tpr: Sequence[float], auc: float | None) -> None:
    """An ROC curve with the chance diagonal, square and labelled."""
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=0.8, label="chance")
    label = f"AUC {auc:.3f}" if auc is not None and auc == auc else "ROC"
    ax.step(fpr, tpr, where="post", color=SERIES_COLOURS[0], linewidth=1.8, label=label)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize=8, frameon=False, labelcolor=canvas._fg)


def confusion_axes(canvas: PlotCanvas, ax: Any, matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> None:
    """A confusion matrix (rows: true class, columns: predicted) with counts and row percentages."""
    import numpy as np

    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    n = len(class_names)
    ax.set_xticks(range(n), [str(c) for c in class_names])
    ax.set_yticks(range(n), [str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if share[i, j] > 0.6 else "#1a1a1a"
            ax.text(j, i, f"{int(cm[i, j]):,}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8, color=colour)


def draw_curves(canvas: PlotCanvas, h: Any) -> None:
    """A training run's loss (steps; validation per epoch) and validation metrics per epoch.

    ``h`` is an :class:`engine.runs.RunHistory`.
    """
    extra = {k: list(v) for k, v in getattr(h, "extra_points", {}).items() if v}
    step_extra = {k: list(v) for k, v in getattr(h, "step_points", {}).items() if v}
    if not h.loss_points and not h.val_points and not extra and not step_extra:
        canvas.message("Curves appear after the first training steps.")
        return
    loss_points, epoch_loss = list(h.loss_points), list(h.train_epoch_loss)
    if any([y for _, y in pts] == [y for _, y in loss_points] for pts in step_extra.values()):
        # the generic training loss is one of the named ones (e.g. the WGAN critic loss): drawn once
        loss_points, epoch_loss = [], []
    val_points = {k: list(v) for k, v in h.val_points.items()}
    # every other metric of the run kind (critic/generator loss, gamma, N-way accuracy, ...)
    training_terms = ("loss", "penalty", "wasserstein")
    # a term logged per step is drawn once, from its steps
    extra_losses = {k: v for k, v in extra.items() if any(t in k for t in training_terms) and k not in step_extra}
    extra_metrics = {k: v for k, v in extra.items() if not any(t in k for t in training_terms)}
    every = [*loss_points, *epoch_loss, *(p for v in (*val_points.values(), *extra.values(), *step_extra.values())
                                          for p in v)]
    x_max = max([h.epochs, 1, *(x for x, _ in every)]) + 0.2

    def draw(c: PlotCanvas) -> None:
        ax_loss, ax_val = c.reset(1, 2)
        if loss_points:
            xs, ys = zip(*loss_points, strict=True)
            ax_loss.plot(xs, ys, color=SERIES_COLOURS[0], linewidth=1.0, alpha=0.8, label="training")
        if epoch_loss:
            xs, ys = zip(*epoch_loss, strict=True)
            ax_loss.plot(xs, ys, "o", color=SERIES_COLOURS[0], markersize=4, label="training (epoch mean)")
        if val_points.get("loss"):
            xs, ys = zip(*val_points["loss"], strict=True)
            ax_loss.plot(xs, ys, "o-", color=SERIES_COLOURS[1], linewidth=1.5, markersize=4, label="validation")
        for i, (key, pts) in enumerate(step_extra.items()):
            xs, ys = zip(*pts, strict=True)
            ax_loss.plot(xs, ys, color=SERIES_COLOURS[(i + 2) % len(SERIES_COLOURS)], linewidth=1.0, alpha=0.8,
                         label=key.replace("_", " "))
        for i, (key, pts) in enumerate(extra_losses.items()):
            xs, ys = zip(*pts, strict=True)
            ax_loss.plot(xs, ys, "o-", color=SERIES_COLOURS[(i + 2 + len(step_extra)) % len(SERIES_COLOURS)],
                         linewidth=1.5, markersize=4, label=key.replace("_", " "))
        ax_loss.set_title("Loss")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_xlim(0, x_max)
        ax_loss.legend(fontsize=8, frameon=False, labelcolor=c._fg)
        styles = (
            ("auc", "AUC", 0, "-"),
            ("accuracy", "accuracy", 2, "-"),
            ("sensitivity", "sensitivity", 3, "--"),
            ("specificity", "specificity", 4, "--"),
        )
        drew = False
        for key, label, colour, ls in styles:
            pts = val_points.get(key)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax_val.plot(xs, ys, marker="o", linestyle=ls, color=SERIES_COLOURS[colour], markersize=4, label=label)
                drew = True
        values = [y for pts in val_points.values() for _, y in pts]
        for i, (key, pts) in enumerate(extra_metrics.items()):
            xs, ys = zip(*pts, strict=True)
            ax_val.plot(xs, ys, marker="s", linestyle="-", color=SERIES_COLOURS[(i + 5) % len(SERIES_COLOURS)],
                        markersize=4, label=key.replace("_", " "))
            values += list(ys)
            drew = True
        ax_val.set_title("Validation")
        ax_val.set_xlabel("epoch")
        if all(0.0 <= v <= 1.0 for v in values):
            ax_val.set_ylim(0, 1.02)
        ax_val.set_xlim(0, x_max)
        if drew:
            ax_val.legend(fontsize=8, frameon=False, loc="lower right", labelcolor=c._fg)
        else:
            ax_val.text(0.5, 0.5, "after the first epoch", transform=ax_val.transAxes, ha="center", color="#808080")

    canvas.plot(draw)


def draw_results(canvas: PlotCanvas, evaluation: dict[str, Any]) -> None:
    """ROC curve and confusion matrix of an evaluation (:func:`engine.runs.evaluate_run`)."""
    if not evaluation:
        canvas.message("No evaluation")
        return

    def draw(c: PlotCanvas) -> None:
        ax_roc, ax_cm = c.reset(1, 2)
        roc = evaluation.get("roc", {})
        roc_axes(c, ax_roc, roc.get("fpr", []), roc.get("tpr", []), evaluation["metrics"].get("auc"))
        ax_roc.set_title("ROC, validation patches")
        confusion_axes(c, ax_cm, evaluation["confusion_matrix"], evaluation.get("class_names", []))
        ax_cm.set_title("Confusion matrix (rows: true class)")

    canvas.plot(draw)
