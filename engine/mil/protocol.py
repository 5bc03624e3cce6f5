"""The BALNMP training protocol as a recipe, and its one-report comparison.

``balnmp_config`` gives the settings of one BALNMP run (``metascope train mil --recipe balnmp``):
tanh attention (Ilse et al.'s plain attention, as BALNMP published; MetaScope's default stays
gated), random bags of ``bag_size`` tiles (10) drawn from the slide's tiles (from the annotated
tumour area when the manifest has the ROIs: ``mil features`` tiles inside them), a slide scored as
the mean probability over its bags, the clinical vector fused after attention pooling, and a
6:2:2 patient split (train / validation / test).

``run_protocol`` runs the whole experiment (``metascope mil protocol``): the three tasks
(N0 vs N+, N0 vs N+(1-2), N0 vs N+(>2)), each image-only and image + clinical on the same
patient split, then one report: per run the Youden cut-off chosen on the validation slides and,
on the test slides at that cut-off, AUC and accuracy with 95 % bootstrap CIs, sensitivity and
specificity; the same in the age < 50 subgroup; and per task a paired DeLong test of the AUC
difference between image + clinical and image only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DatasetError
from engine.jobs import CancelToken, ProgressCallback

#: task name -> label scheme (rows of other classes are left out of that task)
TASKS = {
    "N0 vs N+": "binary",
    "N0 vs N+(1-2)": "N0=N0,N+(1-2)=N+(1-2)",
    "N0 vs N+(>2)": "N0=N0,N+(>2)=N+(>2)",
}
BAG_SIZE = 10


def balnmp_config(manifest: str, features_dir: str, **overrides: Any) -> Any:
    """A :class:`~engine.mil.train.MILTrainConfig` with BALNMP's protocol; ``overrides`` win."""
    from engine.mil.train import MILTrainConfig

    base = MILTrainConfig(
        manifest=manifest, features_dir=features_dir, attention="tanh", bag_size=BAG_SIZE,
        val_fraction=0.2, test_fraction=0.2, folds=0, recipe="balnmp",
    )
    return replace(base, **overrides) if overrides else base


# --------------------------------------------------------------------------------------------
# statistics


