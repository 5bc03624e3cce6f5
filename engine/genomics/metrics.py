"""Sample-level metrics of a genomics classifier and the files that hold them.

``metrics.json`` (AUC with a bootstrap 95% CI resampled by patient, accuracy, sensitivity,
specificity with CIs, confusion matrix, calibration bins), ``predictions.csv``
(``sample,patient,truth,predicted,score,group,correct,fold,p_<class>...``), ``per_type_auc.csv``
(``group,n,n_positive,auc,accuracy``), ``roc.png``, ``confusion.png``, ``calibration.png``.
"""

from __future__ import annotations

import csv
import inspect
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir
from engine.train import metrics as tm

PREDICTION_COLUMNS = ("sample", "patient", "truth", "predicted", "score", "group", "correct", "fold")


def grouped_ci95(y: np.ndarray, probs: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """95% bootstrap CIs of AUC / accuracy / sensitivity / specificity, resampling patients.

    Uses :func:`engine.train.metrics.bootstrap_ci95` with ``groups=`` when it has that
    parameter; otherwise resamples whole patients here.
    """
    if "groups" in inspect.signature(tm.bootstrap_ci95).parameters:
        return tm.bootstrap_ci95(y, probs, n_boot=n_boot, seed=seed, groups=groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.nonzero(inv == g)[0] for g in range(len(uniq))] if len(uniq) < len(y) else None
    rng = np.random.default_rng(seed)
    score = probs[:, 1]
    pred = (score >= 0.5).astype(np.int64)
    vals: dict[str, list[float]] = {"auc": [], "accuracy": [], "sensitivity": [], "specificity": []}
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[g] for g in pick]) if members is not None else pick
        yy, pp = y[idx], pred[idx]
        a = tm.roc_auc(yy == 1, score[idx])
        if np.isfinite(a):
            vals["auc"].append(a)
        vals["accuracy"].append(float((yy == pp).mean()))
        s, sp = tm.sensitivity_specificity(yy == 1, pp == 1)
        vals["sensitivity"].append(s)
        vals["specificity"].append(sp)
    out = {}
    for k, v in vals.items():
        arr = np.asarray(v, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        out[k] = [float(x) for x in np.quantile(arr, [0.025, 0.975])] if arr.size >= 10 else [float("nan")] * 2
    return out


def calibration(y: np.ndarray, score: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability bins: mean predicted probability vs observed positive share."""
    edges = np.linspace(0, 1, bins + 1)
    k = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = k == b
        if sel.any():
            out.append({"bin": b, "n": int(sel.sum()), "mean_score": float(score[sel].mean()),
                        "positive_share": float(y[sel].mean())})
    return out


def per_group_auc(y: np.ndarray, score: np.ndarray, groups: Sequence[str]) -> list[dict[str, Any]]:
    g = np.asarray(groups, dtype=object)
    rows = []
    for name in sorted(set(g)):
        sel = g == name
        yy = y[sel]
        rows.append({
            "group": name or "(unknown)", "n": int(sel.sum()), "n_positive": int(yy.sum()),
            "auc": tm.roc_auc(yy == 1, score[sel]), "accuracy": float(((score[sel] >= 0.5) == (yy == 1)).mean()),
        })
    rows.sort(key=lambda r: -r["n"])
    return rows


def compute_metrics(y: np.ndarray, probs: np.ndarray, patients: np.ndarray, groups: Sequence[str],
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    m = tm.classification_metrics(y, probs, positive_class=1)
    ci = grouped_ci95(y, probs, np.asarray(patients), n_boot=n_boot, seed=seed) if n_boot else {}
    out = {k: m[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "loss", "n")}
    out["auc_ci95"] = ci.get("auc", [float("nan")] * 2)
    out["ci95"] = ci
    out["ci_resampling"] = "patients"
    out["confusion_matrix"] = m["confusion_matrix"]
    out["n_patients"] = int(len(set(patients)))
    out["calibration"] = calibration(y, probs[:, 1])
    out["per_type"] = per_group_auc(y, probs[:, 1], groups)
    return out


def write_evaluation(out_dir: str | os.PathLike[str], samples: Sequence[str], patients: Sequence[str],
                     y: np.ndarray, probs: np.ndarray, groups: Sequence[str], class_names: Sequence[str],
                     folds: Sequence[int] | None = None, title: str = "", n_boot: int = 1000,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute metrics and write every evaluation file into ``out_dir``; returns metrics.json's dict."""
    out = ensure_writable_dir(out_dir)
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    metrics = compute_metrics(y, probs, np.asarray(patients), groups, n_boot=n_boot)
    metrics["class_names"] = list(class_names)
    metrics["positive_class"] = class_names[1]
    if extra:
        metrics.update(extra)
    atomic_write_json(out / "metrics.json", metrics)
    write_predictions(out / "predictions.csv", samples, patients, y, probs, groups, class_names, folds)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["group", "n", "n_positive", "auc", "accuracy"], lineterminator="\n")
    w.writeheader()
    for r in metrics["per_type"]:
        w.writerow({**r, "auc": f"{r['auc']:.4f}" if np.isfinite(r["auc"]) else "", "accuracy": f"{r['accuracy']:.4f}"})
    atomic_write_text(out / "per_type_auc.csv", buf.getvalue())
    lo, hi = metrics["auc_ci95"]
    label = f"{title} AUC {metrics['auc']:.3f} ({lo:.3f}-{hi:.3f})" if np.isfinite(lo) else title
    tm.plot_roc([(f"{class_names[1]} (AUC {metrics['auc']:.3f})", y == 1, probs[:, 1])], out / "roc.png", title=label)
    tm.plot_confusion(np.array(metrics["confusion_matrix"]), class_names, out / "confusion.png", title=title or "confusion")
    plot_calibration(metrics["calibration"], out / "calibration.png")
    return metrics


def write_predictions(path: Path, samples: Sequence[str], patients: Sequence[str], y: np.ndarray | None,
                      probs: np.ndarray, groups: Sequence[str], class_names: Sequence[str],
                      folds: Sequence[int] | None = None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*PREDICTION_COLUMNS, *[f"p_{c}" for c in class_names]])
    pred = (probs[:, 1] >= 0.5).astype(np.int64)
    for i, s in enumerate(samples):
        truth = class_names[int(y[i])] if y is not None and y[i] >= 0 else ""
        correct = "" if not truth else int(int(y[i]) == int(pred[i]))
        w.writerow([s, patients[i], truth, class_names[int(pred[i])], f"{probs[i, 1]:.6f}", groups[i], correct,
                    folds[i] if folds is not None else "", *[f"{v:.6f}" for v in probs[i]]])
    atomic_write_text(path, buf.getvalue())


def plot_calibration(bins: list[dict[str, float]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    if bins:
        ax.plot([b["mean_score"] for b in bins], [b["positive_share"] for b in bins], "o-", lw=2)
    ax.set(xlabel="predicted probability of the positive class", ylabel="observed positive share",
           title="calibration", xlim=(0, 1), ylim=(0, 1))
    tm.save_figure(fig, path)


def summary_line(m: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, (int, float)) and np.isfinite(x) else "n/a"

    lo, hi = m.get("auc_ci95", [float("nan")] * 2)
    return (f"samples {m.get('n', 0)}: AUC {f(m.get('auc'))} (95% CI {f(lo)}-{f(hi)}), accuracy {f(m.get('accuracy'))}, "
            f"sensitivity {f(m.get('sensitivity'))}, specificity {f(m.get('specificity'))}")
