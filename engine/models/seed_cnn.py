"""The seed CNN of the PatchCamelyon / Kaggle histopathologic-cancer-detection notebooks.

Three valid 3x3 convolutions (32/64/128 channels) each followed by batch norm, ReLU, 2x2 max
pooling and dropout, then dense layers 256/128/64 and the classifier. About 3.4 M parameters for
96x96 input (almost all of them in the first dense layer).
"""

from __future__ import annotations

import torch
from torch import nn


def _flat_side(input_size: int) -> int:
    # valid 3x3 conv shrinks by 2, 2x2 max pool halves (floor); three times
    side = input_size
    for _ in range(3):
        side = (side - 2) // 2
    return side


class SeedCNN(nn.Module):
    """Classic 3-conv patch classifier.

    Args:
        num_classes: number of output logits.
        input_size: square input side in pixels (>= 22 so the last feature map is not empty).
        dropout: dropout rate after each conv block and between dense layers.
    """

    head_prefix = "classifier"

    def __init__(self, num_classes: int, input_size: int = 96, dropout: float = 0.25) -> None:
        super().__init__()
        side = _flat_side(input_size)
        if side < 1:
            raise ValueError(f"seed_cnn needs inputs of at least 22 px, got {input_size}")
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in (32, 64, 128):
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
            ]
            in_ch = out_ch
        self.conv = nn.Sequential(*layers)
        self.dense = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, 64),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(64, num_classes)
        self.feature_dim = 64

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding: ``(N, 3, S, S)`` float -> ``(N, 64)``."""
        return self.dense(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.features(x))
