"""The patch-classifier training loop: events, checkpoints, resume, early stopping, DDP.

``train(cfg, run_dir)`` writes everything a follower needs into the run folder (see
:mod:`engine.train.runfolder`). A run killed at any moment loses at most the epoch in progress:
``checkpoint.pt`` is replaced atomically after every epoch and ``train(..., resume=True)``
continues from it with the same shuffling, augmentations and RNG state.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.errors import Cancelled, ConfigError
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, report
from engine.train import runfolder as rf
from engine.train.config import TrainConfig
from engine.train.ddp import DistInfo, env_dist_info
from engine.train.epoch_validation import _calibrate, _epoch_msg, _validate
from engine.train.loop_tools import _autocast_dtype, _Ema, _get_rng, _set_rng, _softmax, lr_factor
from engine.train.metrics import classification_metrics
from engine.train.prepare import (
    STAIN_FIT_PATCHES,
    _describe,
    _fit_stain,
    _jsonable,
    _open_dataset,
    _positive_index,
    check_trainable,
    data_fingerprint,
    run_validation_split,
    training_split,
)

__all__ = [
    "RESUME_MUTABLE",
    "STAIN_FIT_PATCHES",
    "TrainResult",
    "check_trainable",
    "data_fingerprint",
    "lr_factor",
    "run_validation_split",
    "train",
    "training_split",
]

# fields a resumed run may change; anything else must match the stored config
RESUME_MUTABLE = (
    "epochs", "device", "num_workers", "cache", "cache_limit_gb", "log_every", "patience", "validate_data",
    "calibration", "threshold_rule", "threshold_target", "precision",
)


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        run_dir: the run folder.
        status: ``"finished"`` (all epochs) or ``"early_stopped"``.
        epochs_completed: epochs trained in total (including before a resume).
        best_epoch: 1-based epoch of the best validation AUC (``best.pt``).
        best_metrics: validation metrics of that epoch.
        history: per-epoch records (``train_loss``, ``val_loss``, ``val_auc``, ...).
        duration_s: wall time of this call, in seconds.
    """

    run_dir: Path
    status: str
    epochs_completed: int
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / rf.BEST_NAME


# --------------------------------------------------------------------------------------------
# the run


