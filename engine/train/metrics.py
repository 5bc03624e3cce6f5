"""Classification metrics in numpy, shared by patch training and slide-level MIL: AUC (binary
and one-vs-rest macro) with bootstrap CIs, ROC curve, confusion matrix, sensitivity and
specificity, and the ROC / confusion-matrix PNG figures.

No scikit-learn dependency; the AUC is the Mann-Whitney statistic with average ranks for ties,
which equals the area under the empirical ROC curve. matplotlib is imported inside the plotting
functions only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve for binary labels.

    Args:
        y_true: ``(N,)`` 0/1 (or bool) labels.
        score: ``(N,)`` scores, higher = more positive.

    Returns:
        AUC in [0, 1], or NaN when only one class is present.
    """
    y = np.asarray(y_true).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # 1-based ranks, ties sharing their average rank (numpy only: keeps scipy out of the viewer)
    _, inverse, counts = np.unique(np.asarray(score, dtype=np.float64), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.ravel()]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest AUC averaged over classes present (binary: AUC of class 1).

    Args:
        y_true: ``(N,)`` int class indices.
        probs: ``(N, C)`` class probabilities.
    """
    probs = np.asarray(probs)
    if probs.shape[1] == 2:
        return roc_auc(y_true == 1, probs[:, 1])
    aucs = [roc_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """``(N,)`` int codes 0..G-1 of a groups array (any hashable labels) and G."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one entry per case ({n}), got shape {g.shape}")
    _, codes = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    codes = codes.ravel().astype(np.int64)
    return codes, int(codes.max()) + 1 if n else 0


class _Clusters:
    """Cases sorted by group, for drawing cluster-bootstrap resamples quickly."""

    def __init__(self, codes: np.ndarray, n_groups: int) -> None:
        self.n_groups = n_groups
        self.order = np.argsort(codes, kind="stable")
        self.sizes = np.bincount(codes, minlength=n_groups)
        self.starts = np.r_[0, np.cumsum(self.sizes)[:-1]]

    def resample(self, rng: np.random.Generator) -> np.ndarray:
        """Indices of one resample: ``n_groups`` groups drawn with replacement, each with all its cases."""
        picked = rng.integers(0, self.n_groups, self.n_groups)
        sizes = self.sizes[picked]
        # position k of the output is case (k - first output position of its group) of that group
        first = np.cumsum(sizes) - sizes
        offsets = np.arange(int(sizes.sum())) - np.repeat(first, sizes)
        return self.order[np.repeat(self.starts[picked], sizes) + offsets]


def resampling_unit(groups: Any, unit: str) -> str:
    """The ``"ci_resampling"`` label for metrics.json: ``unit`` when groups are given, else ``"case"``."""
    return unit if groups is not None else "case"


