"""Initialise a network from a local weights file (ImageNet, a pathology checkpoint, a run).

Files are loaded with ``torch.load(..., weights_only=True)``: tensors only, no pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

# wrappers seen in the wild: torchvision saves a bare state_dict, Lightning {"state_dict"},
# MetaScope checkpoints and many research repos {"model"}
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
# DDP / torch.compile / Lightning prefixes on parameter names
_PREFIXES = ("module.", "_orig_mod.", "model.")
_SHOW = 4  # keys named in an error message


def _unwrap(obj: Any, name: str) -> dict[str, Any]:
    import torch

    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise ConfigError(f"weights file {name} holds no state_dict (a dict of tensors, or {{'state_dict': ...}})")


def _strip_prefixes(sd: dict[str, Any], model_keys: set[str]) -> dict[str, Any]:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd) and not any(k in model_keys for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _fmt(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def load_weights(model: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load matching tensors from ``path`` into ``model`` in place.

    The classifier head (``model.head_prefix``) is skipped when its shape differs (a 1000-class
    ImageNet head on a 2-class model); every other parameter and buffer must be present with the
    same shape.

    Args:
        model: a registry network (has ``head_prefix``).
        path: a ``.pt``/``.pth`` file with a state_dict, or ``{"state_dict"|"model": state_dict}``.

    Returns:
        A summary: ``{"path", "loaded": n tensors, "head_loaded": bool}``.

    Raises:
        ConfigError: missing/unreadable file, or tensors that do not fit the backbone (named with
            their shapes).
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights file not found: {p}")
    try:
        raw = torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load weights file {p.name}: {first[:200]}") from exc
    target = model.state_dict()
    sd = _strip_prefixes(_unwrap(raw, p.name), set(target))
    head = str(getattr(model, "head_prefix", "")) + "."

    def is_head(k: str) -> bool:
        return head != "." and k.startswith(head)

    missing = [k for k in target if k not in sd and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target and not is_head(k)]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in sd and not is_head(k) and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    arch = type(model).__name__
    if not any(k in target for k in sd):
        raise ConfigError(
            f"weights file {p.name} does not fit {arch}: none of its {len(sd)} tensors match "
            f"(file has e.g. {_fmt(list(sd))}; the network expects e.g. {_fmt(list(target))})"
        )
    problems = []
    if mismatched:
        problems.append(f"shape mismatch for {_fmt(mismatched)}")
    if missing:
        problems.append(f"missing {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected {_fmt(unexpected)}")
    if problems:
        raise ConfigError(f"weights file {p.name} does not fit {arch}: " + "; ".join(problems))
    head_keys = [k for k in target if is_head(k)]
    head_fits = bool(head_keys) and all(k in sd and tuple(sd[k].shape) == tuple(target[k].shape) for k in head_keys)
    loadable = {k: v for k, v in sd.items() if k in target and (head_fits or not is_head(k))}
    try:
        model.load_state_dict(loadable, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"weights file {p.name} does not fit {arch}: {str(exc).splitlines()[0][:200]}") from exc
    return {"path": str(p), "loaded": len(loadable), "head_loaded": head_fits}