class _Run:
    """State of one training call (kept out of :func:`train` to keep the loop readable)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, dist: DistInfo, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.dist = dist
        self.progress = progress if dist.is_main else None
        self.cancel = cancel
        self.events = rf.EventLog(run_dir, enabled=dist.is_main)
        self.t0 = time.monotonic()

    # -- device ----------------------------------------------------------------------------
    def setup_device(self) -> None:
        import torch

        want = self.cfg.device
        if want == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but no CUDA GPU is available to PyTorch")
        self.use_cuda = want in ("auto", "cuda") and torch.cuda.is_available()
        if self.use_cuda:
            torch.cuda.set_device(self.dist.local_rank)
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.backends.cudnn.benchmark = True
        else:
            self.device = torch.device("cpu")
        self.amp_dtype = _autocast_dtype(self.cfg.precision, self.use_cuda, torch)
        self.amp = self.amp_dtype is not None
        self.loss_scaling = self.amp_dtype is torch.float16  # bfloat16 has float32's range

    def state(self, status: str, **extra: Any) -> None:
        if self.dist.is_main:
            rf.write_state(self.run_dir, status, epochs=self.cfg.epochs, **extra)


def _resolve_config(cfg: TrainConfig | None, run_dir: Path, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    if not resume:
        if cfg is None:
            raise ConfigError("a training config is needed to start a new run")
        return cfg, None
    stored_raw = rf.load_run_config(run_dir)
    stored = TrainConfig.from_dict(stored_raw["config"])
    if rf.is_running(run_dir):
        st = rf.read_state(run_dir) or {}
        raise rf.RunLockedError(f"run {run_dir} is being trained by process {st.get('pid')}; stop it before resuming", st.get("pid"))
    if cfg is None:
        return stored, stored_raw
    a, b = stored.to_dict(), cfg.to_dict()
    differ = [k for k in a if k not in RESUME_MUTABLE and a[k] != b[k]]
    if differ:
        raise rf.RunFolderError(
            f"run {run_dir} was started with different settings ({', '.join(differ)}); resume it with the "
            "same settings or start a new run folder"
        )
    return cfg, stored_raw


def train(
    cfg: TrainConfig | None,
    run_dir: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
    dataset: Any | None = None,
) -> TrainResult:
    """Train a patch classifier into ``run_dir``.

    Args:
        cfg: the run's settings; may be ``None`` with ``resume=True`` (use the stored ones).
        run_dir: run folder. New runs need a missing or empty folder; ``resume=True`` needs a
            run folder of the same data and settings (epochs may be raised).
        progress: receives ``cache``, ``train`` (per step) and ``validate`` events, and an
            ``epoch`` event with the epoch's metrics.
        cancel: checked every optimisation step; on cancel the last checkpoint is kept, a
            ``cancelled`` event is written and :class:`~engine.errors.Cancelled` is raised.
        resume: continue an interrupted (killed, cancelled, failed) or finished run.
        dataset: an already opened PatchDataset to use instead of opening ``cfg.data``.

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError, DatasetError, RunFolderError: bad settings, unusable data, a run folder that
            exists (without ``resume``) or does not match.
        Cancelled: ``cancel`` was set.
    """
    import torch

    run_dir = Path(run_dir)
    dist = env_dist_info()
    cfg, stored_raw = _resolve_config(cfg, run_dir, resume)
    run = _Run(cfg, run_dir, dist, progress, cancel)
    run.setup_device()
    from engine.train import ddp

    ddp.init_process_group(dist, run.use_cuda)
    finished = False
    try:
        if not resume and dist.is_main:
            rf.prepare_new_run(run_dir)
        # rank 0 holds the folder's OS lock for the whole run: no second trainer, no live resume
        with rf.run_lock(run_dir, enabled=dist.is_main):
            if not resume:
                ddp.barrier(dist)
            ds = dataset if dataset is not None else _open_dataset(cfg)
            check_trainable(ds)
            fingerprint = data_fingerprint(ds)
            if stored_raw is not None and stored_raw.get("fingerprint") not in (None, fingerprint):
                raise rf.RunFolderError(
                    f"the data at {cfg.data} changed since run {run_dir} started (different patches or labels); "
                    "start a new run folder"
                )
            result = _train(run, ds, fingerprint, resume, torch)
        finished = True
        return result
    finally:
        # after a finished run every rank tears the group down together; after an error, locally
        ddp.destroy(dist, synchronize=finished)


def _train(run: _Run, ds: Any, fingerprint: str, resume: bool, torch: Any) -> TrainResult:
    cfg, dist, events = run.cfg, run.dist, run.events
    class_names = tuple(ds.class_names)
    positive = _positive_index(cfg, class_names, ds)
    size = int(ds.patch_size[0])
    ckpt_path = run.run_dir / rf.CHECKPOINT_NAME
    ckpt = rf.load_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if ckpt is not None and ckpt.get("fingerprint") not in (None, fingerprint):
        raise rf.RunFolderError(f"checkpoint in {run.run_dir} belongs to different data; start a new run folder")
    if ckpt is not None and int(ckpt["epoch"]) >= cfg.epochs:
        raise rf.RunFolderError(
            f"run {run.run_dir} already completed {int(ckpt['epoch'])} of {cfg.epochs} epochs; raise --epochs to train further"
        )

    report_ = None
    if cfg.validate_data and dist.is_main and not resume:
        from engine.data import validate_dataset

        report_ = validate_dataset(ds, progress=run.progress, cancel=run.cancel)
        report_.raise_if_errors()
    train_idx, val_idx, strategy = training_split(cfg, ds)
    labels_all = np.asarray(ds.labels, dtype=np.int64)
    data_summary = {
        **_describe(ds),
        "path": cfg.data,
        "n_patches": len(ds),
        "n_train": int(train_idx.size),
        "n_val": int(val_idx.size),
        "split": strategy,
        "class_counts": {n: int((labels_all == c).sum()) for c, n in enumerate(class_names)},
        "mpp": ds.mpp if ds.mpp is not None else cfg.mpp,
        "patch_size": [int(s) for s in ds.patch_size],
    }
    if dist.is_main and not resume:
        from engine.fileio import atomic_write_json

        atomic_write_json(
            run.run_dir / rf.CONFIG_NAME,
            {
                "config": cfg.to_dict(),
                "fingerprint": fingerprint,
                "class_names": list(class_names),
                "positive_class": positive,
                "data": data_summary,
                "metascope_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    run.state("running", epoch=int(ckpt["epoch"]) if ckpt else 0)
    checked = _jsonable(report_.to_dict()) if report_ is not None else None
    try:
        return _loop(run, ds, ckpt, train_idx, val_idx, class_names, positive, size, data_summary, fingerprint, checked, torch)
    except Cancelled:
        done = _completed_epochs(ckpt_path)
        events.write("cancelled", epochs_completed=done, message="cancelled by user; the last checkpoint is kept")
        run.state("cancelled", epoch=done)
        raise
    except BaseException as exc:
        done = _completed_epochs(ckpt_path)
        msg = " ".join(str(exc).split()) or type(exc).__name__
        events.write("failed", error=type(exc).__name__, message=msg[:500], epochs_completed=done)
        run.state("failed", epoch=done, message=msg[:500])
        raise


def _completed_epochs(path: Path) -> int:
    try:
        return int(rf.load_checkpoint(path)["epoch"]) if path.is_file() else 0
    except ConfigError:
        return 0


def _loop(
    run: _Run, ds: Any, ckpt: dict[str, Any] | None, train_idx: np.ndarray, val_idx: np.ndarray,
    class_names: tuple[str, ...], positive: int, size: int, data_summary: dict[str, Any], fingerprint: str,
    checked: dict[str, Any] | None, torch: Any,
) -> TrainResult:
    from engine.train import ddp
    from engine.train.augment import augment_batch, batch_generator
    from engine.train.hard_negatives import HardNegativeSampler, gather_losses

    cfg, dist, events, device = run.cfg, run.dist, run.events, run.device
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    num_classes = len(class_names)
    model, ema, net = _build_net(run, ckpt, num_classes, size, torch)
    steps_per_epoch = max(1, math.ceil(train_idx.size / cfg.batch_size))
    opt, sched, scaler = _build_optimiser(run, model, steps_per_epoch, torch)

    labels_all = np.asarray(ds.labels, dtype=np.int64)
    counts = np.bincount(labels_all[train_idx], minlength=num_classes).astype(np.float64)
    if cfg.class_weighting == "balanced":
        w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    else:
        w = np.ones(num_classes)
    class_w = torch.tensor(w, dtype=torch.float32, device=device)
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    start_epoch, history = 0, []
    # best = highest validation AUC, ties broken by the lower validation loss
    best_score, best_epoch, best_metrics, stale = (-math.inf, -math.inf), 0, {}, 0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        history = list(ckpt.get("history", []))
        best_score = tuple(float(v) for v in ckpt.get("best_score", (-math.inf, -math.inf)))
        best_epoch = int(ckpt.get("best_epoch", 0))
        best_metrics = dict(ckpt.get("best_metrics", {}))
        stale = int(ckpt.get("stale", 0))
        _set_rng(ckpt.get("rng", {}), torch)

    train_src, val_src, val_local, use_cache = _patch_sources(run, ds, train_idx, val_idx)
    train_labels = torch.from_numpy(labels_all[train_idx])
    miner = HardNegativeSampler(labels_all[train_idx], positive, cfg.hard_negatives, cfg.seed)
    if ckpt is not None:
        miner.load(ckpt.get("hard_negatives"))

    info = {
        "arch": cfg.arch, "device": str(device), "amp": run.amp, "precision": str(run.amp_dtype or torch.float32).removeprefix("torch."), "world_size": dist.world_size,
        "n_train": int(train_idx.size), "n_val": int(val_idx.size), "class_names": list(class_names),
        "steps_per_epoch": steps_per_epoch, "epochs": cfg.epochs, "cached": use_cache,
        "params": int(sum(p.numel() for p in model.parameters())), "split": data_summary["split"],
    }
    if ckpt is None:
        events.write("run_started", **info, config=cfg.to_dict())
        if checked is not None:
            events.write("data_checked", **checked)
    else:
        events.write("resumed", **info, from_epoch=start_epoch)

    stain_meta = _fit_stain(cfg, ds, train_idx, ckpt)
    if stain_meta is not None and ckpt is None:
        events.write("stain_fitted", **stain_meta)

    def to_input(xb: Any) -> Any:
        if stain_meta is not None:  # the same numpy normalisation the package applies at inference
            from engine.infer.stain import normalise as stain_normalise

            xb = torch.from_numpy(stain_normalise(xb.cpu().numpy(), stain_meta))
        x = xb.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        return x

    def normalise(x: Any) -> Any:
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if run.use_cuda else x

    status = "finished"
    t_train_start = time.monotonic()
    total_train_patches = 0
    total_train_time = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        events.write("epoch_started", epoch=epoch + 1, epochs=cfg.epochs, lr=opt.param_groups[0]["lr"])
        run.state("running", epoch=epoch)
        order = miner.order(epoch)  # a plain shuffle unless hard-negative mining is on
        if miner.mining(epoch):
            events.write("hard_negatives", epoch=epoch + 1, **miner.stats)
        mined_pos: list[np.ndarray] = []
        mined_loss: list[Any] = []
        global_chunks = [order[i : i + cfg.batch_size] for i in range(0, order.size, cfg.batch_size)]
        shares = [dist.share(c.size) for c in global_chunks]
        local_chunks = [c[o : o + k] for c, (o, k) in zip(global_chunks, shares, strict=True)]
        net.train()
        if cfg.freeze_bn:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        loss_sum, n_seen = 0.0, 0
        win_loss, win_n, win_t0 = 0.0, 0, time.monotonic()
        t_epoch = time.monotonic()
        for step, xb in enumerate(train_src.batches(local_chunks)):
            cancelled = run.cancel is not None and run.cancel.cancelled
            if ddp.any_flag(dist, cancelled, device):
                raise Cancelled("cancelled by user")
            global_n = int(global_chunks[step].size)
            offset, _ = shares[step]
            yb = train_labels[local_chunks[step]].to(device, non_blocking=True)
            x = to_input(xb)
            if cfg.augment.enabled:
                x = augment_batch(x, cfg.augment, batch_generator(cfg.seed, epoch, step), global_n, offset)
            x = normalise(x)
            with torch.autocast(device_type=device.type, dtype=run.amp_dtype or torch.float16, enabled=run.amp):
                logits = net(x)
            ce = torch.nn.functional.cross_entropy(logits.float(), yb, reduction="none")
            wsum = (ce * class_w[yb]).sum()
            if miner.enabled:
                mined_pos.append(local_chunks[step])
                mined_loss.append(ce.detach())  # kept on the device: no second host copy per step (lv below is the one)
            # sum / global batch, times world size: DDP's gradient mean over ranks then equals the
            # gradient of the global-batch mean, also for uneven shards of the last batch
            loss = wsum * (dist.world_size / global_n)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update(model)
            lv = float(wsum.detach()) / max(1, yb.numel())
            loss_sum += lv * yb.numel()
            n_seen += yb.numel()
            win_loss += lv * yb.numel()
            win_n += yb.numel()
            done = step + 1
            if done % cfg.log_every == 0 or done == steps_per_epoch:
                now = time.monotonic()
                rate = win_n * dist.world_size / max(now - win_t0, 1e-9)
                el = now - t_epoch
                eta = el / done * (steps_per_epoch - done) + el / done * steps_per_epoch * (cfg.epochs - epoch - 1)
                extra = {}
                if run.use_cuda:
                    extra["gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                events.write(
                    "step", epoch=epoch + 1, step=done, steps=steps_per_epoch, loss=win_loss / max(win_n, 1),
                    lr=opt.param_groups[0]["lr"], patches_per_s=round(rate, 1), eta_s=round(eta, 1), **extra,
                )
                win_loss, win_n, win_t0 = 0.0, 0, now
            report(run.progress, ProgressEvent(
                "train", done, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs} loss {lv:.4f}",
                {"epoch": epoch + 1, "loss": lv, "lr": opt.param_groups[0]["lr"]},
            ))
        epoch_train_time = time.monotonic() - t_epoch
        total_train_time += epoch_train_time
        total_train_patches += int(train_idx.size)
        tl_sum, tl_n = ddp.sum_scalars(dist, [loss_sum, float(n_seen)], device)
        if miner.enabled:
            losses = [torch.cat(mined_loss).float().cpu().numpy()] if mined_loss else []
            miner.record(*gather_losses(dist, mined_pos, losses))
        train_loss = tl_sum / max(tl_n, 1.0)

        eval_net = ema.module if ema is not None else net
        logits_v, yv = _validate(run, eval_net, val_src, labels_all[val_local], to_input, normalise, torch)
        parts = ddp.gather_arrays(dist, np.concatenate([logits_v, yv[:, None].astype(np.float32)], axis=1))
        allv = np.concatenate(parts)
        val_logits, val_y = allv[:, :-1], allv[:, -1].astype(np.int64)
        m = classification_metrics(val_y, _softmax(val_logits), positive)
        rec = {
            "epoch": epoch + 1, "train_loss": train_loss, "val_loss": m["loss"], "val_auc": m["auc"],
            "accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "f1": m["f1"], "confusion_matrix": m["confusion_matrix"],
            "train_patches_per_s": round(train_idx.size / max(epoch_train_time, 1e-9), 1),
            "epoch_s": round(time.monotonic() - t_epoch, 2), "lr": opt.param_groups[0]["lr"],
        }
        history.append(rec)
        events.write("epoch_ended", **rec)
        report(run.progress, ProgressEvent("epoch", epoch + 1, cfg.epochs, _epoch_msg(rec), rec))
        score = (m["auc"] if math.isfinite(m["auc"]) else -math.inf, -m["loss"])
        improved = score > best_score
        if improved:
            best_score, best_epoch, stale = score, epoch + 1, 0
            best_metrics = {k: rec[k] for k in ("val_auc", "val_loss", "accuracy", "sensitivity", "specificity", "f1")}
            best_metrics["epoch"] = epoch + 1
            calibration = _calibrate(run, val_logits, val_y, positive, epoch + 1)
            if dist.is_main:
                rf.save_torch(
                    {
                        "model": (ema.module if ema is not None else model).state_dict(), "arch": cfg.arch, "num_classes": num_classes,
                        "input_size": size, "class_names": list(class_names), "positive_class": positive,
                        "mean": list(cfg.mean), "std": list(cfg.std), "mpp": data_summary["mpp"],
                        "epoch": epoch + 1, "metrics": best_metrics, "config": cfg.to_dict(),
                        "data": _jsonable(data_summary), "metascope_version": __version__,
                        "calibration": calibration, "stain_norm": stain_meta,
                    },
                    run.run_dir / rf.BEST_NAME,
                )
            events.write("best", epoch=epoch + 1, val_auc=m["auc"], path=rf.BEST_NAME)
        else:
            stale += 1
        if dist.is_main:
            rf.save_torch(
                {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(), "epoch": epoch + 1, "rng": _get_rng(torch),
                    "best_score": list(best_score), "best_epoch": best_epoch, "best_metrics": best_metrics,
                    "stale": stale, "history": history, "fingerprint": fingerprint, "arch": cfg.arch,
                    "class_names": list(class_names), "input_size": size,
                    "ema": ema.state_dict() if ema is not None else None, "stain_norm": stain_meta,
                    "hard_negatives": miner.state(torch),
                },
                run.run_dir / rf.CHECKPOINT_NAME,
            )
        ddp.barrier(dist)
        events.write("checkpoint", epoch=epoch + 1, path=rf.CHECKPOINT_NAME)
        run.state("running", epoch=epoch + 1, best_epoch=best_epoch, best_val_auc=best_metrics.get("val_auc"))
        if cfg.patience and stale >= cfg.patience and epoch + 1 < cfg.epochs:
            events.write("early_stop", epoch=epoch + 1, best_epoch=best_epoch, patience=cfg.patience)
            status = "early_stopped"
            break

    epochs_done = history[-1]["epoch"] if history else start_epoch
    duration = time.monotonic() - run.t0
    events.write(
        "finished", status=status, epochs_completed=epochs_done, best_epoch=best_epoch, best=best_metrics,
        duration_s=round(duration, 2), train_patches_per_s=round(total_train_patches / max(total_train_time, 1e-9), 1),
        train_s=round(time.monotonic() - t_train_start, 2),
    )
    run.state("finished", epoch=epochs_done, best_epoch=best_epoch, best_val_auc=best_metrics.get("val_auc"), result=status)
    return TrainResult(run.run_dir, status, epochs_done, best_epoch, best_metrics, history, duration)


def _build_net(run: _Run, ckpt: dict[str, Any] | None, num_classes: int, size: int, torch: Any) -> tuple[Any, Any, Any]:
    """``(model, ema, net)``: the model on the run's device (checkpoint weights on resume), its
    weight EMA (``None`` when off) and what the steps call (the DDP wrapper when distributed)."""
    from engine.models import build_model

    cfg, dist, device = run.cfg, run.dist, run.device
    # resuming from a checkpoint: its weights replace these right away; skip a weights file
    model = build_model(cfg.arch, num_classes, size, weights=None if ckpt else cfg.weights, dropout=cfg.dropout)
    model = model.to(device, memory_format=torch.channels_last) if run.use_cuda else model.to(device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    if dist.distributed and run.use_cuda and not cfg.freeze_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = _Ema(model, cfg.ema, torch) if cfg.ema > 0 else None
    if ema is not None and ckpt is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"])
    net = model
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if run.use_cuda else None)
    return model, ema, net


def _build_optimiser(run: _Run, model: Any, steps_per_epoch: int, torch: Any) -> tuple[Any, Any, Any]:
    """``(optimizer, scheduler, grad_scaler)`` of the run (states restored later on resume)."""
    cfg = run.cfg
    decay, no_decay = [], []
    for p in model.parameters():
        # no weight decay on biases and norm scales (standard AdamW practice)
        (decay if p.ndim > 1 else no_decay).append(p)
    if cfg.optimizer == "adam":  # the published seed run: plain Adam (Keras defaults)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-7, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
        )
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg.schedule, s, total_steps, warmup))
    scaler = torch.amp.GradScaler("cuda", enabled=run.loss_scaling)
    return opt, sched, scaler


def _patch_sources(run: _Run, ds: Any, train_idx: np.ndarray, val_idx: np.ndarray) -> tuple[Any, Any, np.ndarray, bool]:
    """``(train_src, val_src, val_local, use_cache)``: the patch readers of this rank, its
    validation shard, and whether patches are cached in memory."""
    from engine.train import ddp
    from engine.train.loader import PatchSource, cache_fits, cache_patches_on_machine

    cfg, dist, device = run.cfg, run.dist, run.device
    # every rank needs all training patches (global batches are split across ranks each step):
    # the ranks of one machine share one decoded copy where a shared folder has room, else the
    # memory check counts one copy per rank; each rank keeps its own validation shard
    sharing, copies = None, 1
    wants_cache = cfg.cache in ("memory", "auto")
    if wants_cache and dist.distributed:
        nbytes = int(train_idx.size) * int(np.prod(ds.patch_size)) * 3
        sharing, copies = ddp.cache_sharing(dist, run.run_dir, nbytes, device)
    n_cache = cache_patches_on_machine(int(train_idx.size), int(val_idx.size), copies)
    use_cache = cfg.cache == "memory" or (cfg.cache == "auto" and cache_fits(n_cache, ds.patch_size, cfg.cache_limit_gb))
    val_local = val_idx[dist.rank :: dist.world_size]
    train_src = PatchSource(
        ds, train_idx, use_cache, cfg.num_workers, run.use_cuda, run.progress, run.cancel, "cache", sharing=sharing
    )
    val_src = PatchSource(ds, val_local, use_cache, cfg.num_workers, run.use_cuda, run.progress, run.cancel, "cache_val")
    return train_src, val_src, val_local, use_cache
