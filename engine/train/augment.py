"""Histology augmentations on whole batches (vectorised torch ops on the training device).

Random parameters are drawn on the CPU from a generator seeded per (seed, epoch, step) for the
whole global batch and then sliced per process, so one process and N DDP processes augment each
patch identically, and a resumed run repeats the same augmentations.
"""

from __future__ import annotations

import torch

from engine.train.config import AugmentConfig

# Ruifrok & Johnston colour deconvolution (skimage.color.rgb_from_hed): rows are the optical
# density vectors of haematoxylin, eosin and DAB
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_GRAY = (0.299, 0.587, 0.114)


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator unique to one optimisation step of one run."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 100_003 + step) % (2**63 - 1))
    return g


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def augment_batch(
    x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, global_n: int, offset: int = 0
) -> torch.Tensor:
    """Augment a batch.

    Args:
        x: float ``(n, 3, H, W)`` in [0, 1], on any device; H == W when ``rot90`` is on.
        cfg: which augmentations and how strong.
        g: CPU generator for this step (see :func:`batch_generator`).
        global_n: size of the global batch the parameters are drawn for (>= offset + n).
        offset: position of this process's slice in the global batch.

    Returns:
        float ``(n, 3, H, W)`` in [0, 1].
    """
    n = x.shape[0]
    sl = slice(offset, offset + n)
    dev = x.device

    def draw(lo: float, hi: float) -> torch.Tensor:
        return _uniform(g, global_n, lo, hi)[sl].to(dev)

    # geometric: random transpose + horizontal + vertical flip draw uniformly from all 8
    # rotations/reflections (the dihedral group), three masked selects and no per-sample loop
    if cfg.rot90 and x.shape[-1] == x.shape[-2]:
        tr = (torch.rand(global_n, generator=g) < 0.5)[sl].to(dev)
        x = torch.where(tr[:, None, None, None], x.transpose(-1, -2), x)
    if cfg.flips or cfg.rot90:
        hflip = (torch.rand(global_n, generator=g) < 0.5)[sl].to(dev)
        vflip = (torch.rand(global_n, generator=g) < 0.5)[sl].to(dev)
        x = torch.where(hflip[:, None, None, None], x.flip(-1), x)
        x = torch.where(vflip[:, None, None, None], x.flip(-2), x)
    if cfg.hed > 0:
        x = _hed_jitter(x, draw, cfg.hed)
    if cfg.brightness > 0:
        x = x * draw(1 - cfg.brightness, 1 + cfg.brightness)[:, None, None, None]
    if cfg.contrast > 0:
        c = draw(1 - cfg.contrast, 1 + cfg.contrast)[:, None, None, None]
        mean = _gray(x).mean(dim=(-2, -1), keepdim=True)
        x = (x - mean) * c + mean
    if cfg.saturation > 0:
        s = draw(1 - cfg.saturation, 1 + cfg.saturation)[:, None, None, None]
        gray = _gray(x)
        x = (x - gray) * s + gray
    # contiguous NCHW: strided views would send the convolutions down slow paths
    return x.clamp_(0.0, 1.0).contiguous()


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device)
    return (x * w[None, :, None, None]).sum(dim=1, keepdim=True)


def _hed_jitter(x: torch.Tensor, draw, strength: float) -> torch.Tensor:
    dev, dt = x.device, x.dtype
    alpha = torch.stack([draw(1 - strength, 1 + strength) for _ in range(3)], dim=1)  # n x 3
    beta = torch.stack([draw(-strength, strength) for _ in range(3)], dim=1)  # n x 3
    hed_from_rgb = _HED_FROM_RGB.to(device=dev, dtype=dt)
    rgb_from_hed = _RGB_FROM_HED.to(device=dev, dtype=dt)
    # the jitter is affine in optical density, so it folds into one 3x3 matrix and one offset
    # per patch: od' = od @ (M_hed diag(alpha) M_rgb) + beta @ M_rgb
    mats = hed_from_rgb[None] * alpha[:, None, :] @ rgb_from_hed  # n x 3 x 3
    offs = beta @ rgb_from_hed  # n x 3
    n, c, h, w = x.shape
    od = -torch.log(x.clamp(min=1e-6)).reshape(n, c, h * w)  # n x 3 x HW optical density
    od2 = torch.bmm(mats.transpose(1, 2), od) + offs[:, :, None]  # n x 3 x HW
    return torch.exp(-od2).reshape(n, c, h, w)
