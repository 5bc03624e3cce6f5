"""Patch-classifier training: ``TrainConfig``, ``train`` (events, checkpoints, resume, DDP),
metrics, and evaluation/prediction with exported models.

Attributes load lazily so that importing :mod:`engine.train.config` (the CLI parser, the wizard)
pulls in neither torch nor scipy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AugmentConfig", "TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("AugmentConfig", "TrainConfig"):
        from engine.train import config

        return getattr(config, name)
    if name in ("TrainResult", "train"):
        from engine.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'engine.train' has no attribute {name!r}")
