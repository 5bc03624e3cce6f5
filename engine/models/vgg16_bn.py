"""VGG16 with batch norm as a feature backbone (BALNMP's published extractor), torchvision key names.

Only the convolutional part (``features.N``) is built; a torchvision ``vgg16_bn`` checkpoint
(e.g. ``vgg16_bn-6c64b313.pth``, which the user has locally) loads into it with
:func:`engine.models.weights.load_weights`, its ImageNet classifier skipped. The embedding is the
global average of the last feature map: ``(N, 3, S, S)`` -> ``(N, 512)``.
"""

from __future__ import annotations

import torch
from torch import nn

_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16BNFeatures(nn.Module):
    """The 13 conv + BN + ReLU layers of VGG16-BN and a global average pool."""

    head_prefix = "classifier"  # torchvision's classifier.* tensors are skipped on load

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.feature_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` normalised RGB -> ``(N, 512)``."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
