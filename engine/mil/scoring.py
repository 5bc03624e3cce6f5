"""Scoring a cohort's feature bags with an exported aggregator (onnxruntime) and writing the
evaluation: used by ``metascope mil evaluate`` for model packages and for run folders (a run is
exported to a temporary package first, so evaluation always runs the shipped graph)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report
from engine.mil.bags import bag_info, bag_path, read_bag
from engine.mil.clinical import Subgroup
from engine.mil.cohort import load_cohort
from engine.mil.predict import Aggregator, load_aggregator


def score_bags(
    aggregator: Aggregator,
    features_dir: str | os.PathLike[str],
    entries: list[Any],
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[list[Any], np.ndarray, list[str]]:
    """Probabilities for every entry that has a bag made with the aggregator's extractor.

    Returns:
        ``(scored entries, probabilities (M, C), notes about skipped slides)``.

    Raises:
        DatasetError: bags made with another extractor, or no bag at all.
    """
    rows, probs, notes = [], [], []
    for i, e in enumerate(entries):
        check_cancel(cancel)
        path = bag_path(features_dir, e.slide_id)
        info = bag_info(path)
        if info is None or info.get("n_tiles", 0) == 0:
            notes.append(f"{e.slide_id}: no features (extraction failed or no tissue); slide skipped")
            continue
        if aggregator.extractor_sha256 and info.get("extractor_sha256") != aggregator.extractor_sha256:
            raise DatasetError(
                f"{e.slide_id}: features were made with '{info.get('extractor_name')}', but {aggregator.name} "
                f"needs '{aggregator.extractor_name}'; extract features with that extractor"
            )
        num, codes, _ = aggregator.encode({k: v for k, v in e.clinical.items() if k in aggregator.clinical.columns})
        p, _ = aggregator.run(read_bag(path).features, num, codes)
        rows.append(e)
        probs.append(p)
        report(progress, ProgressEvent("evaluate", i + 1, len(entries), e.slide_id))
    if not rows:
        raise DatasetError(f"no slide of the manifest has features in {features_dir}")
    return rows, np.vstack(probs), notes


def evaluate_cohort(
    model: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    features_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    labels: str = "binary",
    categorical: tuple[str, ...] = (),
    subgroup: Subgroup | None = None,
    split: str | None = None,
    n_boot: int = 1000,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Evaluate a MIL model package or run folder on a cohort's features.

    Args:
        model: a ``mil_aggregator`` package, or a MIL run folder (its best model is exported to
            a temporary package first).
        manifest, features_dir: the cohort and its bags.
        out_dir: where ``metrics.json``, ``predictions.csv``, ``roc.png``, ``confusion.png``
            (and ``subgroup.json``) go.
        labels, categorical: how to read the manifest (classes must match the model's).
        subgroup: optional clinical condition for subgroup metrics.
        split: only slides of this manifest split (``train``/``val``/``test``).
        n_boot: bootstrap resamples for the AUC CI.

    Returns:
        The metrics dict.

    Raises:
        DatasetError, ModelPackageError, ConfigError: unusable inputs.
    """
    from engine.mil.evaluate import write_evaluation

    cohort = load_cohort(manifest, labels, categorical)
    entries = [e for e in cohort.entries if split is None or e.split == split]
    if not entries:
        raise DatasetError(f"the manifest has no usable slide in split {split!r}")
    if subgroup is not None and subgroup.column not in cohort.clinical_columns:
        raise DatasetError(f"subgroup column {subgroup.column!r} is not a clinical column of the manifest")
    src = Path(model)
    with tempfile.TemporaryDirectory(prefix="metascope-mil-eval-") as tmp:
        if src.is_dir():
            from engine.mil.export import export_run

            src = export_run(src, Path(tmp) / "model.onnx")
        agg = load_aggregator(src)
        if tuple(agg.class_names) != tuple(cohort.class_names):
            raise DatasetError(
                f"the model predicts {', '.join(agg.class_names)} but the manifest is read as "
                f"{', '.join(cohort.class_names)}; pass the matching --labels"
            )
        rows, probs, notes = score_bags(agg, features_dir, entries, progress, cancel)
        name = agg.name
    return write_evaluation(
        out_dir,
        rows,
        probs,
        cohort.class_names,
        title=f"{name} ({len(rows)} slides)",
        n_boot=n_boot,
        subgroup=subgroup,
        extra={"model": str(model), "evaluated_on": split or "all", "excluded_slides": notes},
    )
