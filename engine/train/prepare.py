"""Data preparation for the patch-classifier trainer: opening and checking the dataset, the
train/validation split, the data fingerprint a resume is checked against, the positive class,
and the stain-normalisation target.

Split out of :mod:`engine.train.trainer`, which re-exports the public names.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DatasetError
from engine.train import runfolder as rf
from engine.train.config import TrainConfig


def data_fingerprint(ds: Any) -> str:
    """sha256 over patch ids and labels: identifies "the same data" for resume."""
    h = hashlib.sha256()
    h.update(str(len(ds)).encode())
    for i in ds.ids:
        h.update(str(i).encode("utf-8", "replace") + b"\0")
    h.update(np.asarray(ds.labels, dtype=np.int64).tobytes())
    h.update("\0".join(ds.class_names).encode())
    return h.hexdigest()


def _open_dataset(cfg: TrainConfig) -> Any:
    from engine.data import open_dataset

    opts = {} if cfg.resize is None else {"resize": (cfg.resize, cfg.resize)}
    return open_dataset(cfg.data, fmt=cfg.fmt, mpp=cfg.mpp, labelled=True, **opts)


def check_trainable(ds: Any) -> None:
    """Reject datasets a classifier cannot learn from.

    Raises:
        DatasetError: empty, unlabelled patches, fewer than two classes with patches.
    """
    if len(ds) == 0:
        raise DatasetError("the dataset is empty: no patches found")
    labels = np.asarray(ds.labels, dtype=np.int64)
    if (labels < 0).any():
        raise DatasetError(f"{int((labels < 0).sum())} patches have no label; training needs every patch labelled")
    names = tuple(ds.class_names)
    if len(names) < 2:
        raise DatasetError(f"the dataset has one class only ({', '.join(names) or 'none'}); a classifier needs two or more")
    present = np.unique(labels)
    if present.size < 2:
        raise DatasetError(
            f"all {labels.size} patches are of class {names[int(present[0])]!r}; a classifier needs patches of two or more classes"
        )
    h, w = ds.patch_size
    if h != w:
        raise DatasetError(f"patches must be square, got {w}x{h} px")


def training_split(cfg: TrainConfig, ds: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """The run's ``(train_idx, val_idx, strategy)``: deterministic in the config and the data.

    Raises:
        DatasetError: a split too small to train or validate on.
    """
    from engine.data import split_dataset

    strategy = cfg.split
    if strategy == "auto":
        strategy = "grouped" if ds.groups is not None else "stratified"
    train_idx, val_idx = split_dataset(ds, cfg.val_fraction, strategy=strategy, seed=cfg.seed)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if train_idx.size == 0 or val_idx.size == 0:
        raise DatasetError(
            f"the dataset is too small to hold out {cfg.val_fraction:.0%} for validation "
            f"({len(ds)} patches: {train_idx.size} train, {val_idx.size} validation)"
        )
    if np.unique(np.asarray(ds.labels)[train_idx]).size < 2:
        raise DatasetError("the training split holds one class only; add patches or lower the validation fraction")
    return train_idx, val_idx, strategy


def run_validation_split(run_dir: str | os.PathLike[str]) -> tuple[TrainConfig, Any, np.ndarray, str]:
    """A finished run's config, its dataset opened as the trainer opened it (``--resize`` too),
    and its validation rows and split strategy, rebuilt exactly as the trainer made them.

    Raises:
        DatasetError: the data changed since the run was trained (its fingerprint differs).
    """
    stored = rf.load_run_config(Path(run_dir))
    cfg = TrainConfig.from_dict(stored["config"])
    ds = _open_dataset(cfg)
    if stored.get("fingerprint") not in (None, data_fingerprint(ds)):
        raise DatasetError(
            f"the data at {cfg.data} changed since run {run_dir} was trained; cannot rebuild its validation split"
        )
    _, val_idx, strategy = training_split(cfg, ds)
    return cfg, ds, val_idx, strategy


def _positive_index(cfg: TrainConfig, class_names: tuple[str, ...], ds: Any = None) -> int:
    if cfg.positive_class is None:
        # the dataset infers it from the names ("tumor", "1", "metastasis", ...)
        inferred = getattr(ds, "positive_class", None)
        if isinstance(inferred, (int, np.integer)) and 0 <= int(inferred) < len(class_names):
            return int(inferred)
        return 1 if len(class_names) == 2 else len(class_names) - 1
    if cfg.positive_class not in class_names:
        raise ConfigError(f"positive class {cfg.positive_class!r} is not a class of the dataset ({', '.join(class_names)})")
    return class_names.index(cfg.positive_class)


def _describe(ds: Any) -> dict[str, Any]:
    try:
        d = ds.describe()
    except (AttributeError, TypeError):
        return {}
    return _jsonable(d) if isinstance(d, dict) else {}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


#: training patches the stain-normalisation target is fitted on (a fixed-seed sample)
STAIN_FIT_PATCHES = 2048


def _fit_stain(cfg: TrainConfig, ds: Any, train_idx: np.ndarray, ckpt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's stain-normalisation target: from the checkpoint on resume, else fitted on up to
    :data:`STAIN_FIT_PATCHES` training patches (a fixed-seed sample)."""
    if cfg.stain_norm == "none":
        return None
    if ckpt is not None and ckpt.get("stain_norm"):
        return dict(ckpt["stain_norm"])
    from engine.infer.stain import fit_target

    rng = np.random.default_rng([cfg.seed, 7])
    pick = np.sort(rng.choice(train_idx, size=min(STAIN_FIT_PATCHES, train_idx.size), replace=False))
    read_many = getattr(ds, "read_many", None)
    tiles = read_many(pick) if read_many is not None else np.stack([ds.read(int(i)) for i in pick])
    return _jsonable(fit_target(np.asarray(tiles, dtype=np.uint8), cfg.stain_norm))
