"""Post-hoc stochastic weight averaging (Izmailov et al. 2018) of a training run's last epochs.

``benchmarks/train_starter.py`` keeps a copy of ``checkpoint.pt`` after every epoch
(``RUN/snap/ckpt-epochN.pt``); :func:`swa_checkpoint` averages the weights of the last ``k``
of them, recomputes the batch-norm statistics on training patches (averaged weights need their
own statistics) and writes a checkpoint that ``engine.export.export_onnx`` takes like ``best.pt``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np


def snapshots(run_dir: Path) -> dict[int, Path]:
    """``{epoch: path}`` of the per-epoch checkpoint copies."""
    out = {}
    for p in (run_dir / "snap").glob("ckpt-epoch*.pt"):
        m = re.fullmatch(r"ckpt-epoch(\d+)\.pt", p.name)
        if m:
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def _average(paths: list[Path]) -> dict[str, Any]:
    import torch

    from engine.train.runfolder import load_checkpoint

    avg: dict[str, Any] = {}
    for p in paths:
        sd = load_checkpoint(p)["model"]
        for k, v in sd.items():
            if v.is_floating_point():
                avg[k] = avg.get(k, torch.zeros_like(v)) + v / len(paths)
            else:
                avg[k] = v.clone()
    return avg


def _inputs(ds: Any, idx: np.ndarray, mean: list[float], std: list[float]) -> Any:
    import torch

    x = torch.from_numpy(ds.read_many(idx)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _recompute_bn(model: Any, ds: Any, idx: np.ndarray, mean: list[float], std: list[float], batch: int = 64) -> None:
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for i in range(0, idx.size, batch):
            model(_inputs(ds, idx[i : i + batch], mean, std))
    model.eval()


def _val_metrics(model: Any, ds: Any, idx: np.ndarray, mean: list[float], std: list[float], positive: int) -> dict[str, Any]:
    import torch

    from engine.train.metrics import classification_metrics

    out = []
    with torch.no_grad():
        for i in range(0, idx.size, 256):
            out.append(torch.softmax(model(_inputs(ds, idx[i : i + 256], mean, std)), 1).numpy())
    m = classification_metrics(np.asarray(ds.labels, dtype=np.int64)[idx], np.concatenate(out), positive)
    return {"val_auc": m["auc"], "val_loss": m["loss"], "accuracy": m["accuracy"], "sensitivity": m["sensitivity"],
            "specificity": m["specificity"], "f1": m["f1"]}


def swa_checkpoint(run_dir: Path, k: int, out: Path, n_bn: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Average the last ``k`` epoch snapshots into ``out`` (a ``best.pt``-style checkpoint).

    Returns:
        ``{"epochs": [...], "bn_patches": n}``.
    """
    from engine.models.registry import build_model
    from engine.train.config import TrainConfig
    from engine.train.runfolder import BEST_NAME, load_checkpoint, save_torch
    from engine.train.trainer import _open_dataset, training_split

    snaps = snapshots(run_dir)
    epochs = list(snaps)[-k:]
    if len(epochs) < 2:
        raise SystemExit(f"SWA needs at least 2 epoch snapshots in {run_dir / 'snap'}, found {len(snaps)}")
    best = load_checkpoint(run_dir / BEST_NAME)
    cfg = TrainConfig.from_dict(best["config"])
    model = build_model(best["arch"], int(best["num_classes"]), int(best["input_size"]))
    model.load_state_dict(_average([snaps[e] for e in epochs]))
    ds = _open_dataset(cfg)
    train_idx, val_idx, _ = training_split(cfg, ds)
    pick = np.random.default_rng(seed).choice(train_idx, min(n_bn, train_idx.size), replace=False)
    _recompute_bn(model, ds, np.sort(pick), best["mean"], best["std"])
    ck = dict(best)
    ck["model"] = {k2: v.detach().clone() for k2, v in model.state_dict().items()}
    ck["epoch"] = epochs[-1]
    ck["metrics"] = {**_val_metrics(model, ds, val_idx, best["mean"], best["std"], int(best["positive_class"])), "epoch": epochs[-1]}
    ck["swa"] = {"epochs": epochs, "bn_patches": int(pick.size)}
    save_torch(ck, out)
    return {**ck["swa"], "val_auc": ck["metrics"]["val_auc"]}
