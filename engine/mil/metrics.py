"""Slide-level metrics: AUC (one-vs-rest for several classes) with a bootstrap 95% CI, accuracy,
sensitivity, specificity, confusion matrix, subgroups, and the ROC / confusion-matrix figures.

numpy only (matplotlib imported inside the plotting functions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.mil.clinical import Subgroup
from engine.train.metrics import confusion_matrix, macro_auc, roc_auc, roc_curve

# the AUC, ROC and confusion-matrix primitives are shared with patch training (engine.train.metrics)


def bootstrap_ci(
    y: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of the (one-vs-rest macro) AUC, resampling slides with replacement.

    Returns:
        ``(low, high)``; NaNs when the AUC is undefined.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    m = y.size
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, m, m)
        v = macro_auc(y[idx], probs[idx])
        if not math.isnan(v):
            vals.append(v)
    if len(vals) < max(10, n_boot // 10):
        return float("nan"), float("nan")
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def classification_metrics(
    y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """All slide-level metrics for labels ``y (M,)`` and probabilities ``probs (M, C)``.

    Sensitivity and specificity refer to "any positive class" (N+) vs class 0 (N0): a slide is
    called positive when its predicted class is not 0. Per-class one-vs-rest AUCs are included
    for more than two classes.
    """
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = len(class_names)
    pred = probs.argmax(axis=1)
    truth_pos = y != 0
    pred_pos = pred != 0
    tp = int((truth_pos & pred_pos).sum())
    tn = int((~truth_pos & ~pred_pos).sum())
    fp = int((~truth_pos & pred_pos).sum())
    fn = int((truth_pos & ~pred_pos).sum())
    auc = macro_auc(y, probs)
    lo, hi = bootstrap_ci(y, probs, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {
        "n": int(y.size),
        "auc": auc,
        "auc_ci95": [lo, hi],
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "class_counts": {name: int((y == i).sum()) for i, name in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(y, pred, c).tolist(),
    }
    if c > 2:
        out["auc_per_class"] = {name: roc_auc(y == i, probs[:, i]) for i, name in enumerate(class_names)}
        # N0 vs any N+ with P(N+) = 1 - P(N0): the binary question clinicians ask first
        out["auc_n0_vs_rest"] = roc_auc(truth_pos, 1.0 - probs[:, 0])
    return out


# -- subgroups ------------------------------------------------------------------------------


def subgroup_metrics(
    subgroup: Subgroup,
    rows: Sequence[Mapping[str, Any]],
    y: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Metrics inside the subgroup and in its complement (rows with a known value)."""
    inside, known = subgroup.mask(rows)
    out: dict[str, Any] = {"subgroup": subgroup.text, "unknown": int((~known).sum())}
    for key, sel in (("in", inside & known), ("out", ~inside & known)):
        out[key] = classification_metrics(y[sel], probs[sel], class_names, n_boot=n_boot) if sel.any() else {"n": 0}
    return out


# -- figures ------------------------------------------------------------------------------


def plot_roc(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> None:
    """ROC curve(s) to a PNG: the positive class for binary models, one-vs-rest curves otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    classes = [1] if len(class_names) == 2 else list(range(len(class_names)))
    for c in classes:
        yc = np.asarray(y) == c
        if yc.all() or not yc.any():
            continue
        fpr, tpr, _ = roc_curve(yc, probs[:, c])
        ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {roc_auc(yc, probs[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> None:
    """Confusion matrix (rows true, columns predicted) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.fileio import atomic_path

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.2 * len(class_names) + 2), dpi=120)
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
