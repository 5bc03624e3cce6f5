"""Building blocks of the training loop: the learning-rate schedule, the autocast dtype, the
weights' exponential moving average, softmax, and the RNG state a checkpoint stores for resume.

Split out of :mod:`engine.train.trainer`, which re-exports the public names.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.errors import ConfigError


def _autocast_dtype(precision: str, use_cuda: bool, torch: Any) -> Any:
    """The autocast dtype for ``TrainConfig.precision`` on this device, or ``None`` (float32)."""
    if precision == "fp16" and not use_cuda:
        raise ConfigError("--precision fp16 needs a CUDA GPU (use bf16 or fp32 on the CPU)")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" or (precision == "auto" and use_cuda):
        return torch.float16
    return None


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier at optimisation ``step`` of ``total`` (``warmup`` steps of warmup)."""
    if schedule == "onecycle":
        # torch's OneCycleLR shape: cosine from lr/25 up to lr over 30 %, then cosine to lr/25e4
        up = max(1, int(0.3 * total))
        lo, end = 1.0 / 25.0, 1.0 / 25e4
        if step < up:
            return lo + (1.0 - lo) * (1 - math.cos(math.pi * step / up)) / 2
        t = min(1.0, (step - up) / max(1, total - up))
        return end + (1.0 - end) * (1 + math.cos(math.pi * t)) / 2
    if warmup > 0 and step < warmup:
        return 0.01 + 0.99 * step / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * t))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class _Ema:
    """Exponential moving average of a model's weights (buffers such as batch-norm statistics are
    copied). The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so
    early averages are not dominated by the random initialisation."""

    def __init__(self, model: Any, decay: float, torch: Any) -> None:
        import copy

        self.torch = torch
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def update(self, model: Any) -> None:
        torch = self.torch
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            ema_p = [p for p in self.module.parameters()]
            src_p = [p.detach() for p in model.parameters()]
            torch._foreach_mul_(ema_p, d)
            torch._foreach_add_(ema_p, src_p, alpha=1.0 - d)
            for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
                b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state.get("updates", 0))


def _get_rng(torch: Any) -> dict[str, Any]:
    import random

    st = np.random.get_state()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np.asarray(st[1], dtype=np.int64)), "pos": int(st[2]),
                  "has_gauss": int(st[3]), "cached": float(st[4])},
        "python": [_py(v) for v in random.getstate()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _py(v: Any) -> Any:
    return [_py(x) for x in v] if isinstance(v, tuple) else v


def _set_rng(rng: dict[str, Any], torch: Any) -> None:
    import random

    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "numpy" in rng:
        n = rng["numpy"]
        np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "python" in rng:
        v = rng["python"]
        random.setstate((v[0], tuple(v[1]), v[2]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
