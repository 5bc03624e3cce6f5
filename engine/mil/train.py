"""Training the attention MIL model on feature bags, with run folders like patch training.

A run folder (``--out RUN_DIR``) holds:

- ``config.json``: the :class:`MILTrainConfig`;  ``splits.json``: the patient-level folds;
- ``events.jsonl``: ``run_started``, ``epoch_started``, ``step``, ``epoch_ended``, ``checkpoint``,
  ``best``, ``fold_finished``, ``finished`` / ``cancelled`` / ``failed`` (the schema
  :mod:`engine.runs` follows, plus ``fold``/``folds`` fields);
- ``state.json``: status, pid, current fold and epoch, message;
- ``checkpoints/fold_K_last.pt`` (every epoch) and ``fold_K_best.pt`` (best validation score);
- ``fold_K.json``: a finished fold's test predictions; then ``metrics.json``, ``predictions.csv``,
  ``roc.png``, ``confusion.png`` (test set, or pooled out-of-fold predictions for K-fold CV).

An interrupted run resumes from the last finished epoch (``resume=True``); finished folds are
kept. torch is imported lazily.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DatasetError
from engine.fileio import atomic_write_json, ensure_writable_dir
from engine.jobs import CancelToken, ProgressCallback
from engine.mil.bags import BAG_SETTING_KEYS, bag_info, bag_path, read_bag, stored_fingerprint
from engine.mil.cohort import Cohort, CohortEntry, load_cohort
from engine.mil.fold_trainer import _FoldTrainer
from engine.mil.splits import Fold, kfold_splits, single_split
from engine.mil.train_config import RUN_KIND, MILTrainConfig, load_mil_config
from engine.train.runfolder import (
    CONFIG_NAME,
    RunLog,
    prepare_new_run,
    recorded_outcome,
    resumable_folds,
    run_lock,
)

__all__ = [
    "RUN_KIND",
    "BagStore",
    "MILTrainConfig",
    "TrainResult",
    "check_bags",
    "load_mil_config",
    "resolve_device",
    "train_mil",
]


# -- data --------------------------------------------------------------------------------------


class BagStore:
    """Reads feature bags on demand and keeps up to ``budget_bytes`` of them in memory."""

    def __init__(self, features_dir: Path, budget_bytes: int = 2 << 30) -> None:
        self.features_dir = features_dir
        self.budget = budget_bytes
        self._cache: dict[str, np.ndarray] = {}
        self._used = 0

    def features(self, slide_id: str) -> np.ndarray:
        """float32 ``(N, D)`` features of one slide."""
        hit = self._cache.get(slide_id)
        if hit is not None:
            return hit
        feats = read_bag(bag_path(self.features_dir, slide_id)).features
        if self._used + feats.nbytes <= self.budget:
            self._cache[slide_id] = feats
            self._used += feats.nbytes
        return feats


def check_bags(cohort: Cohort, features_dir: Path) -> tuple[list[CohortEntry], list[str], dict[str, Any]]:
    """Slides of the cohort that have a usable bag, messages about those that do not, and the
    common extraction attributes (extractor sha256/name, mpp, tile size, feature dim).

    Raises:
        DatasetError: no bag at all, or bags made with different extractors or settings.
    """
    if not features_dir.is_dir():
        raise DatasetError(f"features folder not found: {features_dir}")
    usable: list[CohortEntry] = []
    notes: list[str] = []
    common: dict[str, Any] | None = None
    for e in cohort.entries:
        info = bag_info(bag_path(features_dir, e.slide_id))
        if info is None:
            notes.append(f"{e.slide_id}: no feature file (extraction failed, no tissue, or not run); slide skipped")
            continue
        if info["n_tiles"] == 0:
            notes.append(f"{e.slide_id}: feature file has no tiles (no tissue); slide skipped")
            continue
        key = {k: info.get(k) for k in ("extractor_sha256", "extractor_name", "mpp", "tile_size", "feature_dim")}
        # tissue settings and tile cap, embedded in the exported model so prediction tiles alike
        fp = stored_fingerprint(info)
        key["feature_settings"] = {k: fp.get(k) for k in BAG_SETTING_KEYS} if fp is not None else None
        if common is None:
            common = key
        elif key["extractor_sha256"] != common["extractor_sha256"] or key["feature_dim"] != common["feature_dim"]:
            raise DatasetError(
                f"{e.slide_id}: features come from a different extractor than the other slides; "
                "re-extract all slides with one extractor"
            )
        elif key["feature_settings"] != common["feature_settings"] or key["mpp"] != common["mpp"] or (
            key["tile_size"] != common["tile_size"]
        ):
            raise DatasetError(
                f"{e.slide_id}: features were extracted with other settings (mpp, tile size, tissue, tile cap) "
                "than the other slides; re-extract all slides with one set of settings"
            )
        usable.append(e)
    if not usable or common is None:
        raise DatasetError(
            f"no usable feature files in {features_dir} for the manifest's slides; run 'metascope mil features' first"
        )
    return usable, notes, common


def resolve_device(device: str) -> str:
    """``cuda`` when asked for (or auto and available), else ``cpu``.

    Raises:
        ConfigError: ``cuda`` requested but not available to torch.
    """
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ConfigError("--device cuda was requested but torch sees no CUDA GPU")
    return "cpu"


# -- training ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What :func:`train_mil` returns: the run folder and its headline metrics."""

    run_dir: Path
    metrics: dict[str, Any]
    best_fold: int


