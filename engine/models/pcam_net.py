"""Compact residual networks for 96 px PCam patches, sized for CPU training.

A stride-2 stem takes the 96x96 patch to 48x48 at once (where a full-resolution stem would cost
most of the compute), then four stages of pre-activation-free basic residual blocks (He et al.
2016) with batch norm halve the side each time (48 -> 24 -> 12 -> 6 -> 3 for 96 px input), and
global average pooling makes the network independent of the input size. The width is the only
knob: ``pcam_resnet_s`` (16-128 channels) and ``pcam_resnet_m`` (24-192 channels).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.resnet import BasicBlock


class PCamResNet(nn.Module):
    """Small ResNet for histology patches.

    Args:
        num_classes: number of output logits.
        input_size: square input side in pixels (>= 32).
        width: channels of the first stage; stages use width x (1, 2, 4, 8).
        blocks: residual blocks per stage.
        dropout: dropout rate before the classifier.
    """

    head_prefix = "classifier"

    def __init__(
        self, num_classes: int, input_size: int = 96, width: int = 24,
        blocks: tuple[int, ...] = (1, 1, 1, 1), dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if input_size < 32:
            raise ValueError(f"pcam_resnet needs inputs of at least 32 px, got {input_size}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_ch = width
        for i, n in enumerate(blocks):
            out_ch = width * 2**i
            for b in range(n):
                stages.append(BasicBlock(in_ch, out_ch, stride=2 if (b == 0 and i > 0) else 1))
                in_ch = out_ch
        self.body = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)
        self.feature_dim = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last batch norm of each residual branch: every block starts as identity
        for m in self.body.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding: ``(N, 3, S, S)`` -> ``(N, feature_dim)``."""
        return torch.flatten(self.pool(self.body(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.dropout(self.features(x)))


def pcam_resnet_s(num_classes: int, input_size: int = 96, dropout: float = 0.2) -> PCamResNet:
    """16/32/64/128 channels, one block per stage."""
    return PCamResNet(num_classes, input_size, width=16, blocks=(1, 1, 1, 1), dropout=dropout)


def pcam_resnet_m(num_classes: int, input_size: int = 96, dropout: float = 0.2) -> PCamResNet:
    """24/48/96/192 channels, one block per stage."""
    return PCamResNet(num_classes, input_size, width=24, blocks=(1, 1, 1, 1), dropout=dropout)
