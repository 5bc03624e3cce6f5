"""``TrainConfig``: everything that defines a patch-classifier training run.

Saved as ``config.json`` in the run folder; the training wizard and the CLI both build one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.errors import ConfigError

SCHEDULES = ("cosine", "onecycle", "constant")
OPTIMIZERS = ("adamw", "adam")
CLASS_WEIGHTING = ("none", "balanced")
SPLITS = ("auto", "stratified", "grouped")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
CACHE_MODES = ("auto", "memory", "none")
#: calibration fitted on the validation split after training (engine.train.calibration)
CALIBRATIONS = ("temperature", "isotonic", "none")
#: how the operating threshold is chosen on the validation split (engine.train.calibration.RULES)
THRESHOLD_RULES = ("specificity", "sensitivity", "youden", "fixed")
#: stain normalisation of every patch, fitted on the training patches (engine.infer.stain)
STAIN_NORMS = ("none", "reinhard", "macenko")
#: the largest hard-negative mining strength (the hardest negative drawn at most 1 + this times as
#: often as the easiest)
MAX_HARD_NEGATIVES = 100.0
#: the strength ``--hard-negatives`` without a value uses
DEFAULT_HARD_NEGATIVES = 3.0
# ImageNet statistics: the right normalisation for ImageNet-initialised networks and a harmless
# one for networks trained from scratch (batch norm absorbs the rest)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """Training-time augmentations, applied to whole batches on the training device.

    Attributes:
        flips: random horizontal and vertical flips.
        rot90: random rotations by multiples of 90 degrees (with ``flips``: all 8 rotations and
            reflections, drawn as a random transpose plus random flips).
        brightness: max relative brightness change (0.1 = +-10 %), 0 = off.
        contrast: max relative contrast change, 0 = off.
        saturation: max relative saturation change, 0 = off.
        hed: HED stain jitter strength (Tellez et al. 2018): each of the haematoxylin, eosin and
            DAB concentrations is scaled by U(1-hed, 1+hed) and shifted by U(-hed, hed); 0 = off.
    """

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hed: float = 0.03

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation", "hed"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and 0.0 <= v < 1.0, f"augment {name} must be in [0, 1), got {v!r}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all."""
        return cls(flips=False, rot90=False, brightness=0.0, contrast=0.0, saturation=0.0, hed=0.0)

    @property
    def enabled(self) -> bool:
        return self != AugmentConfig.none()


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """A patch-classifier training run.

    Attributes:
        data: dataset path (any format :func:`engine.data.open_dataset` reads).
        fmt: dataset format, ``"auto"`` to detect.
        mpp: microns per pixel of the patches when the dataset does not know it.
        resize: train on patches resized to this side in pixels (``None`` = as stored); the
            model's input mpp scales with it (96 px at 0.972 um/px -> 48 px at 1.944 um/px),
            trading detail for a 4x cheaper network.
        arch: registry architecture name.
        weights: optional local weights file to initialise from.
        epochs: maximum number of epochs.
        batch_size: patches per optimisation step (over all processes under DDP).
        lr: peak learning rate.
        weight_decay: weight decay (AdamW: decoupled, not on biases / norm scales; Adam: L2).
        optimizer: ``"adamw"`` (MetaScope's default) or ``"adam"`` (the published seed run).
        schedule: ``"cosine"`` (linear warmup then cosine to 0), ``"onecycle"`` (warmup from
            lr/25 over 30 % of the steps, cosine down to lr/25e4) or ``"constant"``.
        warmup_epochs: linear warmup length for ``"cosine"`` and ``"constant"``, in epochs.
        class_weighting: ``"balanced"`` weighs each class by N / (C * n_c) in the loss.
        augment: training augmentations.
        val_fraction: fraction of the data held out for validation.
        split: ``"stratified"``, ``"grouped"`` (by slide/patient/duplicate group) or ``"auto"``
            (grouped when the dataset has groups).
        patience: stop after this many epochs without a better validation AUC; 0 = never.
        seed: seeds the split, the initialisation, the shuffling and the augmentations.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. CUDA trains with
            channels_last and, by default, mixed precision.
        precision: ``"auto"`` (float16 autocast + loss scaling on CUDA, float32 on CPU),
            ``"fp32"`` (no autocast), ``"fp16"`` (CUDA only) or ``"bf16"`` (bfloat16 autocast, no
            loss scaling; CUDA or CPU).
        num_workers: data-loading worker processes when patches are not cached in memory.
        cache: ``"memory"`` decodes all patches once into RAM, ``"none"`` reads them every epoch,
            ``"auto"`` caches when they fit in ``cache_limit_gb``.
        cache_limit_gb: memory allowed for the ``"auto"`` cache, in GiB.
        dropout: dropout rate of networks that have dropout; ``None`` = the network's default.
        freeze_bn: keep batch-norm statistics fixed (fine-tuning pretrained weights with small
            batches; also makes multi-process training exactly equal to one process on CPU).
        mean, std: per-channel normalisation after scaling pixels to [0, 1] (stored in the model).
        positive_class: class name used for sensitivity/specificity and heatmaps; ``None`` =
            class index 1 for two classes, the last class otherwise.
        log_every: write a ``step`` event every this many optimisation steps.
        validate_data: run :func:`engine.data.validate_dataset` before training.
        recipe: the named recipe the settings started from (:mod:`engine.train.recipes`), kept
            for the record; options given after it override its values.
        calibration: calibration fitted on the validation outputs of the best epoch and stored in
            the exported package: ``"temperature"``, ``"isotonic"`` (temperature, then an
            isotonic map; binary only) or ``"none"``.
        threshold_rule: how the package's operating threshold is chosen on the validation split:
            ``"specificity"`` (at most ``1 - threshold_target`` of the negatives flagged),
            ``"sensitivity"`` (sensitivity >= target), ``"youden"`` or ``"fixed"`` (the target).
        threshold_target: the rule's target (``None``: 0.95; 0.5 for ``"fixed"``).
        ema: decay of an exponential moving average of the weights (e.g. 0.999), used for
            validation, ``best.pt`` and export; 0 = off.
        stain_norm: stain normalisation of every patch (training and, through the package, all
            inference): ``"none"``, ``"reinhard"`` (LAB mean/std) or ``"macenko"``; the target
            is fitted on training patches.
        hard_negatives: hard-negative mining strength ``alpha`` (:mod:`engine.train.hard_negatives`):
            after a warm-up epoch, each epoch draws its negative patches with weights
            ``1 + alpha * (rank of their last training loss, in [0, 1])``, positives unchanged and
            the epoch length unchanged; 0 = off (a plain shuffle every epoch).
    """

    data: str
    fmt: str = "auto"
    mpp: float | None = None
    resize: int | None = None
    arch: str = "seed_cnn"
    weights: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    class_weighting: str = "balanced"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_fraction: float = 0.2
    split: str = "auto"
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    cache: str = "auto"
    cache_limit_gb: float = 4.0
    dropout: float | None = None
    freeze_bn: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    positive_class: str | None = None
    log_every: int = 20
    validate_data: bool = True
    recipe: str = "metascope"
    calibration: str = "temperature"
    threshold_rule: str = "specificity"
    threshold_target: float | None = None
    ema: float = 0.0
    stain_norm: str = "none"
    hard_negatives: float = 0.0

    def __post_init__(self) -> None:
        from engine.models.registry import architecture_names

        _check(isinstance(self.data, str) and self.data.strip() != "", "data path is empty")
        _check(self.mpp is None or (isinstance(self.mpp, (int, float)) and self.mpp > 0), f"mpp must be positive, got {self.mpp!r}")
        _check(self.resize is None or (isinstance(self.resize, int) and 8 <= self.resize <= 4096), f"resize must be 8..4096 px, got {self.resize!r}")
        names = architecture_names()
        _check(self.arch in names, f"unknown architecture {self.arch!r}; known: {', '.join(names)}")
        _check(isinstance(self.epochs, int) and 1 <= self.epochs <= 10_000, f"epochs must be 1..10000, got {self.epochs!r}")
        _check(isinstance(self.batch_size, int) and 1 <= self.batch_size <= 65_536, f"batch size must be >= 1, got {self.batch_size!r}")
        _check(math.isfinite(self.lr) and 0 < self.lr < 10, f"learning rate must be in (0, 10), got {self.lr!r}")
        _check(math.isfinite(self.weight_decay) and 0 <= self.weight_decay < 1, f"weight decay must be in [0, 1), got {self.weight_decay!r}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _check(isinstance(self.recipe, str) and self.recipe != "", "recipe name is empty")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _check(0 <= self.warmup_epochs <= self.epochs, f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")
        _check(self.class_weighting in CLASS_WEIGHTING, f"class weighting must be one of {', '.join(CLASS_WEIGHTING)}")
        _check(isinstance(self.augment, AugmentConfig), "augment must be an AugmentConfig")
        _check(0 < self.val_fraction < 1, f"validation fraction must be in (0, 1), got {self.val_fraction!r}")
        _check(self.split in SPLITS, f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        _check(isinstance(self.patience, int) and self.patience >= 0, f"patience must be >= 0, got {self.patience!r}")
        _check(isinstance(self.seed, int) and self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}")
        _check(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _check(isinstance(self.num_workers, int) and 0 <= self.num_workers <= 64, f"num_workers must be 0..64, got {self.num_workers!r}")
        _check(self.cache in CACHE_MODES, f"cache must be one of {', '.join(CACHE_MODES)}, got {self.cache!r}")
        _check(self.cache_limit_gb > 0, f"cache_limit_gb must be positive, got {self.cache_limit_gb!r}")
        _check(self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        _check(len(self.mean) == 3 and len(self.std) == 3 and all(s > 0 for s in self.std), "mean and std need 3 values each, std > 0")
        _check(self.calibration in CALIBRATIONS, f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        _check(self.threshold_rule in THRESHOLD_RULES, f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, got {self.threshold_rule!r}")
        _check(self.threshold_target is None or (isinstance(self.threshold_target, (int, float)) and 0 < self.threshold_target < 1),
               f"threshold target must be in (0, 1), got {self.threshold_target!r}")
        _check(isinstance(self.ema, (int, float)) and (self.ema == 0 or 0.5 <= self.ema < 1),
               f"ema decay must be 0 (off) or in [0.5, 1), got {self.ema!r}")
        _check(self.stain_norm in STAIN_NORMS, f"stain normalisation must be one of {', '.join(STAIN_NORMS)}, got {self.stain_norm!r}")
        _check(isinstance(self.hard_negatives, (int, float)) and not isinstance(self.hard_negatives, bool)
               and math.isfinite(self.hard_negatives) and 0 <= self.hard_negatives <= MAX_HARD_NEGATIVES,
               f"hard-negative mining strength must be 0 (off) to {MAX_HARD_NEGATIVES:g}, got {self.hard_negatives!r}")
        _check(isinstance(self.log_every, int) and self.log_every >= 1, f"log_every must be >= 1, got {self.log_every!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. ``config.json``); unknown keys are an error, missing ones default."""
        if not isinstance(d, dict):
            raise ConfigError("training config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(unknown)}")
        kw = dict(d)
        try:
            if isinstance(kw.get("augment"), dict):
                aug_known = {f.name for f in fields(AugmentConfig)}
                bad = sorted(set(kw["augment"]) - aug_known)
                if bad:
                    raise ConfigError(f"unknown augment keys: {', '.join(bad)}")
                kw["augment"] = AugmentConfig(**kw["augment"])
            for key in ("mean", "std"):
                if key in kw:
                    kw[key] = tuple(float(v) for v in kw[key])
            return cls(**kw)
        except TypeError as exc:
            raise ConfigError(f"invalid training config: {exc}") from exc

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        d = self.to_dict()
        if isinstance(changes.get("augment"), AugmentConfig):
            changes["augment"] = asdict(changes["augment"])
        d.update(changes)
        return TrainConfig.from_dict(d)