def train_mil(
    cfg: MILTrainConfig,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train (and evaluate) a MIL model; see the module docstring for the run folder.

    Args:
        cfg: the configuration (ignored when resuming: the run's saved config is used).
        run_dir: run folder; must be empty or absent for a new run.
        resume: continue an interrupted run from its last checkpoint.
        progress: receives ``ProgressEvent("train", epoch, epochs, ...)`` per epoch and fold.
        cancel: checked per bag; a ``STOP`` file in the run folder works the same way.

    Raises:
        DatasetError: unusable cohort or features; ConfigError: bad settings; OutputError: run
        folder not writable or already used; Cancelled: cancelled (checkpoint kept).
    """
    run = Path(run_dir)
    if resume:
        cfg = load_mil_config(run)
        ensure_writable_dir(run)
    else:
        prepare_new_run(run)
    with run_lock(run):  # no second process trains into this folder meanwhile
        return _train_locked(cfg, run, resume, progress, cancel)


def _train_locked(
    cfg: MILTrainConfig, run: Path, resume: bool, progress: ProgressCallback | None, cancel: CancelToken | None
) -> TrainResult:
    """:func:`train_mil` once the run folder is prepared and locked."""
    from engine.mil.evaluate import write_evaluation

    (run / "checkpoints").mkdir(exist_ok=True)
    log = RunLog(run)

    cohort = load_cohort(cfg.manifest, cfg.labels, cfg.categorical)
    cohort.check_columns(cfg.clinical)
    features_dir = Path(cfg.features_dir)
    entries, bag_notes, extraction = check_bags(cohort, features_dir)
    folds = _load_or_make_folds(cfg, run, resume, entries, bag_notes, cohort)
    device = resolve_device(cfg.device)
    by_id = {e.slide_id: e for e in entries}
    store = BagStore(features_dir)
    numeric_cols = tuple(c for c in cfg.clinical if c in cohort.numeric_columns)
    categorical_cols = tuple(c for c in cfg.clinical if c in cohort.categorical_columns)
    log.state("running", fold=0, epoch=0)
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.cpu_threads)
    try:
        with recorded_outcome(log, run):
            fold_results = resumable_folds(
                run,
                folds,
                lambda fold: _FoldTrainer(
                    cfg, fold, by_id, store, cohort, numeric_cols, categorical_cols, extraction, device, run, log
                ).run(len(folds), progress, cancel),
            )
            # pooled results: the test set (single split) or out-of-fold predictions (CV)
            ids = [sid for fr in fold_results for sid in fr["test_ids"]]
            if not ids:  # no test set (test_fraction 0): report validation instead
                ids = [sid for fr in fold_results for sid in fr["val_ids"]]
                probs = np.array([p for fr in fold_results for p in fr["val_probs"]], dtype=np.float64)
                part = "validation"
            else:
                probs = np.array([p for fr in fold_results for p in fr["test_probs"]], dtype=np.float64)
                part = "test" if len(folds) == 1 else "out-of-fold test"
            rows = [by_id[s] for s in ids]
            best = max(fold_results, key=lambda fr: (fr["best_score"], -fr["fold"]))
            metrics = write_evaluation(
                run,
                rows,
                probs,
                cohort.class_names,
                title=f"MIL {part} ({len(ids)} slides)",
                n_boot=cfg.n_boot,
                extra={
                    "evaluated_on": part,
                    "folds": [
                        {
                            "fold": fr["fold"],
                            "best_epoch": fr["best_epoch"],
                            "val_auc": fr["val_auc"],
                            "test_auc": fr["test_auc"],
                        }
                        for fr in fold_results
                    ],
                    "best_fold": best["fold"],
                    "clinical": list(cfg.clinical),
                    "excluded_slides": bag_notes,
                },
            )
            log.event(
                "finished",
                metrics={k: metrics[k] for k in ("auc", "accuracy", "sensitivity", "specificity")},
                best_fold=best["fold"],
            )
            log.state("finished", message=f"{part} AUC {metrics['auc']:.3f}", best_fold=best["fold"])
            return TrainResult(run, metrics, int(best["fold"]))
    finally:
        torch.set_num_threads(threads_before)


def _load_or_make_folds(
    cfg: MILTrainConfig, run: Path, resume: bool, entries: list[CohortEntry], bag_notes: list[str], cohort: Cohort
) -> list[Fold]:
    """The run's folds: read back from ``splits.json`` on resume, else made and written (with
    ``config.json``)."""
    if (run / "splits.json").is_file() and resume:
        return [Fold.from_dict(d) for d in json.loads((run / "splits.json").read_text(encoding="utf-8"))["folds"]]
    folds = (
        kfold_splits(entries, cfg.folds, cfg.val_fraction, cfg.seed)
        if cfg.n_folds > 1
        else [single_split(entries, cfg.val_fraction, cfg.test_fraction, cfg.seed)]
    )
    atomic_write_json(run / CONFIG_NAME, {"kind": RUN_KIND, "config": cfg.to_dict()})
    atomic_write_json(
        run / "splits.json",
        {"folds": [f.to_dict() for f in folds], "excluded": bag_notes, "problems": cohort.to_dict()["problems"]},
    )
    return folds
