"""Slide-level metrics: AUC (one-vs-rest for several classes) with a bootstrap 95% CI, accuracy,
sensitivity and specificity of "any positive class" vs class 0, subgroups, and the ROC /
confusion-matrix figures.

The primitives (AUC, bootstrap, ROC, confusion matrix, figures) are the ones patch training
uses: :mod:`engine.train.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.mil.clinical import Subgroup
from engine.train.metrics import (
    bootstrap_auc_ci,
    confusion_matrix,
    macro_auc,
    plot_confusion,
    plot_roc,
    roc_auc,
    sensitivity_specificity,
)

__all__ = ["classification_metrics", "plot_confusion", "plot_slide_roc", "subgroup_metrics"]


def classification_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    patients: Sequence[str] | np.ndarray | None = None,
) -> dict[str, Any]:
    """All slide-level metrics for labels ``y (M,)`` and probabilities ``probs (M, C)``.

    Sensitivity and specificity refer to "any positive class" (N+) vs class 0 (N0): a slide is
    called positive when its predicted class is not 0. Per-class one-vs-rest AUCs are included
    for more than two classes.

    ``patients`` (``(M,)`` patient id per slide): when some patient has several slides, the AUC
    CI resamples whole patients (cluster bootstrap) instead of single slides;
    ``ci_resampling`` says which (``"patient"`` or ``"slide"``).
    """
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = len(class_names)
    pred = probs.argmax(axis=1)
    truth_pos = y != 0
    pred_pos = pred != 0
    sensitivity, specificity = sensitivity_specificity(truth_pos, pred_pos)
    auc = macro_auc(y, probs)
    groups = None if patients is None else np.asarray(patients, dtype=str)
    if groups is not None and np.unique(groups).size == groups.size:
        groups = None  # one slide per patient: resampling patients is resampling slides
    lo, hi = bootstrap_auc_ci(y, probs, n_boot=n_boot, seed=seed, groups=groups)
    out: dict[str, Any] = {
        "n": int(y.size),
        "auc": auc,
        "auc_ci95": [lo, hi],
        "ci_resampling": "slide" if groups is None else "patient",
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "sensitivity": sensitivity,
        "specificity": specificity,
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
    patients: Sequence[str] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics inside the subgroup and in its complement (rows with a known value)."""
    inside, known = subgroup.mask(rows)
    out: dict[str, Any] = {"subgroup": subgroup.text, "unknown": int((~known).sum())}
    pat = None if patients is None else np.asarray(patients, dtype=str)
    for key, sel in (("in", inside & known), ("out", ~inside & known)):
        out[key] = (
            classification_metrics(y[sel], probs[sel], class_names, n_boot=n_boot, patients=None if pat is None else pat[sel])
            if sel.any()
            else {"n": 0}
        )
    return out


# -- figures ------------------------------------------------------------------------------


def plot_slide_roc(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> None:
    """ROC curve(s) to a PNG: the positive class for binary models, one-vs-rest curves otherwise."""
    classes = [1] if len(class_names) == 2 else range(len(class_names))
    y = np.asarray(y)
    curves = [(f"{class_names[c]} (AUC {roc_auc(y == c, probs[:, c]):.3f})", y == c, probs[:, c]) for c in classes]
    plot_roc(curves, path, title=title or "ROC")
