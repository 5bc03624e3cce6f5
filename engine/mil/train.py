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
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import Cancelled, ConfigError, DatasetError
from engine.fileio import atomic_write_json, ensure_writable_dir
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, report
from engine.mil.bags import BAG_SETTING_KEYS, bag_info, bag_path, read_bag, stored_fingerprint
from engine.mil.clinical import ClinicalSpec
from engine.mil.cohort import Cohort, CohortEntry, label_scheme, load_cohort
from engine.mil.splits import Fold, kfold_splits, single_split
from engine.runs import stop_requested
from engine.train.runfolder import (
    CONFIG_NAME,
    RunLog,
    config_from_dict,
    load_checkpoint,
    load_kind_config,
    prepare_new_run,
    recorded_outcome,
    resumable_folds,
    run_lock,
    save_torch,
)

DEVICES = ("auto", "cpu", "cuda")
#: ``config.json`` of a MIL run is ``{"kind": "mil", "config": MILTrainConfig.to_dict()}``.
RUN_KIND = "mil"


@dataclass(frozen=True, slots=True)
class MILTrainConfig:
    """Everything a MIL training run needs; saved as ``config.json`` in the run folder.

    Attributes:
        manifest: cohort manifest CSV.
        features_dir: folder of per-slide feature bags (``metascope mil features``).
        labels: label scheme: ``"binary"`` (N0 vs N+), ``"three_class"`` or a ``raw=Class,...`` mapping.
        clinical: clinical columns fused into the model (empty: image only).
        categorical: clinical columns forced to be categorical (e.g. a grade coded 1/2/3).
        folds: 0 or 1 for one train/val/test split, K >= 2 for K-fold cross-validation.
        val_fraction, test_fraction: patient shares for validation and test (random splits).
        epochs: epochs per fold.
        lr, weight_decay: Adam settings.
        hidden_dim, attention_dim, dropout, embed_dim, clinical_dim: model sizes.
        max_instances: tiles sampled per bag and step in training (0: all); regularises and
            bounds memory on huge slides.
        class_weighted: weight the loss by inverse class frequency.
        patience: stop a fold after this many epochs without improvement (0: never).
        seed: random seed (splits, initialisation, sampling).
        device: ``auto``, ``cpu`` or ``cuda``.
        n_boot: bootstrap resamples for the AUC confidence interval.
        cpu_threads: torch threads on the CPU. One bag per step is a small computation: extra
            threads mostly wait on each other (10-20x slower on a busy machine), so 1 is default.
        attention: ``"gated"`` (default) or ``"tanh"`` (BALNMP's published attention).
        bag_size: 0 = one bag per slide (all its tiles, ``max_instances`` sampled per step); N > 0
            = BALNMP's bags: every epoch each training slide's tiles are shuffled and cut into
            random bags of N tiles, each bag one step with the slide's label; a slide is scored
            as the mean probability over its bags (fixed bags per slide).
        recipe: the named recipe the settings came from (``balnmp``; empty = none), for the record.
    """

    manifest: str
    features_dir: str
    labels: str = "binary"
    clinical: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    folds: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden_dim: int = 64
    attention_dim: int = 32
    dropout: float = 0.25
    embed_dim: int = 4
    clinical_dim: int = 16
    max_instances: int = 512
    class_weighted: bool = True
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    n_boot: int = 1000
    cpu_threads: int = 1
    attention: str = "gated"
    bag_size: int = 0
    recipe: str = ""

    def __post_init__(self) -> None:
        if self.attention not in ("gated", "tanh"):
            raise ConfigError(f"attention must be gated or tanh, got {self.attention!r}")
        if self.bag_size < 0:
            raise ConfigError(f"bag_size must be >= 0, got {self.bag_size}")
        if not self.manifest or not self.features_dir:
            raise ConfigError("a MIL run needs a manifest and a features folder")
        label_scheme(self.labels)  # raises ConfigError on a bad spec
        if self.folds < 0:
            raise ConfigError(f"folds must be >= 0, got {self.folds}")
        if not (0.0 < self.val_fraction < 1.0) or not (0.0 <= self.test_fraction < 1.0):
            raise ConfigError("val_fraction must be in (0, 1) and test_fraction in [0, 1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("val_fraction + test_fraction leave too little for training (keep their sum < 0.9)")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if self.cpu_threads < 1:
            raise ConfigError("cpu_threads must be >= 1")
        if self.max_instances < 0 or self.patience < 0 or self.n_boot < 0:
            raise ConfigError("max_instances, patience and n_boot must be >= 0")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if len(set(self.clinical)) != len(self.clinical):
            raise ConfigError("clinical columns are listed twice")
        for name in ("hidden_dim", "attention_dim", "embed_dim", "clinical_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)")

    @property
    def n_folds(self) -> int:
        return self.folds if self.folds >= 2 else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clinical"] = list(self.clinical)
        d["categorical"] = list(self.categorical)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MILTrainConfig:
        return config_from_dict(cls, d, "MIL", {"clinical": str, "categorical": str})


def load_mil_config(run: Path) -> MILTrainConfig:
    """The configuration saved in a MIL run folder.

    Raises:
        RunFolderError: not a run folder; ConfigError: not a MIL run or a damaged config.
    """
    return load_kind_config(run, RUN_KIND, MILTrainConfig, "MIL", {"clinical": str, "categorical": str})


# -- run folder bookkeeping ----------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


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
    if (run / "splits.json").is_file() and resume:
        folds = [Fold.from_dict(d) for d in json.loads((run / "splits.json").read_text(encoding="utf-8"))["folds"]]
    else:
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


class _FoldTrainer:
    """Trains one fold: fits the clinical spec and feature statistics on its training slides,
    runs the epochs with checkpoints, then scores validation and test slides with the best
    weights."""

    def __init__(
        self,
        cfg: MILTrainConfig,
        fold: Fold,
        by_id: dict[str, CohortEntry],
        store: BagStore,
        cohort: Cohort,
        numeric_cols: tuple[str, ...],
        categorical_cols: tuple[str, ...],
        extraction: dict[str, Any],
        device: str,
        run: Path,
        log: RunLog,
    ) -> None:
        self.cfg, self.fold, self.by_id, self.store, self.cohort = cfg, fold, by_id, store, cohort
        self.extraction, self.device, self.run_dir, self.log = extraction, device, run, log
        train_rows = [by_id[s].clinical for s in fold.train]
        self.spec = ClinicalSpec.fit(train_rows, numeric_cols, categorical_cols)
        self.last_path = run / "checkpoints" / f"fold_{fold.index}_last.pt"
        self.best_path = run / "checkpoints" / f"fold_{fold.index}_best.pt"

    def _model(self) -> Any:
        from engine.mil.model import GatedAttentionMIL, MILModelConfig

        cfg = self.cfg
        mcfg = MILModelConfig(
            feature_dim=int(self.extraction["feature_dim"]),
            num_classes=len(self.cohort.class_names),
            hidden_dim=cfg.hidden_dim,
            attention_dim=cfg.attention_dim,
            dropout=cfg.dropout,
            numeric_dim=self.spec.numeric_dim,
            cardinalities=self.spec.cardinalities,
            embed_dim=cfg.embed_dim,
            clinical_dim=cfg.clinical_dim,
            attention=cfg.attention,
        )
        return GatedAttentionMIL(mcfg)

    def _clinical(self, slide_ids: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for s in slide_ids:
            num, codes, _ = self.spec.encode([self.by_id[s].clinical])
            out[s] = (num, codes)
        return out

    def _feature_stats(self) -> tuple[np.ndarray, np.ndarray]:
        total = None
        total_sq = None
        count = 0
        for s in self.fold.train:
            f = self.store.features(s).astype(np.float64)
            total = f.sum(0) if total is None else total + f.sum(0)
            total_sq = (f * f).sum(0) if total_sq is None else total_sq + (f * f).sum(0)
            count += f.shape[0]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
        return mean.astype(np.float32), std.astype(np.float32)

    def checkpoint_payload(
        self, model: Any, optimizer: Any, epoch: int, best: dict[str, Any], rng: np.random.Generator
    ) -> dict[str, Any]:
        import torch

        return {
            "model": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "epoch": epoch,
            "best": best,
            "model_config": model.cfg.to_dict(),
            "clinical_spec": self.spec.to_dict(),
            "class_names": list(self.cohort.class_names),
            "extraction": self.extraction,
            "fold": self.fold.index,
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def run(self, n_folds: int, progress: ProgressCallback | None, cancel: CancelToken | None) -> dict[str, Any]:
        import torch
        from torch import nn

        cfg, fold = self.cfg, self.fold
        torch.manual_seed(cfg.seed + fold.index)
        model = self._model()
        mean, std = self._feature_stats()
        model.set_feature_normalisation(torch.from_numpy(mean), torch.from_numpy(std))
        model.to(self.device)
        # foreach: one fused update for all (small) parameter tensors instead of a Python loop
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        rng = np.random.default_rng(cfg.seed * 1000 + fold.index)
        start_epoch = 0
        best: dict[str, Any] = {"score": -math.inf, "epoch": 0, "val_auc": None, "val_loss": None}
        if self.last_path.is_file():
            ck = load_checkpoint(self.last_path)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer_state"])
            start_epoch, best = int(ck["epoch"]), dict(ck["best"])
            rng.bit_generator.state = ck["numpy_rng"]
            torch.set_rng_state(ck["torch_rng"])
        labels = np.array([self.by_id[s].label for s in fold.train])
        n_classes = len(self.cohort.class_names)
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        weights = (
            np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
            if cfg.class_weighted
            else np.ones(n_classes)
        )
        loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=self.device))
        clinical = self._clinical(fold.train + fold.val + fold.test)
        steps = len(fold.train) if not cfg.bag_size else sum(
            -(-self.store.features(s).shape[0] // cfg.bag_size) for s in fold.train
        )
        self.log.event(
            "run_started",
            epochs=cfg.epochs,
            steps_per_epoch=steps,
            device=self.device,
            fold=fold.index,
            folds=n_folds,
            resumed=start_epoch > 0,
            start_epoch=start_epoch,
            train_slides=len(fold.train),
            val_slides=len(fold.val),
            test_slides=len(fold.test),
        )
        stale = 0
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            self.log.state("running", fold=fold.index, folds=n_folds, epoch=epoch, epochs=cfg.epochs)
            self.log.event("epoch_started", epoch=epoch, epochs=cfg.epochs, steps=steps, fold=fold.index)
            model.train()
            items = self._epoch_items(rng)
            total_loss = 0.0
            t0 = time.perf_counter()
            for k, (sid, feats) in enumerate(items, start=1):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                if stop_requested(self.run_dir):
                    raise Cancelled("stop requested")
                num, codes = clinical[sid]
                logits, _ = model(
                    torch.from_numpy(feats).to(self.device),
                    torch.from_numpy(num).to(self.device),
                    torch.from_numpy(codes).to(self.device),
                )
                loss = loss_fn(logits, torch.tensor([self.by_id[sid].label], device=self.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach())
                elapsed = time.perf_counter() - t0
                self.log.step(
                    epoch=epoch,
                    step=k,
                    steps=steps,
                    loss=float(loss.detach()),
                    fold=fold.index,
                    throughput=k / elapsed if elapsed > 0 else None,
                )
            val = self.score(model, fold.val, clinical, loss_fn)
            train_loss = total_loss / max(steps, 1)
            auc = val["auc"]
            # select on validation loss: validation sets are small and their AUC saturates
            # (ties at 1.0) long before the model is calibrated; the loss keeps improving
            score = -val["loss"]
            improved = score > best["score"] + 1e-9
            if improved:
                best = {"score": score, "epoch": epoch, "val_auc": auc, "val_loss": val["loss"]}
                stale = 0
            else:
                stale += 1
            payload = self.checkpoint_payload(model, optimizer, epoch, best, rng)
            if improved:
                save_torch(payload, self.best_path)
                self.log.event("best", epoch=epoch, fold=fold.index, val_auc=auc, val_loss=val["loss"])
            save_torch(payload, self.last_path)
            self.log.event(
                "epoch_ended",
                epoch=epoch,
                fold=fold.index,
                train_loss=train_loss,
                val_loss=val["loss"],
                val_auc=auc,
                val_accuracy=val["accuracy"],
            )
            self.log.event("checkpoint", epoch=epoch, fold=fold.index, path=str(self.last_path.name))
            report(
                progress,
                ProgressEvent(
                    "train" if n_folds == 1 else f"train fold {fold.index}/{n_folds}",
                    epoch,
                    cfg.epochs,
                    f"loss {train_loss:.3f} val auc {auc:.3f}" if auc is not None else f"loss {train_loss:.3f}",
                    {"train_loss": train_loss, "val_auc": auc, "val_loss": val["loss"]},
                ),
            )
            if cfg.patience and stale >= cfg.patience:
                break
        model.load_state_dict(load_checkpoint(self.best_path)["model"])
        val = self.score(model, fold.val, clinical, loss_fn)
        test = self.score(model, fold.test, clinical, loss_fn) if fold.test else {"probs": [], "auc": None}
        result = {
            "fold": fold.index,
            "best_epoch": best["epoch"],
            "best_score": best["score"],
            "val_auc": val["auc"],
            "test_auc": test["auc"],
            "val_ids": list(fold.val),
            "val_probs": val["probs"],
            "test_ids": list(fold.test),
            "test_probs": test["probs"],
        }
        atomic_write_json(self.run_dir / f"fold_{fold.index}.json", result)
        self.log.event(
            "fold_finished", fold=fold.index, best_epoch=best["epoch"], val_auc=val["auc"], test_auc=test["auc"]
        )
        return result

    def _epoch_items(self, rng: np.random.Generator) -> Any:
        """This epoch's training steps as ``(slide_id, features)``: one bag per slide (all tiles, or
        ``max_instances`` of them), or BALNMP's random bags of ``bag_size`` tiles."""
        cfg, train = self.cfg, self.fold.train
        if not cfg.bag_size:
            for j in rng.permutation(len(train)):
                feats = self.store.features(train[j])
                if cfg.max_instances and feats.shape[0] > cfg.max_instances:
                    feats = feats[rng.choice(feats.shape[0], cfg.max_instances, replace=False)]
                yield train[j], feats
            return
        bags = []
        for sid in train:
            n = self.store.features(sid).shape[0]
            perm = rng.permutation(n)
            bags += [(sid, perm[i : i + cfg.bag_size]) for i in range(0, n, cfg.bag_size)]
        for j in rng.permutation(len(bags)):
            sid, idx = bags[j]
            yield sid, self.store.features(sid)[np.sort(idx)]

    def _slide_bags(self, sid: str) -> list[np.ndarray]:
        """A slide's tiles as scored: all of them, or fixed random bags of ``bag_size`` tiles."""
        feats = self.store.features(sid)
        if not self.cfg.bag_size:
            return [feats]
        # the same fixed bags as the exported package scores (engine.mil.predict.Aggregator.run)
        perm = np.random.default_rng(feats.shape[0]).permutation(feats.shape[0])
        return [feats[np.sort(perm[i : i + self.cfg.bag_size])] for i in range(0, feats.shape[0], self.cfg.bag_size)]

    def score(
        self, model: Any, slide_ids: tuple[str, ...], clinical: dict[str, tuple[np.ndarray, np.ndarray]], loss_fn: Any
    ) -> dict[str, Any]:
        """Probabilities, loss, AUC and accuracy of ``model`` on some slides (eval mode, all tiles)."""
        import torch

        from engine.train.metrics import macro_auc

        model.eval()
        probs, losses = [], []
        with torch.no_grad():
            for sid in slide_ids:
                num, codes = clinical[sid]
                # the slide's probability: the mean over its bags (one bag = all tiles by default)
                bag_probs = []
                for feats in self._slide_bags(sid):
                    logits, _ = model(
                        torch.from_numpy(feats).to(self.device),
                        torch.from_numpy(num).to(self.device),
                        torch.from_numpy(codes).to(self.device),
                    )
                    bag_probs.append(torch.softmax(logits, dim=1)[0])
                p_slide = torch.stack(bag_probs).mean(0)  # C
                log_p = torch.log(p_slide.clamp_min(1e-12)).unsqueeze(0)
                target = torch.tensor([self.by_id[sid].label], device=self.device)
                losses.append(float(torch.nn.functional.nll_loss(log_p, target, weight=loss_fn.weight)))
                probs.append(p_slide.cpu().numpy().tolist())
        if not slide_ids:
            return {"probs": [], "loss": float("nan"), "auc": None, "accuracy": None}
        y = np.array([self.by_id[s].label for s in slide_ids])
        p = np.array(probs)
        return {
            "probs": probs,
            "loss": float(np.mean(losses)),
            "auc": _finite(macro_auc(y, p)),
            "accuracy": float((p.argmax(1) == y).mean()),
        }
