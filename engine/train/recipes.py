"""Named training recipes: complete settings that reproduce a known run (``--recipe NAME``).

- ``metascope``: MetaScope's defaults (``seed_cnn`` with batch norm, ImageNet normalisation,
  flips / 90-degree rotations / colour and HED stain jitter, AdamW with weight decay, warmup +
  cosine schedule, balanced class weights, batch 64, 10 epochs with early stopping after 5
  epochs without a better validation AUC, split grouped by duplicates / slides when known).
- ``pcam-seed``: the published PCam / Kaggle seed notebook: ``seed_cnn_original`` (no batch norm,
  one sigmoid output, binary cross-entropy), pixels / 255 only (mean 0, std 1), no augmentation,
  Adam lr 1e-3 (no weight decay, no schedule), batch 1024, 20 epochs, a stratified random 80:20
  split, no class weights, no early stopping (the best epoch by validation AUC is kept for export,
  as every MetaScope run does; the last epoch is in ``checkpoint.pt``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from engine.errors import ConfigError
from engine.train.config import AugmentConfig, TrainConfig

_PCAM_SEED: dict[str, Any] = {
    "arch": "seed_cnn_original",
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "augment": asdict(AugmentConfig.none()),
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "batch_size": 1024,
    "epochs": 20,
    "val_fraction": 0.2,
    "split": "stratified",
    "class_weighting": "none",
    "patience": 0,
    "dropout": None,
}

#: recipe name -> one line for ``--help``.
RECIPES: dict[str, str] = {
    "metascope": "MetaScope defaults: seed_cnn + batch norm, augmentation, AdamW + cosine, batch 64, 10 epochs, early stopping",
    "pcam-seed": "the published PCam/Kaggle run: seed_cnn_original, pixels/255, no augmentation, Adam 1e-3, batch 1024, 20 epochs, 80:20",
}


def recipe_settings(name: str) -> dict[str, Any]:
    """The TrainConfig fields a recipe sets (``recipe`` included).

    Raises:
        ConfigError: unknown recipe name.
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    if name == "metascope":
        d = TrainConfig(data="-").to_dict()
        d.pop("data")
        return d
    return {**_PCAM_SEED, "recipe": name}


def recipe_config(name: str, data: str, **overrides: Any) -> TrainConfig:
    """A complete :class:`TrainConfig` for ``data`` from recipe ``name``, with ``overrides`` applied."""
    d = {**recipe_settings(name), "data": data}
    d.update(overrides)
    return TrainConfig.from_dict(d)
