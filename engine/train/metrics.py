"""Classification metrics in numpy: AUC (with bootstrap CI), confusion matrix, sensitivity, ...

No scikit-learn dependency; the AUC is the Mann-Whitney statistic with average ranks for ties,
which equals the area under the empirical ROC curve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata


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
    ranks = rankdata(np.asarray(score, dtype=np.float64))
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


def bootstrap_auc_ci(
    y_true: np.ndarray, score: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the binary AUC.

    Resamples patients/patches with replacement ``n_boot`` times; resamples holding one class only
    are skipped. Returns ``(low, high)``; NaNs when fewer than 10 usable resamples.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = y.size
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        a = roc_auc(y[idx], s[idx])
        if not np.isnan(a):
            vals.append(a)
    if len(vals) < 10:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


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
    tp = float((pos_true & pos_pred).sum())
    fn = float((pos_true & ~pos_pred).sum())
    fp = float((~pos_true & pos_pred).sum())
    tn = float((~pos_true & ~pos_pred).sum())
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