def youden_cutoff(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (Youden's J) on ``(y, score)``."""
    from engine.train.metrics import roc_curve

    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return 0.5
    fpr, tpr, thr = roc_curve(y, np.asarray(score, dtype=np.float64))
    j = tpr - fpr
    k = int(np.argmax(j[1:])) + 1  # skip the +inf start point
    return float(thr[k])


def _midrank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    ranks = np.zeros(n)
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n)
    out[order] = ranks
    return out


def delong_paired(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> dict[str, float]:
    """DeLong's test of two correlated AUCs on the same cases (fast form, Sun & Xu 2014).

    Returns:
        ``{"auc_1", "auc_2", "difference" (1 - 2), "se", "z", "p_value"}``; NaNs without both classes.
    """
    from scipy.stats import norm

    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        nan = float("nan")
        return {"auc_1": nan, "auc_2": nan, "difference": nan, "se": nan, "z": nan, "p_value": nan}
    aucs, v01, v10 = [], [], []
    for s in (np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)):
        pos, neg = s[y], s[~y]
        tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
        aucs.append((tz[:m].sum() / m - (m + 1) / 2) / n)
        v01.append((tz[:m] - tx) / n)
        v10.append(1.0 - (tz[m:] - ty) / m)
    sx = np.cov(np.array(v01)) if m > 1 else np.zeros((2, 2))
    sy = np.cov(np.array(v10)) if n > 1 else np.zeros((2, 2))
    cov = sx / m + sy / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(var) if var > 0 else 0.0
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    p = float(2 * norm.sf(abs(z))) if math.isfinite(z) else 0.0
    return {"auc_1": float(aucs[0]), "auc_2": float(aucs[1]), "difference": diff, "se": se, "z": float(z), "p_value": p}


def metrics_at(y: np.ndarray, score: np.ndarray, cutoff: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUC and accuracy with 95 % percentile-bootstrap CIs, sensitivity and specificity at ``cutoff``."""
    from engine.train.metrics import roc_auc

    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    pred = s >= cutoff

    def point(idx: np.ndarray) -> tuple[float, float, float, float]:
        yy, pp = y[idx], pred[idx]
        auc = roc_auc(yy, s[idx]) if yy.any() and not yy.all() else float("nan")
        sens = float((pp & yy).sum() / yy.sum()) if yy.any() else float("nan")
        spec = float((~pp & ~yy).sum() / (~yy).sum()) if (~yy).any() else float("nan")
        return float(auc), float((pp == yy).mean()), sens, spec

    auc, acc, sens, spec = point(np.arange(y.size))
    rng = np.random.default_rng(seed)
    boots = np.array([point(rng.integers(0, y.size, y.size)) for _ in range(n_boot)]) if y.size else np.zeros((0, 4))

    def ci(col: int) -> list[float]:
        v = boots[:, col][np.isfinite(boots[:, col])] if boots.size else np.zeros(0)
        return [float(x) for x in np.quantile(v, [0.025, 0.975])] if v.size >= 10 else [float("nan")] * 2

    return {
        "n": int(y.size), "n_positive": int(y.sum()), "cutoff": float(cutoff),
        "auc": auc, "auc_ci95": ci(0), "accuracy": acc, "accuracy_ci95": ci(1),
        "sensitivity": sens, "sensitivity_ci95": ci(2), "specificity": spec, "specificity_ci95": ci(3),
    }


# --------------------------------------------------------------------------------------------
# the experiment


def _fold_scores(run_dir: Path, cohort: Any) -> dict[str, Any]:
    fr = json.loads((run_dir / "fold_1.json").read_text(encoding="utf-8"))
    by_id = cohort.by_id()
    pos = len(cohort.class_names) - 1

    def part(ids_key: str, probs_key: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        ids = list(fr[ids_key])
        y = np.array([by_id[s].label == pos for s in ids], dtype=bool)
        p = np.array([row[pos] for row in fr[probs_key]], dtype=np.float64)
        return ids, y, p

    return {"val": part("val_ids", "val_probs"), "test": part("test_ids", "test_probs")}


def _subgroup_mask(ids: list[str], cohort: Any, column: str, limit: float) -> np.ndarray:
    by_id = cohort.by_id()
    vals = [by_id[s].clinical.get(column) for s in ids]
    return np.array([isinstance(v, (int, float)) and v < limit for v in vals], dtype=bool)


def _train_one(cfg: Any, run_dir: Path, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
    from engine.mil.train import train_mil
    from engine.train.runfolder import read_state

    st = read_state(run_dir) or {}
    if st.get("status") == "finished" and (run_dir / "fold_1.json").is_file():
        return
    train_mil(cfg, run_dir, resume=(run_dir / "config.json").is_file(), progress=progress, cancel=cancel)


def run_protocol(
    manifest: str | os.PathLike[str],
    features_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    clinical: tuple[str, ...],
    *,
    tasks: tuple[str, ...] = tuple(TASKS),
    age_column: str = "age",
    age_limit: float = 50.0,
    bootstrap: int = 1000,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train and compare image-only vs image + clinical for BALNMP's tasks; write ``report.json`` / ``report.md``.

    Args:
        clinical: the clinical columns of the image + clinical runs (non-empty).
        tasks: names from :data:`TASKS`.
        bootstrap: resamples of the report's 95 % CIs.
        overrides: :class:`~engine.mil.train.MILTrainConfig` fields (epochs, seed, device...).

    Raises:
        ConfigError: no clinical columns, an unknown task; DatasetError: a task without two classes.
    """
    from engine.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir
    from engine.mil.cohort import load_cohort

    if not clinical:
        raise ConfigError("the protocol compares image only with image + clinical: give the clinical columns (--clinical)")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    out_p = ensure_writable_dir(out)
    manifest_s, features_s = str(Path(manifest).resolve()), str(Path(features_dir).resolve())
    report: dict[str, Any] = {"recipe": "balnmp", "manifest": manifest_s, "clinical": list(clinical),
                              "subgroup": f"{age_column} < {age_limit:g}", "tasks": {}}
    for task in tasks:
        cohort = load_cohort(manifest_s, TASKS[task])
        if len(set(e.label for e in cohort.entries)) < 2:
            raise DatasetError(f"task {task}: the cohort does not hold both classes")
        rows: dict[str, Any] = {}
        scores = {}
        for variant, cols in (("image", ()), ("image+clinical", tuple(clinical))):
            cfg = balnmp_config(manifest_s, features_s, labels=TASKS[task], clinical=cols, **overrides)
            run_dir = out_p / _slug(task) / variant
            _train_one(cfg, run_dir, progress, cancel)
            sc = _fold_scores(run_dir, cohort)
            scores[variant] = sc
            _, yv, pv = sc["val"]
            ids, yt, pt = sc["test"]
            cut = youden_cutoff(yv, pv)
            sub = _subgroup_mask(ids, cohort, age_column, age_limit)
            rows[variant] = {
                "run_dir": str(run_dir), "n_val": int(yv.size),
                "test": metrics_at(yt, pt, cut, bootstrap),
                "subgroup": metrics_at(yt[sub], pt[sub], cut, bootstrap),
            }
        ids_i, yt, p_img = scores["image"]["test"]
        ids_c, _, p_cli = scores["image+clinical"]["test"]
        if ids_i != ids_c:  # the same patients by construction (same cohort, seed and split)
            raise DatasetError(f"task {task}: the two runs were tested on different slides; cannot pair them")
        rows["delong"] = {"compared": "image+clinical minus image", **delong_paired(yt, p_cli, p_img)}
        report["tasks"][task] = rows
    atomic_write_json(out_p / "report.json", report)
    atomic_write_text(out_p / "report.md", report_markdown(report))
    return report


def _slug(task: str) -> str:
    return task.lower().replace(" ", "_").replace("+", "p").replace("(", "").replace(")", "").replace(">", "gt")


def _fmt(m: dict[str, Any], key: str) -> str:
    v, (lo, hi) = m[key], m[f"{key}_ci95"]
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3f} ({lo:.3f}-{hi:.3f})" if math.isfinite(lo) else f"{v:.3f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The protocol report as a Markdown table."""
    lines = [
        "# BALNMP protocol report", "",
        f"Clinical columns of the image + clinical runs: {', '.join(report['clinical'])}. Cut-off: Youden's J on the "
        "validation slides, applied to the test slides. 95 % CIs: percentile bootstrap over test slides.", "",
        "| task | model | slides (pos) | cut-off | AUC (95% CI) | accuracy (95% CI) | sensitivity | specificity |"
        f" {report['subgroup']}: slides | AUC | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, rows in report["tasks"].items():
        for variant in ("image", "image+clinical"):
            t, s = rows[variant]["test"], rows[variant]["subgroup"]
            lines.append(
                f"| {task} | {variant} | {t['n']} ({t['n_positive']}) | {t['cutoff']:.3f} | {_fmt(t, 'auc')} | "
                f"{_fmt(t, 'accuracy')} | {t['sensitivity']:.3f} | {t['specificity']:.3f} | {s['n']} | "
                f"{_fmt(s, 'auc')} | {_fmt(s, 'accuracy')} |"
            )
    lines += ["", "Paired DeLong test, image + clinical vs image only (same test slides):", "",
              "| task | AUC image | AUC image+clinical | difference | z | p |", "|---|---|---|---|---|---|"]
    for task, rows in report["tasks"].items():
        d = rows["delong"]
        lines.append(f"| {task} | {d['auc_2']:.3f} | {d['auc_1']:.3f} | {d['difference']:+.3f} | {d['z']:.2f} | {d['p_value']:.3g} |")
    return "\n".join(lines) + "\n"
