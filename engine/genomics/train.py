"""Training a genomics classifier (primary vs metastasis) into a run folder.

The run folder follows patch / MIL training: ``config.json`` (``{"kind": "genomics", ...}``),
``splits.json`` (patient-grouped folds), ``events.jsonl`` (``run_started``, ``epoch_started``,
``step``, ``epoch_ended``, ``checkpoint``, ``best``, ``fold_finished``, ``finished`` /
``cancelled`` / ``failed``), ``state.json``, ``checkpoints/fold_K_{last,best}.{pt,pkl}``,
``fold_K.json``; at the end ``metrics.json``, ``predictions.csv``, ``per_type_auc.csv``,
``explanations.csv``, ``roc.png``, ``confusion.png``, ``calibration.png`` (pooled out-of-fold
predictions for K folds, the test split otherwise) and the exported package ``model.onnx``
(a final model fitted on all patients but a validation share, unless ``final_fit`` is off).

For ``gbm`` an epoch adds ``gbm_iter_per_epoch`` boosting iterations (warm start) to each of the
``gbm_members`` members of the bag.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.fileio import atomic_write_json, ensure_writable_dir
from engine.genomics.data import Prepared, prepare
from engine.genomics.models import MODELS
from engine.jobs import CancelToken, ProgressCallback
from engine.mil.splits import Fold, kfold_splits, single_split
from engine.train.runfolder import (
    CONFIG_NAME,
    config_from_dict,
    load_kind_config,
    prepare_new_run,
    recorded_outcome,
    resumable_folds,
    run_lock,
)

RUN_KIND = "genomics"
FINAL_FOLD = 0


@dataclass(frozen=True, slots=True)
class GenomicsTrainConfig:
    """Settings of a genomics run (saved in ``config.json``)."""

    study: str
    model: str = "gbm"
    features: str = "all"
    label_column: str = "SAMPLE_TYPE"
    positive: str | None = None
    drop_columns: tuple[str, ...] = ()
    folds: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    epochs: int = 0  # 0: the model's default (dense 40, gbm 12 x gbm_iter_per_epoch iterations)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-3
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.5
    embed_dim: int = 16
    patience: int = 6
    gbm_learning_rate: float = 0.1
    gbm_max_leaf_nodes: int = 15
    gbm_min_samples_leaf: int = 40
    gbm_l2: float = 10.0
    gbm_iter_per_epoch: int = 25
    gbm_members: int = 5
    gbm_subsample: float = 0.85
    gbm_max_features: float = 0.5
    min_gene_freq: float = 0.02
    max_genes: int = 300
    max_samples: int = 0
    final_fit: bool = True
    explain_top: int = 10
    seed: int = 0
    n_boot: int = 1000
    cpu_threads: int = 1

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.features not in ("clinical", "mutations", "all"):
            raise ConfigError(f"features must be clinical, mutations or all, got {self.features!r}")
        if self.folds < 0:
            raise ConfigError(f"folds must be >= 0, got {self.folds}")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("val_fraction in (0, 1), test_fraction in [0, 1), their sum < 0.9")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or self.patience < 0 or self.cpu_threads < 1:
            raise ConfigError("epochs >= 0, batch_size >= 1, lr > 0, patience >= 0, cpu_threads >= 1")
        if not 0 <= self.dropout < 1 or self.embed_dim < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("dropout in [0, 1), embed_dim >= 1, hidden sizes >= 1")
        if self.gbm_members < 1 or not 0 < self.gbm_subsample <= 1 or not 0 < self.gbm_max_features <= 1:
            raise ConfigError("gbm_members >= 1, gbm_subsample and gbm_max_features in (0, 1]")
        if self.max_samples < 0 or self.n_boot < 0 or self.explain_top < 0:
            raise ConfigError("max_samples, n_boot and explain_top must be >= 0")

    @property
    def n_epochs(self) -> int:
        return self.epochs or (12 if self.model == "gbm" else 40)

    @property
    def n_folds(self) -> int:
        return self.folds if self.folds >= 2 else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drop_columns"] = list(self.drop_columns)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenomicsTrainConfig:
        return config_from_dict(cls, d, "genomics", _TUPLE_FIELDS)


_TUPLE_FIELDS = {"drop_columns": str, "hidden": int}


def load_genomics_config(run: Path) -> GenomicsTrainConfig:
    return load_kind_config(run, RUN_KIND, GenomicsTrainConfig, "genomics", _TUPLE_FIELDS)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    model_path: Path | None = None
    notes: list[str] = field(default_factory=list)


class _Entry:
    """What :mod:`engine.mil.splits` needs of a sample (duck-typed ``CohortEntry``)."""

    __slots__ = ("slide_id", "patient_id", "label", "split")

    def __init__(self, sample: str, patient: str, label: int) -> None:
        self.slide_id, self.patient_id, self.label, self.split = sample, patient, label, None


def make_folds(data: Prepared, cfg: GenomicsTrainConfig) -> list[Fold]:
    entries = [_Entry(s, p, int(y)) for s, p, y in zip(data.samples, data.patients, data.y, strict=True)]
    if cfg.n_folds > 1:
        folds = kfold_splits(entries, cfg.folds, cfg.val_fraction, cfg.seed)
    else:
        folds = [single_split(entries, cfg.val_fraction, cfg.test_fraction, cfg.seed)]
    if cfg.final_fit:
        rest = {p: int(y) for p, y in zip(data.patients, data.y, strict=True)}
        rng = np.random.default_rng(cfg.seed + 999)
        val: set[str] = set()
        for label in (0, 1):
            group = sorted(p for p, lab in rest.items() if lab == label)
            rng.shuffle(group)
            val.update(group[: max(1, int(round(cfg.val_fraction * len(group))))])
        train = tuple(s for s, p in zip(data.samples, data.patients, strict=True) if p not in val)
        valid = tuple(s for s, p in zip(data.samples, data.patients, strict=True) if p in val)
        folds.append(Fold(FINAL_FOLD, train, valid, ()))
    return folds


def train_genomics(
    cfg: GenomicsTrainConfig,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train and evaluate; see the module docstring for the run folder.

    Raises:
        DatasetError: unusable study; ConfigError: bad settings; RunFolderError: folder in use;
        Cancelled: stopped (checkpoints kept, resume with ``resume=True``).
    """
    from engine.genomics.fold import FoldTrainer, RunLog

    run = Path(run_dir)
    if resume:
        cfg = load_genomics_config(run)
        ensure_writable_dir(run)
        (run / "STOP").unlink(missing_ok=True)  # a stale stop request of the interrupted session
    else:
        prepare_new_run(run)
    with run_lock(run):
        (run / "checkpoints").mkdir(exist_ok=True)
        log = RunLog(run)
        data = prepare(cfg)
        if resume and (run / "splits.json").is_file():
            folds = [Fold.from_dict(d) for d in json.loads((run / "splits.json").read_text(encoding="utf-8"))["folds"]]
        else:
            folds = make_folds(data, cfg)
            atomic_write_json(run / CONFIG_NAME, {"kind": RUN_KIND, "config": cfg.to_dict()})
            atomic_write_json(run / "splits.json", {"folds": [f.to_dict() for f in folds]})
            atomic_write_json(run / "data.json", data.report)
        log.state("running", fold=folds[0].index, epoch=0, message="training")
        import torch
        from threadpoolctl import threadpool_limits

        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.cpu_threads)
        # scikit-learn's OpenMP threads spin-wait: on a busy CPU more threads than asked are 25x slower
        limits = threadpool_limits(cfg.cpu_threads)
        try:
            with recorded_outcome(log, run):
                results = resumable_folds(
                    run, folds, lambda fold: FoldTrainer(cfg, fold, data, run, log, n_folds=cfg.n_folds).run(progress, cancel)
                )
                metrics = _finish(cfg, run, data, results, log)
                return TrainResult(run, metrics, run / "model.onnx" if (run / "model.onnx").is_file() else None,
                                   data.notes)
        finally:
            torch.set_num_threads(threads)
            limits.restore_original_limits()


