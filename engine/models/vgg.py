"""A small VGG-style network: stacks of 3x3 convolutions with batch norm, global average pooling.

Four stages of two convolutions (32/64/128/256 channels) with 2x2 max pooling; about 1.2 M
parameters, independent of the input size thanks to the global pooling.
"""

from __future__ import annotations

import torch
from torch import nn


class VGGSmall(nn.Module):
    """VGG-style patch classifier.

    Args:
        num_classes: number of output logits.
        input_size: square input side in pixels (>= 16).
        dropout: dropout rate before the classifier.
    """

    head_prefix = "classifier"

    def __init__(self, num_classes: int, input_size: int = 96, dropout: float = 0.3) -> None:
        super().__init__()
        if input_size < 16:
            raise ValueError(f"vgg_small needs inputs of at least 16 px, got {input_size}")
        layers: list[nn.Module] = []
        in_ch = 3
        for ch in (32, 64, 128, 256):
            for _ in range(2):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
                in_ch = ch
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(256, num_classes)
        self.feature_dim = 256

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding: ``(N, 3, S, S)`` -> ``(N, 256)``."""
        return torch.flatten(self.pool(self.body(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.dropout(self.features(x)))
