"""Writing a slide-level evaluation: metrics JSON, per-slide predictions CSV, ROC and confusion
matrix PNGs, and optional subgroup results (e.g. ``age<50``)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir
from engine.mil.clinical import Subgroup
from engine.mil.cohort import CohortEntry
from engine.mil.metrics import classification_metrics, plot_confusion, plot_slide_roc, subgroup_metrics


def write_evaluation(
    out_dir: str | os.PathLike[str],
    rows: Sequence[CohortEntry],
    probs: np.ndarray,
    class_names: Sequence[str],
    title: str = "",
    n_boot: int = 1000,
    subgroup: Subgroup | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute metrics for ``rows`` with probabilities ``probs (M, C)`` and write them to ``out_dir``.

    Files: ``metrics.json``, ``predictions.csv`` (slide, patient, label, predicted, one
    probability column per class), ``roc.png``, ``confusion.png``; with a subgroup also
    ``subgroup.json`` (metrics inside and outside the subgroup).

    Returns:
        The metrics dict (as in ``metrics.json``).

    Raises:
        OutputError: ``out_dir`` cannot be written.
    """
    out = ensure_writable_dir(out_dir)
    y = np.array([r.label for r in rows], dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(rows), len(class_names))
    patients = [r.patient_id for r in rows]
    metrics = classification_metrics(y, probs, class_names, n_boot=n_boot, patients=patients)
    metrics["class_names"] = list(class_names)
    if subgroup is not None:
        sub = subgroup_metrics(
            subgroup, [r.clinical for r in rows], y, probs, class_names, n_boot=n_boot, patients=patients
        )
        metrics["subgroup"] = sub
        atomic_write_json(out / "subgroup.json", sub)
    if extra:
        metrics.update(extra)
    atomic_write_json(out / "metrics.json", metrics)

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["slide", "patient", "label", "predicted", *[f"p_{c}" for c in class_names]])
    pred = probs.argmax(axis=1)
    for r, p, k in zip(rows, probs, pred, strict=True):
        w.writerow([r.slide_id, r.patient_id, class_names[r.label], class_names[int(k)], *[f"{v:.6f}" for v in p]])
    atomic_write_text(out / "predictions.csv", buf.getvalue())

    auc = metrics["auc"]
    lo, hi = metrics["auc_ci95"]
    label = f"{title}  AUC {auc:.3f} ({lo:.3f}-{hi:.3f})" if np.isfinite(auc) and np.isfinite(lo) else title
    plot_slide_roc(y, probs, class_names, out / "roc.png", title=label)
    plot_confusion(np.array(metrics["confusion_matrix"]), class_names, out / "confusion.png", title=title or "confusion matrix")
    return metrics


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """Short human-readable summary of a metrics dict (CLI output)."""

    def f(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, (int, float)) and np.isfinite(x) else "n/a"

    lo, hi = metrics.get("auc_ci95", [float("nan"), float("nan")])
    lines = [
        f"slides {metrics.get('n', 0)}: AUC {f(metrics.get('auc'))} (95% CI {f(lo)}-{f(hi)}), "
        f"accuracy {f(metrics.get('accuracy'))}, sensitivity {f(metrics.get('sensitivity'))}, "
        f"specificity {f(metrics.get('specificity'))}"
    ]
    sub = metrics.get("subgroup")
    if sub:
        for key, name in (("in", sub["subgroup"]), ("out", f"not {sub['subgroup']}")):
            m = sub[key]
            if m.get("n"):
                lines.append(
                    f"  subgroup {name}: {m['n']} slides, AUC {f(m.get('auc'))}, accuracy {f(m.get('accuracy'))}"
                )
            else:
                lines.append(f"  subgroup {name}: no slides")
        if sub.get("unknown"):
            lines.append(f"  {sub['unknown']} slides without a value for the subgroup column")
    return lines