def bootstrap_auc_ci(
    y_true: np.ndarray,
    score: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC, resampling cases with replacement.

    Args:
        y_true: ``(N,)`` labels: 0/1 (or bool) with a 1-D ``score``, class indices with 2-D.
        score: ``(N,)`` positive-class scores (binary AUC), or ``(N, C)`` class probabilities
            (:func:`macro_auc`).
        n_boot: resamples; those whose AUC is undefined (one class only) are skipped.
        groups: optional ``(N,)`` group of each case (patient, slide). When given, whole groups
            are resampled with replacement (cluster bootstrap), so cases from one patient never
            count as independent evidence; ``None`` resamples single cases.

    Returns:
        ``(low, high)``; NaNs when fewer than ``max(10, n_boot // 10)`` resamples were usable.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(y_true).astype(bool) if s.ndim == 1 else np.asarray(y_true, dtype=np.int64)
    auc = roc_auc if s.ndim == 1 else macro_auc
    rng = np.random.default_rng(seed)
    n = y.size
    clusters = _Clusters(*_group_index(groups, n)) if groups is not None else None
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n) if clusters is None else clusters.resample(rng)
        a = auc(y[idx], s[idx])
        if not np.isnan(a):
            vals.append(a)
    if len(vals) < max(10, n_boot // 10):
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _resampled_counts(
    stats: np.ndarray, n_boot: int, rng: np.random.Generator, codes: np.ndarray | None, n_groups: int
) -> np.ndarray:
    """``(n_boot, K)`` sums of the ``(N, K)`` per-case ``stats`` over bootstrap resamples (single
    cases, or whole groups when ``codes`` is given), in bounded memory."""
    if codes is not None:
        # per-group sums, then resample groups: a resample's sum is the sum of its groups' sums
        per_group = np.zeros((n_groups, stats.shape[1]), dtype=np.float64)
        np.add.at(per_group, codes, stats)
        stats, n = per_group, n_groups
    else:
        n = stats.shape[0]
    # resample indices in chunks: one (n_boot, N) index array is 8 GB for 1000 x 1M patches
    chunk = max(1, (1 << 22) // max(n, 1))
    parts = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, (min(chunk, n_boot - start), n))
        parts.append(np.stack([stats[:, k][idx].sum(1) for k in range(stats.shape[1])], 1))
    return np.concatenate(parts).astype(np.float64)


def bootstrap_ci95(
    y_true: np.ndarray,
    probs: np.ndarray,
    positive_class: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Percentile bootstrap 95 % CIs of AUC, accuracy, sensitivity and specificity.

    Predictions are made as in :func:`classification_metrics` (threshold 0.5 on the positive
    class for binary models, argmax otherwise).

    Args:
        y_true: ``(N,)`` int class indices.
        probs: ``(N, C)`` class probabilities.
        positive_class: class for AUC, sensitivity and specificity (one-vs-rest when C > 2).
        groups: optional ``(N,)`` group (patient / slide) of each case: whole groups are
            resampled (cluster bootstrap) instead of single cases; see :func:`bootstrap_auc_ci`.

    Returns:
        ``{"auc" | "accuracy" | "sensitivity" | "specificity": [low, high]}``; NaNs where fewer
        than 10 resamples define the metric.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    score = p[:, positive_class]
    pos = y == positive_class
    pred_pos = (score >= 0.5) if p.shape[1] == 2 else (p.argmax(1) == positive_class)
    correct = (p.argmax(1) == y) if p.shape[1] > 2 else (pred_pos == pos)
    lo, hi = bootstrap_auc_ci(pos, score, n_boot, seed=seed, groups=groups)
    rng = np.random.default_rng(seed)
    codes, n_groups = _group_index(groups, y.size) if groups is not None else (None, 0)
    stats = np.stack([np.ones(y.size), correct, pos & pred_pos, pos, ~pos & ~pred_pos], 1).astype(np.int64)
    if codes is None:
        stats = stats[:, 1:]  # resample size is always N: identical draws to the ungrouped path
    counts = _resampled_counts(stats, n_boot, rng, codes, n_groups)
    size = counts[:, 0] if codes is not None else np.full(counts.shape[0], float(y.size))
    n_correct, tp, n_pos, tn = (counts[:, 1:] if codes is not None else counts).T
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = {"accuracy": n_correct / size, "sensitivity": tp / n_pos, "specificity": tn / (size - n_pos)}

    def ci(v: np.ndarray) -> list[float]:
        v = v[np.isfinite(v)]
        return [float(x) for x in np.quantile(v, [0.025, 0.975])] if v.size >= 10 else [float("nan")] * 2

    return {"auc": [lo, hi], **{k: ci(v) for k, v in rates.items()}}


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve.

    Returns:
        ``(fpr, tpr, thresholds)`` arrays starting at (0, 0) with threshold +inf.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # one point per distinct threshold
    distinct = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thr = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thr


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts; rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_counts(truth_pos: np.ndarray, pred_pos: np.ndarray) -> tuple[float, float, float, float]:
    """``(tp, fn, fp, tn)`` of bool ``(N,)`` truth and prediction ("is positive")."""
    t = np.asarray(truth_pos, dtype=bool)
    p = np.asarray(pred_pos, dtype=bool)
    return float((t & p).sum()), float((t & ~p).sum()), float((~t & p).sum()), float((~t & ~p).sum())


def sensitivity_specificity(truth_pos: np.ndarray, pred_pos: np.ndarray) -> tuple[float, float]:
    """Sensitivity (recall of positives) and specificity of bool ``(N,)`` arrays; NaN when undefined."""
    tp, fn, fp, tn = binary_counts(truth_pos, pred_pos)
    return _safe_div(tp, tp + fn), _safe_div(tn, tn + fp)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, positive_class: int = 1, threshold: float = 0.5
) -> dict[str, Any]:
    """Metrics for a validation/test set.

    Args:
        y_true: ``(N,)`` int class indices.
        probs: ``(N, C)`` class probabilities.
        positive_class: class for sensitivity/specificity/F1 (one-vs-rest when C > 2).
        threshold: decision threshold on the positive-class probability (binary); multi-class
            predictions are the argmax.

    Returns:
        ``auc`` (binary AUC, or macro one-vs-rest), ``accuracy``, ``sensitivity`` (recall of the
        positive class), ``specificity``, ``precision``, ``f1``, ``confusion_matrix`` (list of
        lists), ``n``, ``loss`` (mean cross-entropy).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    c = p.shape[1]
    pred = (p[:, positive_class] >= threshold).astype(np.int64) if c == 2 else p.argmax(1)
    if c == 2 and positive_class == 0:
        pred = 1 - pred
    cm = confusion_matrix(y, pred, c)
    pos_true = y == positive_class
    pos_pred = pred == positive_class
    tp, fn, fp, tn = binary_counts(pos_true, pos_pred)
    sens = _safe_div(tp, tp + fn)
    prec = _safe_div(tp, tp + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], eps, 1.0)))) if y.size else float("nan")
    return {
        "auc": macro_auc(y, p) if c > 2 else roc_auc(pos_true, p[:, positive_class]),
        "accuracy": _safe_div(float((pred == y).sum()), float(y.size)),
        "sensitivity": sens,
        "specificity": _safe_div(tn, tn + fp),
        "precision": prec,
        "f1": f1,
        "loss": loss,
        "n": int(y.size),
        "confusion_matrix": cm.tolist(),
    }


# -- figures ---------------------------------------------------------------------------------------


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write a matplotlib ``Figure`` to a PNG atomically (never a half-written file)."""
    from engine.fileio import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_roc(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | os.PathLike[str], title: str = "ROC"
) -> None:
    """ROC curves to a PNG.

    Args:
        curves: per curve ``(legend label, (N,) bool truth, (N,) score)``; curves whose truth
            holds one class only are left out (their ROC is undefined).
        path: the PNG to write.
    """
    # a bare Figure, not pyplot: no global state, safe in worker threads and next to Qt
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    for label, truth, score in curves:
        t = np.asarray(truth, dtype=bool)
        if t.all() or not t.any():
            continue
        fpr, tpr, _ = roc_curve(t, score)
        ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str], title: str = "confusion matrix"
) -> None:
    """Confusion matrix ``(C, C)`` (rows true, columns predicted) to a PNG."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    side = 1.2 * len(class_names)
    fig = Figure(figsize=(side + 2.5, side + 2), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    save_figure(fig, path)
