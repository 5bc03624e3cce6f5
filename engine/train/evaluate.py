"""Evaluate and apply an exported patch classifier (ONNX, via :mod:`engine.infer.session`).

``evaluate`` scores a labelled dataset: accuracy, AUC with a bootstrap 95 % CI, sensitivity,
specificity, F1, confusion matrix, ROC and calibration plots, ``metrics.json`` and per-patch
predictions. ``predict`` writes class probabilities for any patch set, or a Kaggle submission.
Both run the exact model package a user ships, not the torch checkpoint.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError, ModelPackageError
from engine.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report
from engine.train.metrics import bootstrap_ci95, classification_metrics, plot_roc, save_figure

N_BOOT = 1000


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """What :func:`evaluate` wrote.

    Attributes:
        out_dir: output folder (``metrics.json``, ``predictions.csv``, ``roc.png``, ``calibration.png``).
        metrics: the content of ``metrics.json``.
    """

    out_dir: Path
    metrics: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def dihedral(batch: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 dihedral transforms (4 rotations x optional flip) of ``(N, H, W, 3)``."""
    out = np.rot90(batch, k % 4, axes=(1, 2))
    if k >= 4:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def predict_probabilities(
    session: Any,
    ds: Any,
    indices: np.ndarray | None = None,
    *,
    tta: bool = False,
    batch_size: int = 256,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Class probabilities of patches.

    Args:
        session: a :class:`engine.infer.session.ModelSession` of a patch classifier.
        ds: a PatchDataset.
        indices: patches to score (default all).
        tta: average over the 8 dihedral transforms (rotations and flips; 8x the compute).
        batch_size: patches per inference call.

    Returns:
        float32 ``(n, C)`` probabilities in the model's class order.
    """
    from engine.infer.preprocess import Preprocessor, to_probabilities

    idx = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64)
    pre = Preprocessor(session.metadata)
    n_cls = max(2, len(session.metadata.class_names))
    out = np.empty((idx.size, n_cls), dtype=np.float32)
    read_many = getattr(ds, "read_many", None)
    n_batches = max(1, -(-idx.size // batch_size))
    for b, start in enumerate(range(0, idx.size, batch_size)):
        check_cancel(cancel)
        chunk = idx[start : start + batch_size]
        tiles = read_many(chunk) if read_many is not None else np.stack([ds.read(int(i)) for i in chunk])
        views = range(8) if tta else range(1)
        acc = np.zeros((chunk.size, n_cls), dtype=np.float64)
        for k in views:
            acc += to_probabilities(session.run(pre(dihedral(tiles, k) if k else tiles)), session.metadata)
        out[start : start + chunk.size] = acc / len(views)
        report(progress, ProgressEvent("predict", b + 1, n_batches, f"{min(start + batch_size, idx.size)}/{idx.size} patches"))
    return out


def _label_map(ds_names: tuple[str, ...], model_names: tuple[str, ...]) -> tuple[np.ndarray, str | None]:
    """Dataset class index -> model class index, matched by name (else by position)."""
    if all(n in model_names for n in ds_names):
        return np.array([model_names.index(n) for n in ds_names], dtype=np.int64), None
    if len(ds_names) == len(model_names):
        note = (
            f"dataset classes ({', '.join(ds_names)}) differ from the model's ({', '.join(model_names)}); "
            "matched by position"
        )
        return np.arange(len(ds_names), dtype=np.int64), note
    raise DatasetError(
        f"the dataset's classes ({', '.join(ds_names)}) do not match the model's ({', '.join(model_names)})"
    )


def _open(data: str | os.PathLike[str], fmt: str, mpp: float | None, labelled: bool) -> Any:
    from engine.data import open_dataset

    return open_dataset(data, fmt=fmt, mpp=mpp, labelled=labelled)


def _load(model_path: str | os.PathLike[str], device: str) -> Any:
    from engine.infer.session import load_model

    session = load_model(model_path, device=device)
    if session.metadata.task != "patch_classification":
        raise ModelPackageError(
            f"{Path(model_path).name} is a {session.metadata.task} model; evaluate/predict need a patch classifier"
        )
    return session


def evaluate(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    mpp: float | None = None,
    tta: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    dataset: Any | None = None,
    threshold: float | None = None,
) -> EvaluationResult:
    """Score a model package on a labelled dataset.

    Writes into ``out_dir``: ``metrics.json`` (metrics, 95 % CIs, confusion matrix, model and
    data identity; ``ci_resampling`` names the unit the bootstrap resampled: whole patients /
    slides when the data has groups, else ``"case"``), ``predictions.csv`` (id, label, one probability column per class,
    predicted, source file and dataset index of each patch),
    ``roc.png`` and ``calibration.png`` (binary models; multi-class: positive class vs rest).
    Probabilities are the package's calibrated ones; binary decisions (accuracy, sensitivity,
    specificity, F1, ``predicted``) use ``threshold``, default the package's operating threshold
    (:func:`engine.infer.lesions.operating_threshold`, else 0.5).

    Raises:
        ModelPackageError: not a patch-classifier package.
        DatasetError: unreadable or unlabelled data, classes that do not match the model.
    """
    t0 = time.monotonic()
    session = _load(model_path, device)
    meta = session.metadata
    ds = dataset if dataset is not None else _open(data, fmt, mpp, True)
    if len(ds) == 0:
        raise DatasetError(f"no patches found in {data}")
    labels = np.asarray(ds.labels, dtype=np.int64)
    if not ds.class_names or (labels < 0).any():
        raise DatasetError("evaluation needs every patch labelled (use predict for unlabelled patches)")
    mapping, note = _label_map(tuple(ds.class_names), tuple(meta.class_names))
    y = mapping[labels]
    notes = [note] if note else []
    if meta.input_mpp and ds.mpp and abs(ds.mpp / meta.input_mpp - 1) > 0.1:
        notes.append(f"the data is at {ds.mpp:g} um/px but the model was trained at {meta.input_mpp:g} um/px")
    out = ensure_writable_dir(out_dir)
    probs = predict_probabilities(session, ds, tta=tta, batch_size=batch_size, progress=progress, cancel=cancel)
    positive = int(meta.positive_class)
    thr = _threshold(meta, threshold)
    m = classification_metrics(y, probs, positive, threshold=thr)
    report(progress, ProgressEvent("metrics", 0, 1, "bootstrap confidence intervals"))
    from engine.data.base import resampling_groups

    # patches of one slide / patient are not independent: resample whole groups when known
    groups, unit = resampling_groups(ds)
    cis = bootstrap_ci95(y, _at_half(probs, positive, thr), positive, n_boot=N_BOOT, groups=groups)
    result: dict[str, Any] = {
        "model": session.describe(),
        "data": {"path": str(data), "patches": int(len(ds)), "format": getattr(ds, "fmt", None), "mpp": ds.mpp,
                 "class_counts": {n: int((labels == k).sum()) for k, n in enumerate(ds.class_names)}},
        "class_names": list(meta.class_names),
        "positive_class": meta.class_names[positive],
        "tta": tta,
        "threshold": thr,
        "threshold_source": "option" if threshold is not None else (
            "model operating threshold" if "operating_threshold" in (meta.extra or {}) else "default 0.5"),
        "calibration": (meta.extra or {}).get("calibration", {}).get("method", "none")
        if isinstance((meta.extra or {}).get("calibration"), dict) else "none",
        **{k: m[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "loss", "n")},
        "ci95": cis,
        "ci_resampling": unit,
        "bootstrap_resamples": N_BOOT,
        "confusion_matrix": m["confusion_matrix"],
        "notes": notes,
        "duration_s": round(time.monotonic() - t0, 2),
    }
    files = [out / "metrics.json", out / "predictions.csv"]
    _write_predictions(out / "predictions.csv", ds, probs, meta.class_names, [meta.class_names[i] for i in y], positive, thr)
    files += _plots(out, y == positive, probs[:, positive], meta.class_names[positive], m["auc"], cis["auc"])
    atomic_write_json(out / "metrics.json", result)
    report(progress, ProgressEvent("metrics", 1, 1, f"AUC {m['auc']:.4f}, accuracy {m['accuracy']:.4f}"))
    return EvaluationResult(out, result, files)


def _threshold(meta: Any, override: float | None) -> float:
    """The decision threshold: ``override``, else the package's operating threshold, else 0.5."""
    from engine.errors import ConfigError
    from engine.infer.lesions import operating_threshold

    if override is not None and not (0.0 <= float(override) <= 1.0):
        raise ConfigError(f"--threshold must be between 0 and 1, got {override}")
    return operating_threshold(meta, override)


