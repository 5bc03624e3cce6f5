"""The architecture registry: names -> constructors, with parameter counts for the wizard.

torch is imported inside functions so listing names costs nothing for callers that never train.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True, slots=True)
class ArchInfo:
    """One registered architecture.

    Attributes:
        name: registry name (``--arch``).
        description: one line for menus and ``--help``.
        params: trainable parameters for 96x96 input and two classes.
        min_input_size: smallest square input side in pixels the network accepts.
        dropout: whether the network has dropout layers (``TrainConfig.dropout`` applies).
    """

    name: str
    description: str
    params: int
    min_input_size: int
    dropout: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    description: str
    module: str
    factory: str
    min_input_size: int
    dropout: bool


_REGISTRY: dict[str, _Entry] = {
    "seed_cnn": _Entry(
        "3 conv (32/64/128) + dense 256/128/64, the classic PCam/Kaggle baseline",
        "engine.models.seed_cnn", "SeedCNN", 22, True,
    ),
    "seed_cnn_original": _Entry(
        "the published PCam/Kaggle seed CNN: no batch norm, dropout after every layer, one sigmoid output (BCE)",
        "engine.models.seed_cnn_original", "SeedCNNOriginal", 22, True,
    ),
    "vgg_small": _Entry(
        "VGG-style 8 conv (32-256) with batch norm and global pooling, small and fast",
        "engine.models.vgg", "VGGSmall", 16, True,
    ),
    "pcam_resnet_s": _Entry(
        "compact ResNet for 96 px patches: stride-2 stem, 4 residual stages 16-128 ch, global pooling (CPU-fast)",
        "engine.models.pcam_net", "pcam_resnet_s", 32, True,
    ),
    "pcam_resnet_m": _Entry(
        "compact ResNet for 96 px patches: stride-2 stem, 4 residual stages 24-192 ch, global pooling",
        "engine.models.pcam_net", "pcam_resnet_m", 32, True,
    ),
    "resnet18": _Entry(
        "ResNet-18, torchvision-compatible weights (ImageNet checkpoints load)",
        "engine.models.resnet", "resnet18", 32, False,
    ),
    "resnet34": _Entry(
        "ResNet-34, torchvision-compatible weights (ImageNet checkpoints load)",
        "engine.models.resnet", "resnet34", 32, False,
    ),
}


def architecture_names() -> list[str]:
    """Registered names, in menu order."""
    return list(_REGISTRY)


def _entry(arch: str) -> _Entry:
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise ConfigError(f"unknown architecture {arch!r}; known: {', '.join(_REGISTRY)}") from None


def _factory(arch: str) -> Callable[..., nn.Module]:
    import importlib

    e = _entry(arch)
    return getattr(importlib.import_module(e.module), e.factory)


@cache
def _count_params(arch: str) -> int:
    import torch

    # the meta device allocates no memory, so even ResNet-34 is counted instantly
    with torch.device("meta"):
        model = _factory(arch)(num_classes=2, input_size=96)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def list_architectures() -> list[ArchInfo]:
    """All registered architectures with parameter counts (96 px input, two classes)."""
    return [
        ArchInfo(name, e.description, _count_params(name), e.min_input_size, e.dropout)
        for name, e in _REGISTRY.items()
    ]


def build_model(
    arch: str,
    num_classes: int,
    input_size: int = 96,
    weights: str | os.PathLike[str] | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """Build a network from the registry.

    Args:
        arch: registry name (see :func:`list_architectures`).
        num_classes: number of output logits (>= 2).
        input_size: square input side in pixels.
        weights: optional local weights file (see :func:`engine.models.weights.load_weights`).
        dropout: dropout rate for networks that have dropout; ``None`` keeps the default.

    Returns:
        An ``nn.Module`` with ``forward(x) -> (N, num_classes)`` logits, ``features(x) -> (N, D)``
        and ``feature_dim`` = D, for ``x`` float ``(N, 3, input_size, input_size)``.

    Raises:
        ConfigError: unknown name, bad sizes, or a weights file that does not fit.
    """
    e = _entry(arch)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if input_size < e.min_input_size:
        raise ConfigError(f"{arch} needs patches of at least {e.min_input_size} px, got {input_size}")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "input_size": input_size}
    if dropout is not None and e.dropout:
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        kwargs["dropout"] = dropout
    try:
        model = _factory(arch)(**kwargs)
    except ValueError as exc:  # e.g. a one-sigmoid network asked for three classes
        raise ConfigError(str(exc)) from None
    if weights is not None:
        from engine.models.weights import load_weights

        load_weights(model, weights)
    return model
