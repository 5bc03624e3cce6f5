"""Evaluate a training run's best checkpoint on the validation split it was trained with.

This is what the training view shows after a run (``RUN_DIR/evaluation.json``); the same metric
and confidence-interval code as ``metascope evaluate`` (:mod:`engine.train.metrics`). torch and
the metrics are imported when a run is evaluated, not on import (the run views import this).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.fileio import atomic_write_json

EVALUATION_NAME = "evaluation.json"
VALIDATION_DIR = "validation"  # the validation patches for review (predictions.csv, metrics.json)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    progress: Any = None,
    cancel: Any = None,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Evaluate a run's best model on its validation split; writes ``RUN_DIR/evaluation.json``.

    The dataset is reopened and split exactly as the trainer did (same strategy, fraction and
    seed), and its fingerprint is checked so changed data is reported instead of evaluated.

    Returns:
        ``{"metrics": {auc, accuracy, sensitivity, specificity, precision, f1, loss, n},
        "ci": {metric: [low, high]} (95 % percentile bootstrap, :func:`bootstrap_ci95`),
        "ci_resampling": the unit resampled ("patient", "slide", ... when the data has groups,
        else "case"),
        "roc": {"fpr": [...], "tpr": [...]} (positive class vs rest), "confusion_matrix": C x C
        (rows: true class), "class_names", "positive_class", "epoch", "n_val"}``.

    Raises:
        ConfigError: no trained model or config in the run folder.
        DatasetError: the data changed since training, or cannot be read.
        Cancelled: ``cancel`` was set (checked per batch).
    """
    import numpy as np
    import torch

    from engine.data.base import resampling_groups
    from engine.export.onnx_export import load_trained
    from engine.jobs import ProgressEvent, check_cancel, report
    from engine.models import build_model
    from engine.train.metrics import bootstrap_ci95, classification_metrics, roc_curve
    from engine.train.trainer import run_validation_split

    run = Path(run_dir)
    ck = load_trained(run)
    # identifies the model evaluated: a resumed run replaces best.pt and this result goes stale
    model_stamp = Path(ck["source"]).stat().st_mtime_ns
    report(progress, ProgressEvent("evaluate", 0, None, "opening the dataset"))
    cfg, ds, val_idx, strategy = run_validation_split(run)
    names = list(ck["class_names"])
    positive = int(ck.get("positive_class", 1))
    model = build_model(ck["arch"], len(names), int(ck["input_size"]))
    model.load_state_dict(ck["model"])
    model.eval()
    mean = torch.tensor(ck["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ck["std"], dtype=torch.float32).view(1, 3, 1, 1)
    logits = np.zeros((len(val_idx), len(names)), np.float64)
    with torch.inference_mode():
        for start in range(0, len(val_idx), batch_size):
            check_cancel(cancel)
            idx = val_idx[start : start + batch_size]
            tiles = ds.read_many(idx)
            if ck.get("stain_norm"):  # the normalisation the run trained with (and its package applies)
                from engine.infer.stain import normalise

                tiles = normalise(tiles, ck["stain_norm"])
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div_(255.0)
            logits[start : start + len(idx)] = model((x - mean) / std).double().numpy()
            done = start + len(idx)
            report(progress, ProgressEvent("evaluate", done, len(val_idx), f"predicting {done}/{len(val_idx)}"))
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    y = np.asarray(ds.labels, dtype=np.int64)[val_idx]
    m = classification_metrics(y, probs, positive)
    is_pos = y == positive
    score = probs[:, positive]
    # patches of one slide / patient are not independent: resample whole groups when known
    groups, unit = resampling_groups(ds, val_idx)
    ci = bootstrap_ci95(y, probs, positive, groups=groups)
    fpr, tpr, _ = roc_curve(is_pos, score)
    result = {
        "metrics": {k: m[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "loss", "n")},
        "ci": ci,
        "ci_resampling": unit,
        "roc": {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]},
        "confusion_matrix": m["confusion_matrix"],
        "class_names": names,
        "positive_class": positive,
        "epoch": ck.get("epoch"),
        "n_val": int(len(val_idx)),
        "split": strategy,
        "model_file": Path(ck["source"]).name,
        "model_mtime_ns": model_stamp,
    }
    _write_review(run, ds, cfg, ck, logits, probs, y, val_idx, result)
    atomic_write_json(run / EVALUATION_NAME, result)
    return result


def _write_review(
    run: Path, ds: Any, cfg: Any, ck: dict[str, Any], logits: Any, probs: Any, y: Any, val_idx: Any,
    result: dict[str, Any],
) -> None:
    """``RUN_DIR/validation/``: the validation patches as ``metascope evaluate`` writes them
    (``predictions.csv`` + ``metrics.json``), so the Patch review view and ``metascope review``
    open a training run: calibrated probabilities and the run's operating threshold when it
    fitted them, else softmax and 0.5."""
    from engine.train.calibration import calibrated_probabilities
    from engine.train.evaluate import _write_predictions

    names = result["class_names"]
    positive = result["positive_class"]
    cal = ck.get("calibration") if isinstance(ck.get("calibration"), dict) else {}
    threshold = float(cal.get("operating_threshold", 0.5)) if len(names) == 2 else 0.5
    if isinstance(cal.get("calibration"), dict) and len(names) == 2:
        probs = calibrated_probabilities(logits, cal["calibration"], positive)
    out = run / VALIDATION_DIR
    out.mkdir(exist_ok=True)
    _write_predictions(out / "predictions.csv", ds, probs, tuple(names), [names[i] for i in y], positive,
                       threshold, rows=val_idx)
    metrics = {k: result[k] for k in ("class_names", "epoch", "n_val", "split")}
    metrics.update(result["metrics"])
    metrics.update({
        "positive_class": names[positive], "threshold": threshold,
        "threshold_source": "run operating threshold" if "operating_threshold" in cal else "default 0.5",
        "data": {"path": str(cfg.data), "format": cfg.fmt, "mpp": cfg.mpp},
        "source": "validation split of a training run",
    })
    atomic_write_json(out / "metrics.json", metrics)