def _at_half(probs: np.ndarray, positive: int, thr: float) -> np.ndarray:
    """Binary probabilities remapped monotonically so that ``thr`` lands on 0.5 (the bootstrap's
    fixed cut): the same ranking (AUC) and the same decisions at ``thr``."""
    if probs.shape[1] != 2 or thr == 0.5 or not 0.0 < thr < 1.0:
        return probs
    s = probs[:, positive].astype(np.float64)
    mapped = np.where(s < thr, 0.5 * s / thr, 0.5 + 0.5 * (s - thr) / (1.0 - thr))
    out = np.empty_like(probs, dtype=np.float64)
    out[:, positive], out[:, 1 - positive] = mapped, 1.0 - mapped
    return out


def _patch_sources(ds: Any) -> list[str]:
    """Where each patch's pixels are: its image file, the HDF5 file or slide it comes from, or ``""``."""
    n = len(ds)
    if getattr(ds, "paths", None) is not None:
        return [str(Path(p).resolve()) for p in ds.paths]
    if getattr(ds, "x_path", None):
        return [str(Path(ds.x_path).resolve())] * n
    slides, which = getattr(ds, "slide_paths", None), getattr(ds, "slide_index", None)
    if slides is not None and which is not None:
        return [str(Path(slides[int(s)]).resolve()) for s in which]
    return [""] * n