def _finish(cfg: GenomicsTrainConfig, run: Path, data: Prepared, results: list[dict[str, Any]], log: Any) -> dict[str, Any]:
    from engine.genomics.explain import merge_explanations
    from engine.genomics.metrics import write_evaluation

    evals = [r for r in results if r["fold"] != FINAL_FOLD]
    key = "test_ids" if any(r["test_ids"] for r in evals) else "val_ids"
    ids = [s for r in evals for s in r[key]]
    probs = np.array([p for r in evals for p in r[key.replace("ids", "probs")]], dtype=np.float64)
    fold_of = [r["fold"] for r in evals for _ in r[key]]
    part = ("test" if cfg.n_folds == 1 else "out-of-fold test") if key == "test_ids" else "validation"
    pos = {s: i for i, s in enumerate(data.samples)}
    rows = [pos[s] for s in ids]
    metrics = write_evaluation(
        run, ids, [data.patients[i] for i in rows], data.y[rows], probs, [data.groups[i] for i in rows],
        data.class_names, folds=fold_of, title=f"{cfg.model} {part} ({len(ids)} samples)", n_boot=cfg.n_boot,
        extra={
            "evaluated_on": part, "model": cfg.model, "features": cfg.features, "study": cfg.study,
            "folds": [{k: r[k] for k in ("fold", "best_epoch", "val_auc", "test_auc")} for r in results],
            "best_fold": max(evals, key=lambda r: (r["best_score"], -r["fold"]))["fold"],
            "final_model": any(r["fold"] == FINAL_FOLD for r in results),
            "n_features": len(data.table.columns),
        },
    )
    merge_explanations(run, [r["fold"] for r in evals])
    from engine.genomics.export import export_run

    export_run(run, run / "model.onnx")
    headline = {k: metrics[k] for k in ("auc", "auc_ci95", "accuracy", "sensitivity", "specificity")}
    log.event("finished", metrics=headline, best_fold=metrics["best_fold"], model="model.onnx")
    auc = metrics["auc"]
    log.state("finished", message=f"{part} AUC {auc:.3f}" if math.isfinite(auc) else "finished",
              best_fold=metrics["best_fold"])
    return metrics
