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

    if cfg.flips:
        hflip = (torch.rand(global_n, generator=g) < 0.5)[sl].to(dev)
        vflip = (torch.rand(global_n, generator=g) < 0.5)[sl].to(dev)
        x = torch.where(hflip[:, None, None, None], x.flip(-1), x)
        x = torch.where(vflip[:, None, None, None], x.flip(-2), x)
    if cfg.rot90 and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (global_n,), generator=g)[sl]
        # rotate the subset per k; 3 rotations of a batch at most, no per-sample Python loop
        out = x.clone()
        for r in (1, 2, 3):
            sel = (k == r).nonzero().flatten().to(dev)
            if sel.numel():
                out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
        x = out
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
    return x.clamp_(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device)
    return (x * w[None, :, None, None]).sum(dim=1, keepdim=True)


def _hed_jitter(x: torch.Tensor, draw, strength: float) -> torch.Tensor:
    dev, dt = x.device, x.dtype
    alpha = torch.stack([draw(1 - strength, 1 + strength) for _ in range(3)], dim=1)  # n x 3
    beta = torch.stack([draw(-strength, strength) for _ in range(3)], dim=1)  # n x 3
    hed_from_rgb = _HED_FROM_RGB.to(device=dev, dtype=dt)
    rgb_from_hed = _RGB_FROM_HED.to(device=dev, dtype=dt)
    od = -torch.log(x.clamp(min=1e-6))  # n x 3 x H x W optical density
    conc = torch.einsum("nchw,cd->ndhw", od, hed_from_rgb)  # n x 3(HED) x H x W
    conc = conc * alpha[:, :, None, None] + beta[:, :, None, None]
    od2 = torch.einsum("ndhw,dc->nchw", conc, rgb_from_hed)
    return torch.exp(-od2)
