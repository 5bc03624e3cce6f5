"""Training CancerSiamese on an expression matrix, in a run folder like patch and MIL training.

Steps: split tumour types into training and held-out test types (``test_types`` or a seeded
``test_fraction``); split training-type samples into train / validation; fit the gene filter and
normalisation on the train samples; pre-train the 1D-CNN as a type classifier (class-balanced
batches); initialise the Siamese network from it and train it on balanced same / different pairs
(class-balanced, with noise and gene-dropout augmentation); early stopping on validation N-way
accuracy. Then ``model.onnx`` is exported and the N-way one-shot evaluation on the held-out types
(against 1-NN) written, and the marker genes.

Run folder: ``config.json`` ({"kind": "siamese", "config": ...}), ``events.jsonl``, ``state.json``,
``splits.json``, ``genes.json`` (the fitted gene filter), ``checkpoints/last.pt`` / ``best.pt``,
``model.onnx``, ``metrics.json``, ``predictions.csv``, ``accuracy_vs_n.png``, ``markers.csv``,
``markers_curve.csv``, ``saliency.png``. torch is imported inside functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DatasetError
from engine.expression.matrix import ExpressionMatrix, read_matrix
from engine.expression.oneshot import evaluate_oneshot, usable_types
from engine.expression.preprocess import GenePrep, fit_gene_filter
from engine.fileio import atomic_write_json, ensure_writable_dir
from engine.jobs import CancelToken, ProgressCallback
from engine.train.runfolder import (
    CONFIG_NAME,
    RunLog,
    config_from_dict,
    load_checkpoint,
    load_kind_config,
    prepare_new_run,
    recorded_outcome,
    run_lock,
)

RUN_KIND = "siamese"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SiameseTrainConfig:
    """Everything a Siamese run needs; saved as ``config.json``.

    test_types / test_fraction: held-out types for the one-shot evaluation (never trained on).
    val_types: training types held out for early stopping and for choosing the weight of the CNN
    distance (-1: 20% of them when there are >= 8, else 0; 0: validation samples of the training
    types, and the CNN distance weight stays at cnn_weight, auto 0). cnn_weight: weight of the
    CNN distance in the score (-1: chosen on validation types). genes: top-k genes by variance. pretrain_epochs / epochs: classifier
    pre-training and Siamese epochs. noise / gene_dropout: augmentation in normalised units.
    """

    matrix: str
    label_column: str
    samples: str | None = None
    sample_id_column: str | None = None
    orientation: str = "auto"
    log: str = "auto"
    test_types: tuple[str, ...] = ()
    test_fraction: float = 0.3
    val_types: int = -1
    val_fraction: float = 0.2
    genes: int = 1000
    pretrain_epochs: int = 8
    epochs: int = 20
    steps_per_epoch: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    embed_dim: int = 128
    head_dim: int = 64
    channels: tuple[int, ...] = (8, 16, 32)
    dropout: float = 0.3
    corr_skip: bool = True
    cnn_weight: float = -1.0
    metric_lr: float = 0.02
    noise: float = 0.3
    gene_dropout: float = 0.1
    patience: int = 6
    val_ways: int = 5
    val_trials: int = 400
    eval_ways: tuple[int, ...] = (6, 8, 10)
    eval_trials: int = 2000
    markers: bool = True
    seed: int = 0
    device: str = "auto"
    cpu_threads: int = 1

    def __post_init__(self) -> None:
        if not self.matrix or not self.label_column:
            raise ConfigError("a Siamese run needs a matrix and a label column")
        if not 0.0 <= self.test_fraction < 1.0 or not 0.0 < self.val_fraction < 0.9:
            raise ConfigError("test_fraction must be in [0, 1) and val_fraction in (0, 0.9)")
        for name in ("genes", "batch_size", "embed_dim", "head_dim", "val_ways", "val_trials", "cpu_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.val_types < -1:
            raise ConfigError("val_types must be -1 (auto) or >= 0")
        for name in ("pretrain_epochs", "epochs", "steps_per_epoch", "patience", "eval_trials"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.epochs + self.pretrain_epochs < 1:
            raise ConfigError("epochs + pretrain_epochs must be >= 1")
        if not self.lr > 0 or not 0 <= self.dropout < 1 or not 0 <= self.gene_dropout < 1 or self.noise < 0:
            raise ConfigError("lr must be > 0, dropout and gene_dropout in [0, 1), noise >= 0")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}")
        if any(w < 2 for w in self.eval_ways):
            raise ConfigError("ways must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("test_types", "channels", "eval_ways"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiameseTrainConfig:
        return config_from_dict(cls, d, "Siamese", _TUPLE_FIELDS)


_TUPLE_FIELDS = {"test_types": str, "channels": int, "eval_ways": int}


def load_siamese_config(run: Path) -> SiameseTrainConfig:
    return load_kind_config(run, RUN_KIND, SiameseTrainConfig, "Siamese", _TUPLE_FIELDS)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]


# -- data ------------------------------------------------------------------------------------------


def load_data(cfg: SiameseTrainConfig) -> tuple[ExpressionMatrix, np.ndarray]:
    m = read_matrix(cfg.matrix, cfg.samples, cfg.orientation, cfg.log, cfg.sample_id_column)
    labels = m.labels(cfg.label_column)
    keep = labels != ""
    if not keep.all():
        m, labels = m.subset(samples=keep), labels[keep]
    return m, labels


def split_types(labels: np.ndarray, cfg: SiameseTrainConfig) -> dict[str, Any]:
    """Training / validation / test types and train / val sample indices (seeded)."""
    types, skipped = usable_types(labels)
    rng = np.random.default_rng(cfg.seed)
    if cfg.test_types:
        unknown = [t for t in cfg.test_types if t not in set(labels)]
        if unknown:
            raise ConfigError(f"test type(s) not in column '{cfg.label_column}': {', '.join(unknown)}; "
                              f"available: {', '.join(types)}")
        test = [t for t in cfg.test_types if t in types]
    else:
        n_test = int(round(cfg.test_fraction * len(types)))
        test = sorted(rng.choice(types, n_test, replace=False).tolist()) if n_test >= 2 else []
    rest = [t for t in types if t not in set(test)]
    n_val = cfg.val_types if cfg.val_types >= 0 else (max(2, round(0.2 * len(rest))) if len(rest) >= 8 else 0)
    val_types = sorted(rng.choice(rest, n_val, replace=False).tolist()) if n_val else []
    train_types = [t for t in rest if t not in set(val_types)]
    if len(train_types) < 2:
        raise DatasetError(f"need >= 2 training types with >= 2 samples, got {len(train_types)} "
                           f"({len(types)} usable types, {len(test)} held out for testing)")
    train_idx, val_idx = [], []
    for t in train_types:
        idx = rng.permutation(np.flatnonzero(labels == t))
        n_val = 0 if val_types else (int(round(cfg.val_fraction * len(idx))) if len(idx) >= 6 else 0)
        n_val = max(n_val, 2) if n_val else 0
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    for t in val_types:
        val_idx += np.flatnonzero(labels == t).tolist()
    test_idx = np.flatnonzero(np.isin(labels, test)).tolist()
    return {"train_types": train_types, "val_types": val_types, "test_types": test, "skipped_types": skipped,
            "train": sorted(train_idx), "val": sorted(val_idx), "test": test_idx}


def resolve_device(device: str) -> str:
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ConfigError("--device cuda was requested but torch sees no CUDA GPU")
    return "cpu"


# -- training --------------------------------------------------------------------------------------


def train_siamese(cfg: SiameseTrainConfig | None, run_dir: str | os.PathLike[str], resume: bool = False,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> TrainResult:
    """Train, export and evaluate; see the module docstring. Raises Cancelled on STOP / cancel."""
    run = Path(run_dir)
    if resume:
        cfg = load_siamese_config(run)
        ensure_writable_dir(run)
    else:
        if cfg is None:
            raise ConfigError("a new Siamese run needs a configuration")
        prepare_new_run(run)
    assert cfg is not None
    (run / "checkpoints").mkdir(exist_ok=True)
    log = RunLog(run)
    with run_lock(run):
        return _train_locked(cfg, run, resume, log, progress, cancel)


def _train_locked(cfg, run, resume, log, progress, cancel) -> TrainResult:
    import torch

    from engine.expression.siamese_fit import SiameseFitter

    m, labels = load_data(cfg)
    if resume and (run / "splits.json").is_file():
        split = json.loads((run / "splits.json").read_text(encoding="utf-8"))
        prep = GenePrep.from_dict(json.loads((run / "genes.json").read_text(encoding="utf-8")))
    else:
        split = split_types(labels, cfg)
        prep, filt = fit_gene_filter(m.values[split["train"]], m.genes, cfg.genes)
        split["gene_filter"] = filt
        split["matrix_report"] = m.report
        split["samples"] = list(m.samples)
        atomic_write_json(run / CONFIG_NAME, {"kind": RUN_KIND, "config": cfg.to_dict()})
        atomic_write_json(run / "genes.json", prep.to_dict())
        atomic_write_json(run / "splits.json", split)
    if list(split.get("samples", m.samples)) != list(m.samples):
        raise DatasetError("the matrix changed since the run started; start a new run")
    pos = {g: i for i, g in enumerate(m.genes)}
    x = prep.transform(m.values[:, [pos[g] for g in prep.genes]])
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.cpu_threads)
    log.state("running", epoch=0, epochs=cfg.pretrain_epochs + cfg.epochs)
    try:
        with recorded_outcome(log, run):
            fitter = SiameseFitter(cfg, run, x, labels, split, prep, device, log, progress, cancel)
            best = fitter.fit()
            metrics = _finish(cfg, run, m, labels, split, best, log)
            log.event("finished", metrics=_headline(metrics), best_epoch=best.get("epoch"))
            log.state("finished", message=_headline_text(metrics), best_epoch=best.get("epoch"))
            return TrainResult(run, metrics)
    finally:
        torch.set_num_threads(threads)


def _headline(metrics: dict) -> dict:
    out = {}
    for n, e in metrics.get("ways", {}).items():
        out[f"{n}way_siamese"] = e.get("siamese")
        out[f"{n}way_nn1"] = e.get("nn1")
    return out


def _headline_text(metrics: dict) -> str:
    from engine.expression.oneshot import summary_line

    return summary_line(metrics) if metrics.get("ways") else "finished (no held-out test types)"


def _finish(cfg, run: Path, m: ExpressionMatrix, labels: np.ndarray, split: dict, best: dict, log: RunLog) -> dict:
    """Export model.onnx, evaluate one-shot on the test types with onnxruntime, write markers."""
    from engine.expression.oneshot import write_oneshot
    from engine.expression.siamese_export import export_run, load_package, package_scorers

    export_run(run, run / "model.onnx")
    metrics: dict[str, Any] = {"best_epoch": best.get("epoch"), "best_val_accuracy": best.get("val_accuracy"),
                               "train_types": split["train_types"], "val_types": split["val_types"]}
    test = split["test"]
    if split["test_types"] and len(test):
        pkg = load_package(run / "model.onnx")
        sub = m.subset(samples=np.array(test, dtype=int))
        scorers, _ = package_scorers(pkg, sub)
        res, preds = evaluate_oneshot(labels[test], sub.samples, scorers, split["test_types"],
                                      list(cfg.eval_ways), cfg.eval_trials, cfg.seed)
        metrics.update(res)
        write_oneshot(run, metrics, preds, title=f"one-shot on {len(split['test_types'])} unseen types")
    else:
        metrics.update({"ways": {}, "skipped_ways": {str(n): "no held-out test types" for n in cfg.eval_ways}})
        atomic_write_json(run / "metrics.json", metrics)
    if cfg.markers:
        from engine.expression.markers import compute_markers

        compute_markers(run, run, m=m, labels=labels)
    return metrics


def checkpoint_best(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "best.pt")