def _write_predictions(
    path: Path, ds: Any, probs: np.ndarray, class_names: tuple[str, ...], labels: list[str] | None,
    positive: int = 1, threshold: float = 0.5, rows: np.ndarray | None = None,
) -> None:
    """``id``, ``label`` (evaluation), ``p_<class>``..., ``predicted`` (binary: the positive class
    when its probability is at or above ``threshold``; multi-class: argmax), then ``source`` (the
    image, HDF5 or slide file holding the patch) and ``index`` (the patch's row in the dataset).
    ``rows``: the dataset rows ``probs`` (and ``labels``) belong to, in order (default: all)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["id"] + (["label"] if labels is not None else []) + [f"p_{c}" for c in class_names] + ["predicted"]
    w.writerow(head + ["source", "index"])
    pred = probs.argmax(1)
    if probs.shape[1] == 2:
        pred = np.where(probs[:, positive] >= threshold, positive, 1 - positive)
    sources, ids = _patch_sources(ds), list(ds.ids)
    for i, r in enumerate(range(len(ids)) if rows is None else (int(v) for v in rows)):
        row: list[Any] = [ids[r]] + ([labels[i]] if labels is not None else [])
        row += [f"{p:.6f}" for p in probs[i]] + [class_names[pred[i]], sources[r], r]
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def _plots(out: Path, y_pos: np.ndarray, score: np.ndarray, pos_name: str, auc: float, ci: list[float]) -> list[Path]:
    """``roc.png`` and ``calibration.png`` (10 bins) of the positive class vs rest."""
    from matplotlib.figure import Figure

    plot_roc([(f"AUC {auc:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})", y_pos, score)], out / "roc.png",
             title=f"ROC: {pos_name} vs rest")
    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(score, bins) - 1, 0, 9)
    centres, frac, counts = [], [], []
    for b in range(10):
        sel = which == b
        counts.append(int(sel.sum()))
        if sel.any():
            centres.append(float(score[sel].mean()))
            frac.append(float(y_pos[sel].mean()))
    fig = Figure(figsize=(5, 6), dpi=100)
    ax1, ax2 = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax1.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    ax1.plot(centres, frac, marker="o", lw=2, label="model")
    ax1.set(ylabel=f"observed fraction {pos_name}", title="Calibration (10 bins)", ylim=(0, 1))
    ax1.legend(loc="upper left")
    ax2.bar((bins[:-1] + bins[1:]) / 2, counts, width=0.09)
    ax2.set(xlabel=f"predicted probability of {pos_name}", ylabel="patches", xlim=(0, 1))
    save_figure(fig, out / "calibration.png")
    return [out / "roc.png", out / "calibration.png"]


@dataclass(frozen=True, slots=True)
class PredictionResult:
    """What :func:`predict` wrote: the CSV, its kind and the number of patches."""

    path: Path
    kind: str
    n: int


def predict(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    mpp: float | None = None,
    tta: bool = False,
    submission: bool | None = None,
    labels: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    dataset: Any | None = None,
    threshold: float | None = None,
) -> PredictionResult:
    """Class probabilities for a folder or CSV of patches.

    Args:
        submission: write the Kaggle submission format ``id,label`` (label = probability of the
            positive class, as the competition's AUC scoring expects); ``None`` = when the data is
            in the Kaggle layout.
        labels: in the submission, write 0/1 labels (1 when the positive-class probability is
            at or above the threshold) instead of probabilities, as the competition's example did.
        threshold: the decision threshold of ``predicted`` / ``labels`` (binary models); default
            the package's operating threshold, else 0.5.

    Returns:
        :class:`PredictionResult`. A probabilities CSV has ``id``, one ``p_<class>`` column per
        class and ``predicted``.

    Raises:
        ModelPackageError, DatasetError: unusable model or data.
    """
    session = _load(model_path, device)
    meta = session.metadata
    ds = dataset if dataset is not None else _open(data, fmt, mpp, False)
    if len(ds) == 0:
        raise DatasetError(f"no patches found in {data}")
    out = Path(out_csv)
    ensure_writable_dir(out.parent if str(out.parent) else ".")
    thr = _threshold(meta, threshold)
    probs = predict_probabilities(session, ds, tta=tta, batch_size=batch_size, progress=progress, cancel=cancel)
    kaggle = submission if submission is not None else getattr(ds, "fmt", "") == "kaggle"
    if kaggle:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "label"])
        for pid, p in zip(ds.ids, probs[:, meta.positive_class], strict=True):
            w.writerow([pid, int(p >= thr) if labels else f"{p:.6f}"])
        atomic_write_text(out, buf.getvalue())
        return PredictionResult(out, "submission labels" if labels else "submission", len(ds))
    _write_predictions(out, ds, probs, meta.class_names, None, int(meta.positive_class), thr)
    return PredictionResult(out, "probabilities", len(ds))
