"""The seed CNN exactly as published in the PCam / Kaggle histopathologic-cancer-detection notebook.

Three blocks of [3x3 convolution without padding, ReLU, 2x2 max pooling, dropout] with 32/64/128
filters, then dense layers 256/128/64 each followed by ReLU and dropout, and one sigmoid output
trained with binary cross-entropy. No batch norm (that is MetaScope's ``seed_cnn``).

One sigmoid unit inside, two classes outside: :meth:`SeedCNNOriginal.forward` returns the two
logits ``[0, z]`` of the single output ``z``. Everything downstream treats them as logits, and
that is exact:

- ``softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]``, so the exported ONNX graph (output
  ``logits``, class names ``[negative, positive]``) gives heatmaps, ``predict`` and ``evaluate``
  the sigmoid probability with no special case in any consumer;
- the cross-entropy of ``[0, z]`` with label ``y`` is ``-y log p - (1-y) log(1-p)`` with
  ``p = sigmoid(z)``: the binary cross-entropy of the published run (``class_weighting="none"``).
  Unlike log-probabilities, ``[0, z]`` never overflows (a confident model's ``log(1-p)`` does).

:meth:`SeedCNNOriginal.logit` gives the single pre-sigmoid output ``(N, 1)`` itself.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.seed_cnn import _flat_side


class SeedCNNOriginal(nn.Module):
    """The published 3-conv patch classifier with one sigmoid output.

    Args:
        num_classes: must be 2 (one sigmoid unit separates two classes).
        input_size: square input side in pixels (>= 22).
        dropout: dropout rate after each conv block and each dense layer (the notebook's 0.25...).
    """

    head_prefix = "classifier"

    def __init__(self, num_classes: int = 2, input_size: int = 96, dropout: float = 0.25) -> None:
        super().__init__()
        if num_classes != 2:
            raise ValueError(f"seed_cnn_original has one sigmoid output: it separates 2 classes, not {num_classes}")
        side = _flat_side(input_size)
        if side < 1:
            raise ValueError(f"seed_cnn_original needs inputs of at least 22 px, got {input_size}")
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in (32, 64, 128):
            # N x in_ch x S x S -> N x out_ch x (S-2)//2 x (S-2)//2
            layers += [nn.Conv2d(in_ch, out_ch, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Dropout(dropout)]
            in_ch = out_ch
        self.conv = nn.Sequential(*layers)
        dense: list[nn.Module] = [nn.Flatten()]
        width = 128 * side * side
        for units in (256, 128, 64):
            dense += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = units
        self.dense = nn.Sequential(*dense)
        self.classifier = nn.Linear(64, 1)  # the single sigmoid unit
        self.feature_dim = 64

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding: ``(N, 3, S, S)`` float -> ``(N, 64)``."""
        return self.dense(self.conv(x))

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid output ``z``: ``(N, 1)``; ``sigmoid(z)`` = P(positive class)."""
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` logits ``[0, z]``: softmax gives ``[1 - sigmoid(z), sigmoid(z)]``."""
        z = self.logit(x)  # N x 1
        return torch.cat([torch.zeros_like(z), z], dim=1)
