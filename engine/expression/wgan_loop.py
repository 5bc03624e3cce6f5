"""The WGAN-GP optimisation loop (critic and generator steps, checkpoints, live gamma, realism).

Used by :func:`engine.expression.wgan_train.train_wgan`; torch is imported when a loop is made.
Loss (Gulrajani et al. 2017): the critic minimises ``D(fake) - D(real) + lambda * (||grad D(x_hat)|| - 1)^2``
on random interpolates ``x_hat``; the generator minimises ``-D(fake)``; Adam(lr, betas (0.5, 0.9)),
``n_critic`` critic steps per generator step. Both see the real batch's covariates.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import Cancelled
from engine.expression.wgan import (
    CovariateSpec,
    GeneScaler,
    GroupScaler,
    build_models,
    choose_group_column,
    detect_floor,
)
from engine.expression.wgan_train import WganData, WganTrainConfig, finite
from engine.fileio import atomic_write_json
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, report
from engine.runs import stop_requested
from engine.train.runfolder import EventLog, load_checkpoint, save_torch, write_state

CHECKPOINT = "checkpoints/last.pt"
#: Independent generated sets (each as large as the training set) the final realism averages over.
REALISM_DRAWS = 5


def calibrate_moments(
    generate: Any, codes: np.ndarray, x_train: np.ndarray, scaler: GroupScaler, floor: float | None, seed: int = 0,
    draws: int = 400, prior: float = 10.0,
) -> GroupScaler:
    """Match the generated per-gene mean and standard deviation to the training samples', per
    group of the scaler (or over all samples): an affine correction folded into the inverse
    standardisation, so generation stays ``z * std[g] + mean[g]`` (then the floor).

    ``generate(rows, seed)`` returns standardised profiles for the covariates of these training
    rows. Each group gets about ``draws`` profiles; the correction is applied three times (the
    floor makes the moments non-linear in it) and damped by ``n / (n + prior)`` for a group of
    ``n`` training samples; the standard deviation moves by a factor in [0.67, 1.5] at most.
    """
    mean, std = scaler.mean.copy(), scaler.std.copy()
    groups = codes[:, scaler.code_index] if scaler.column is not None else np.zeros(len(codes), dtype=int)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        n = len(rows)
        if n < 5:
            continue
        z = np.asarray(generate(np.tile(rows, int(np.ceil(draws / n))), seed + int(g)), np.float64)
        real = np.asarray(x_train[rows], np.float64)
        mr, sr = real.mean(0), real.std(0)
        w = n / (n + prior)
        for _ in range(3):
            x = z * std[g] + mean[g]
            if floor is not None:
                x = np.maximum(x, floor)
            mx, sx = x.mean(0), x.std(0)
            ds = np.clip(sr / np.maximum(sx, 1e-6), 0.67, 1.5) ** w
            mean[g] = (mean[g] - mx) * ds + mx + w * (mr - mx)
            std[g] = std[g] * ds
    return GroupScaler(mean, std, scaler.column, scaler.code_index)


class WganLoop:
    """Models, optimisers and state of one run; :meth:`train` runs the remaining epochs."""

    def __init__(self, cfg: WganTrainConfig, data: WganData, run: Path, log: EventLog) -> None:
        import torch

        self.torch = torch
        self.cfg, self.data, self.run, self.log = cfg, data, run, log
        tr = data.train_idx
        self.spec = CovariateSpec.fit(data.covariates.iloc[tr], list(cfg.covariates), cfg.categorical)
        self.scaler = GeneScaler.fit(data.values[tr])
        num, codes, _ = self.spec.encode(data.covariates.iloc[tr].reset_index(drop=True))
        # counts: train on dequantised log2(count + U(0,1) + 1), a fresh U every batch, and
        # generate floor(2^y - 1): whole counts again, without gaps a classifier could see
        self.transform = dict(data.transform)
        self.counts = None
        values = data.values[tr]
        if cfg.dequantize and self.transform.get("kind") == "log2p1" and self.transform.get("integer"):
            self.transform["dequantized"] = True
            counts = np.clip(np.round(np.exp2(values.astype(np.float64)) - 1.0), 0, None)
            self.counts = torch.from_numpy(counts.astype(np.float32))
            values = np.log2(counts + np.random.default_rng(cfg.seed + 17).random(counts.shape) + 1.0).astype(np.float32)
        self.fit_values = values  # what the scaling and the calibration are fitted on
        self.group = self._group_scaler(values, codes)
        self.floor = None if self.counts is not None else detect_floor(values)
        # the floor per group and gene in standardised units: generated values are clipped there in
        # training too (straight-through gradient), so the critic compares point masses with point masses
        self.floor_z = (
            torch.from_numpy(((self.floor - self.group.mean) / self.group.std).astype(np.float32))
            if self.floor is not None and cfg.floor_clip
            else None
        )
        self.x = torch.from_numpy(self.group.transform(values, codes))
        self.num, self.codes = torch.from_numpy(num), torch.from_numpy(codes)
        rows = codes[:, self.group.code_index] if self.group.column is not None else np.zeros(len(codes), dtype=int)
        self.row_mean = torch.from_numpy(self.group.mean[rows].astype(np.float32))
        self.row_std = torch.from_numpy(self.group.std[rows].astype(np.float32))
        torch.manual_seed(cfg.seed)
        self.gen, self.critic = build_models(len(data.genes), self.spec, cfg.model_config())
        self.gen_ema = copy.deepcopy(self.gen).eval() if cfg.ema > 0 else None
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=betas)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=betas)
        self.rng = np.random.default_rng(cfg.seed)
        self.start_epoch = 0
        self.last_epoch = 0
        self.train_seconds = 0.0  # optimisation CPU time so far (over resumes): the time budget
        self.history: list[dict[str, Any]] = []
        (run / "checkpoints").mkdir(exist_ok=True)
        if (run / CHECKPOINT).is_file():
            self._load(load_checkpoint(run / CHECKPOINT))

    def _group_scaler(self, x: np.ndarray, codes: np.ndarray) -> GroupScaler:
        """Standardisation within the groups of the covariate that explains most of the variance
        (``group_scale`` "auto"), of a named covariate, or over all samples ("off")."""
        cats = [c["name"] for c in self.spec.categorical]
        choice = self.cfg.group_scale
        if choice == "off" or not cats:
            k = None
        elif choice == "auto":
            k = choose_group_column(x, self.spec, codes)
        elif choice in cats:
            k = cats.index(choice)
        else:
            from engine.errors import ConfigError

            raise ConfigError(f"group_scale {choice!r} is not a categorical covariate ({', '.join(cats)})")
        if k is None:
            return GroupScaler.fit(x)
        return GroupScaler.fit(x, codes[:, k], self.spec.cardinalities[k], cats[k], k)

    # -- checkpoints -----------------------------------------------------------------------------

    def payload(self, epoch: int) -> dict[str, Any]:
        return {
            "model": (self.gen_ema or self.gen).state_dict(),
            "generator": self.gen.state_dict(),
            "critic": self.critic.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_c": self.opt_c.state_dict(),
            "epoch": epoch,
            "genes": list(self.data.genes),
            "covariate_spec": self.spec.to_dict(),
            "scaler": self.scaler.to_dict(),
            "group_scaler": self.group.to_dict(),
            "floor": self.floor,
            "value_transform": self.transform,
            "model_config": self.cfg.model_config(),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.torch.get_rng_state(),
        }

    def _load(self, ck: dict[str, Any]) -> None:
        self.gen.load_state_dict(ck["generator"])
        self.critic.load_state_dict(ck["critic"])
        if self.gen_ema is not None:
            self.gen_ema.load_state_dict(ck["model"])
        self.opt_g.load_state_dict(ck["opt_g"])
        self.opt_c.load_state_dict(ck["opt_c"])
        self.start_epoch = self.last_epoch = int(ck["epoch"])
        self.train_seconds = float(ck.get("train_seconds", 0.0))
        self.history = list(ck.get("history", []))
        self.rng.bit_generator.state = ck["numpy_rng"]
        self.torch.set_rng_state(ck["torch_rng"])

    # -- steps -----------------------------------------------------------------------------------

    def _batch(self) -> tuple[Any, Any, Any]:
        n = self.x.shape[0]
        idx = self.torch.from_numpy(self.rng.choice(n, size=min(self.cfg.batch_size, n), replace=False))
        if self.counts is not None:
            c = self.counts[idx]
            y = self.torch.log2(c + self.torch.rand(c.shape) + 1.0)
            return (y - self.row_mean[idx]) / self.row_std[idx], self.num[idx], self.codes[idx]
        return self.x[idx], self.num[idx], self.codes[idx]

    def _noise(self, n: int) -> Any:
        return self.torch.randn(n, self.cfg.noise_dim)

    def _fake(self, num: Any, codes: Any) -> Any:
        """Generated (standardised) profiles for these covariates, clipped at the floor in the
        forward pass with an identity gradient (straight-through: no dead outputs below it)."""
        x = self.gen(self._noise(len(num)), num, codes)
        if self.floor_z is None:
            return x
        g = codes[:, self.group.code_index] if self.group.column is not None else self.torch.zeros(len(x), dtype=self.torch.long)
        return x + (self.torch.maximum(x, self.floor_z[g]) - x).detach()

    def critic_step(self) -> tuple[float, float, float]:
        torch = self.torch
        real, num, codes = self._batch()
        with torch.no_grad():
            fake = self._fake(num, codes)
        eps = torch.rand(len(real), 1)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad = torch.autograd.grad(self.critic(mix, num, codes).sum(), mix, create_graph=True)[0]
        gp = ((grad.norm(2, dim=1) - 1.0) ** 2).mean()
        w = self.critic(real, num, codes).mean() - self.critic(fake, num, codes).mean()
        loss = -w + self.cfg.gp_lambda * gp
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_c.step()
        return float(loss.detach()), float(gp.detach()), float(w.detach())

    def generator_step(self) -> float:
        _, num, codes = self._batch()
        for p in self.critic.parameters():
            p.requires_grad_(False)
        loss = -self.critic(self._fake(num, codes), num, codes).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        for p in self.critic.parameters():
            p.requires_grad_(True)
        if self.gen_ema is not None:
            with self.torch.no_grad():
                d = self.cfg.ema
                for pe, p in zip(self.gen_ema.parameters(), self.gen.parameters(), strict=True):
                    pe.mul_(d).add_(p.detach(), alpha=1 - d)
                for be, b in zip(self.gen_ema.buffers(), self.gen.buffers(), strict=True):
                    be.copy_(b)
        return float(loss.detach())

    # -- epochs ----------------------------------------------------------------------------------

    def _check_stop(self, cancel: CancelToken | None) -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if stop_requested(self.run):
            raise Cancelled("stop requested")

    def _epoch(self, epoch: int, cancel: CancelToken | None) -> dict[str, float]:
        cfg = self.cfg
        sums = np.zeros(4)
        last_step_event = 0.0
        self.gen.train()
        self.critic.train()
        for step in range(1, cfg.steps_per_epoch + 1):
            self._check_stop(cancel)
            c = np.zeros(3)
            for _ in range(cfg.n_critic):
                c += self.critic_step()
            c /= cfg.n_critic
            g = self.generator_step()
            sums += (c[0], g, c[1], c[2])
            now = time.monotonic()
            if now - last_step_event >= 1.0 or step == cfg.steps_per_epoch:
                last_step_event = now
                self.log.write(
                    "step", epoch=epoch, step=step, steps=cfg.steps_per_epoch, loss=float(c[0]),
                    critic_loss=float(c[0]), generator_loss=g, gradient_penalty=float(c[1]), wasserstein=float(c[2]),
                )
        m = sums / cfg.steps_per_epoch
        return {
            "critic_loss": float(m[0]), "generator_loss": float(m[1]),
            "gradient_penalty": float(m[2]), "wasserstein": float(m[3]),
        }

    def train(self, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        cfg = self.cfg
        self.torch.set_num_threads(cfg.cpu_threads)
        self.log.write(
            "run_started", epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch, device="cpu",
            resumed=self.start_epoch > 0, start_epoch=self.start_epoch, train_samples=int(len(self.data.train_idx)),
            heldout_samples=int(len(self.data.heldout_idx)), genes=len(self.data.genes),
            covariates=self.spec.names, scale=self.data.notes[0] if self.data.notes else None,
            group_scale=self.group.column, notes=list(self.data.notes[1:]),
        )
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            write_state(self.run, "running", epoch=epoch, epochs=cfg.epochs)
            self.log.write("epoch_started", epoch=epoch, epochs=cfg.epochs, steps=cfg.steps_per_epoch)
            t0, c0 = time.perf_counter(), time.process_time()
            m = self._epoch(epoch, cancel)
            if cfg.gamma_every and (epoch % cfg.gamma_every == 0 or epoch == cfg.epochs):
                m["val_gamma"] = self.live_gamma()
            m["train_loss"] = m["critic_loss"]
            m["seconds"] = round(time.perf_counter() - t0, 3)
            self.train_seconds += time.process_time() - c0
            self.last_epoch = epoch
            self.history.append({"epoch": epoch, **m})
            save_torch(self.payload(epoch), self.run / CHECKPOINT)
            self.log.write("epoch_ended", epoch=epoch, epochs=cfg.epochs, **m)
            self.log.write("checkpoint", epoch=epoch, path=CHECKPOINT)
            msg = f"W {m['wasserstein']:.3f} critic {m['critic_loss']:.3f} gen {m['generator_loss']:.3f}"
            if m.get("val_gamma") is not None:
                msg += f" gamma {m['val_gamma']:.3f}"
            report(progress, ProgressEvent("train", epoch, cfg.epochs, msg, m))
            if cfg.time_budget_s and self.train_seconds >= cfg.time_budget_s and epoch < cfg.epochs:
                self.log.write(
                    "time_budget_reached", epoch=epoch, epochs=cfg.epochs, cpu_seconds=round(self.train_seconds, 1),
                    message=f"stopped after epoch {epoch} of {cfg.epochs}: the {cfg.time_budget_s:g} s training budget "
                    "(CPU time) is spent",
                )
                break

    # -- sampling and realism --------------------------------------------------------------------

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` profiles (log scale) for covariates drawn from the training rows."""
        rng = np.random.default_rng(seed)
        idx = rng.choice(self.x.shape[0], size=n, replace=n > self.x.shape[0])
        x = self.group.inverse(self._standardised(idx, seed), self.codes.numpy()[idx])
        if self.counts is not None:  # whole counts, on the reader's log2(count + 1) scale
            from engine.expression.matrix import inverse_value_transform

            return np.log2(inverse_value_transform(x, self.transform).astype(np.float64) + 1.0).astype(np.float32)
        return x if self.floor is None else np.maximum(x, np.float32(self.floor))

    def _standardised(self, rows: np.ndarray, seed: int) -> np.ndarray:
        """Standardised profiles (before the inverse scaling) for the covariates of training rows."""
        torch = self.torch
        gen = self.gen_ema or self.gen
        gen.eval()
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return gen(torch.randn(len(idx), self.cfg.noise_dim, generator=g), self.num[idx], self.codes[idx]).numpy()

    def calibrate(self) -> None:
        """Fold the moment calibration (:func:`calibrate_moments`) into the group scaler used for
        sampling and export, and checkpoint it (``cfg.calibrate``)."""
        if not self.cfg.calibrate:
            return
        self.group = calibrate_moments(
            self._standardised, self.codes.numpy(), self.fit_values, self.group, self.floor,
            seed=self.cfg.seed + 999,
        )
        self.log.write("calibrated", message="generated per-gene mean / sd matched to the training samples"
                       + (f" within each {self.group.column}" if self.group.column else ""))
        save_torch(self.payload(self.last_epoch), self.run / CHECKPOINT)

    def live_gamma(self) -> float | None:
        from engine.expression.realism import gamma

        held = self.data.values[self.data.heldout_idx]
        return finite(gamma(held, self.sample(len(self.data.train_idx), 12345)))

    def final_realism(self) -> dict[str, Any]:
        """Realism on the held-out samples beside the Gaussian baseline and real-vs-real;
        writes ``metrics.json`` and ``realism/``."""
        from engine.expression.realism import evaluate_realism, write_report

        d = self.data
        real_train = d.values[d.train_idx]
        synthetic = [self.sample(len(d.train_idx), self.cfg.seed + 777 + k) for k in range(REALISM_DRAWS)]
        metrics, sets = evaluate_realism(d.values[d.heldout_idx], synthetic, real_train, seed=self.cfg.seed)
        metrics["train_samples"] = int(len(d.train_idx))
        metrics["heldout_samples"] = int(len(d.heldout_idx))
        metrics["epochs"] = self.last_epoch
        metrics["epochs_planned"] = self.cfg.epochs
        metrics["train_cpu_seconds"] = round(self.train_seconds, 1)
        metrics["evaluated_on"] = "held-out real samples (never used in training)"
        metrics["history"] = [{k: h.get(k) for k in ("epoch", "wasserstein", "val_gamma")} for h in self.history]
        write_report(metrics, sets, d.genes, self.run / "realism")
        atomic_write_json(self.run / "metrics.json", metrics)
        return metrics
