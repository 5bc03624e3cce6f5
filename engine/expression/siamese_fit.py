"""The epochs of a Siamese run: classifier pre-training, then Siamese pair training with early
stopping on validation N-way accuracy; checkpoints every epoch, resume, STOP / cancel.

Events (``events.jsonl``): ``run_started``; per epoch ``epoch_started``, ``step`` (loss),
``epoch_ended`` with ``phase`` ("pretrain" | "siamese"), ``train_loss``, ``val_accuracy`` (the
classifier's accuracy on validation samples while pre-training, the N-way one-shot accuracy
afterwards; ``val_nway_accuracy`` and ``val_ways`` too) and ``val_loss``; ``checkpoint``, ``best``,
``early_stop``. Epochs count across both phases (1 .. pretrain_epochs + epochs).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import Cancelled
from engine.expression.oneshot import make_trials, usable_types
from engine.expression.siamese_model import SiameseModelConfig, SiameseNet, TypeClassifier
from engine.jobs import ProgressEvent, report
from engine.runs import stop_requested
from engine.train.runfolder import load_checkpoint, save_torch


class SiameseFitter:
    def __init__(self, cfg, run: Path, x: np.ndarray, labels: np.ndarray, split: dict, prep, device: str, log,
                 progress, cancel) -> None:
        self.cfg, self.run, self.device, self.log = cfg, run, device, log
        self.progress, self.cancel = progress, cancel
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.labels = labels
        self.split = split
        self.train_types = split["train_types"]
        self.tcode = {t: k for k, t in enumerate(self.train_types)}
        tr = np.array(split["train"], dtype=int)
        self.members = [tr[labels[tr] == t] for t in self.train_types]
        self.mcfg = SiameseModelConfig(n_genes=x.shape[1], channels=tuple(cfg.channels),
                                       kernels=tuple([7, 5, 3, 3, 3][: len(cfg.channels)]),
                                       embed_dim=cfg.embed_dim, head_dim=cfg.head_dim, dropout=cfg.dropout,
                                       corr_skip=cfg.corr_skip)
        self.prep = prep
        self.steps = cfg.steps_per_epoch or int(min(100, max(30, len(tr) // cfg.batch_size)))
        self.total = cfg.pretrain_epochs + cfg.epochs
        self.rng = np.random.default_rng(cfg.seed + 17)
        val = np.array(split["val"], dtype=int)
        vtypes, _ = usable_types(labels[val]) if len(val) else ([], {})
        self.val_idx = val
        self.val_types = vtypes
        self.val_ways = min(cfg.val_ways, len(vtypes))
        self.last_path = run / "checkpoints" / "last.pt"
        self.best_path = run / "checkpoints" / "best.pt"

    # -- helpers ---------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        if stop_requested(self.run):
            raise Cancelled("stop requested")

    def _augment(self, xb: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.noise > 0:
            xb = xb + cfg.noise * torch.randn_like(xb)
        if cfg.gene_dropout > 0:
            xb = xb * (torch.rand_like(xb) >= cfg.gene_dropout)
        return xb

    def _balanced(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` sample indices drawn type-uniformly, and their type codes."""
        codes = self.rng.integers(0, len(self.members), size=n)
        idx = np.array([self.members[c][self.rng.integers(len(self.members[c]))] for c in codes])
        return idx, codes

    def _pairs(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Half same-type, half different-type pairs, types drawn uniformly (class-balanced)."""
        k = len(self.members)
        a, b, y = np.empty(n, int), np.empty(n, int), np.zeros(n, np.float32)
        for i in range(n):
            if i % 2 == 0:
                t = self.rng.integers(k)
                m = self.members[t]
                a[i], b[i] = m[self.rng.choice(len(m), 2, replace=len(m) < 2)]
                y[i] = 1.0
            else:
                t1, t2 = self.rng.choice(k, 2, replace=False)
                a[i] = self.members[t1][self.rng.integers(len(self.members[t1]))]
                b[i] = self.members[t2][self.rng.integers(len(self.members[t2]))]
        return a, b, y

    def _save(self, phase: str, epoch: int, model: nn.Module, opt, best: dict, stale: int, path: Path) -> None:
        save_torch({"model": model.state_dict(), "optimizer_state": opt.state_dict(), "phase": phase,
                    "epoch": epoch, "best": best, "stale": stale, "model_config": self.mcfg.to_dict(),
                    "train_types": list(self.train_types), "numpy_rng": self.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state()}, path)

    def _restore(self, ck: dict, model: nn.Module, opt) -> None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer_state"])
        self.rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])

    def _epoch_events(self, epoch: int, phase: str) -> None:
        self.log.state("running", epoch=epoch, epochs=self.total, phase=phase)
        self.log.event("epoch_started", epoch=epoch, epochs=self.total, steps=self.steps, phase=phase)

    def _ended(self, epoch: int, phase: str, loss: float, val: dict) -> None:
        self.log.event("epoch_ended", epoch=epoch, epochs=self.total, phase=phase, train_loss=loss, loss=loss, **val)
        acc = val.get("val_accuracy")
        msg = f"{phase} loss {loss:.3f}" + (f" val acc {acc:.3f}" if acc is not None else "")
        report(self.progress, ProgressEvent("train", epoch, self.total, msg, {"train_loss": loss, **val}))

    # -- phases ----------------------------------------------------------------------------------
    def fit(self) -> dict:
        ck = load_checkpoint(self.last_path) if self.last_path.is_file() else None
        self.log.event("run_started", epochs=self.total, steps_per_epoch=self.steps, device=self.device,
                       resumed=ck is not None, start_epoch=int(ck["epoch"]) if ck else 0,
                       train_types=self.train_types, val_types=self.split["val_types"],
                       test_types=self.split["test_types"], train_samples=len(self.split["train"]),
                       val_samples=len(self.val_idx), test_samples=len(self.split["test"]),
                       genes=self.mcfg.n_genes)
        torch.manual_seed(self.cfg.seed)
        net = SiameseNet(self.mcfg)
        net.encoder.set_normalisation(self.prep.center, self.prep.scale)
        net = net.to(self.device)
        if ck is None or ck["phase"] == "pretrain":
            clf = self._pretrain(ck)
            if clf is not None:
                net.encoder.load_state_dict(clf.encoder.state_dict())
                net.encoder.set_normalisation(self.prep.center, self.prep.scale)
            ck = None
        return self._siamese(net, ck)

    def _pretrain(self, ck: dict | None) -> TypeClassifier | None:
        cfg = self.cfg
        if cfg.pretrain_epochs == 0:
            return None
        clf = TypeClassifier(self.mcfg, len(self.train_types)).to(self.device)
        opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        start = 0
        if ck is not None:
            self._restore(ck, clf, opt)
            start = int(ck["epoch"])
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        for epoch in range(start + 1, cfg.pretrain_epochs + 1):
            self._epoch_events(epoch, "pretrain")
            clf.train()
            total, t0 = 0.0, time.perf_counter()
            for step in range(1, self.steps + 1):
                self._check()
                idx, codes = self._balanced(cfg.batch_size)
                xb = self._augment(self.x[idx].to(self.device))
                loss = loss_fn(clf(xb), torch.from_numpy(codes).to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                self.log.step(epoch=epoch, step=step, steps=self.steps, loss=float(loss.detach()), phase="pretrain",
                              throughput=step * cfg.batch_size / max(time.perf_counter() - t0, 1e-9))
            val = self._val_classifier(clf)
            self._save("pretrain", epoch, clf, opt, {}, 0, self.last_path)
            self.log.event("checkpoint", epoch=epoch, path=self.last_path.name)
            self._ended(epoch, "pretrain", total / self.steps, val)
        return clf

    @torch.no_grad()
    def _val_classifier(self, clf: TypeClassifier) -> dict:
        vi = [i for i in self.val_idx if self.labels[i] in self.tcode]
        if not vi:
            return {"val_accuracy": None, "val_loss": None}
        clf.eval()
        logits = clf(self.x[vi].to(self.device))
        y = torch.tensor([self.tcode[self.labels[i]] for i in vi], device=self.device)
        loss = float(nn.functional.cross_entropy(logits, y))
        return {"val_accuracy": float((logits.argmax(1) == y).float().mean()), "val_loss": loss}

    def _optimizer(self, net: SiameseNet):
        """Gene weights, alpha and bias learn fast without weight decay; the CNN fine-tunes slowly."""
        names = ("encoder.gene_weight", "head.alpha", "head.bias")
        fast = [p for n, p in net.named_parameters() if n in names]
        slow = [p for n, p in net.named_parameters() if n not in names]
        groups = [{"params": slow, "lr": self.cfg.lr * 0.5, "weight_decay": self.cfg.weight_decay}]
        if fast:
            groups.append({"params": fast, "lr": self.cfg.metric_lr, "weight_decay": 0.0})
        return torch.optim.Adam(groups)

    def _siamese_loss(self, net: SiameseNet, xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """BCE of the CNN part alone + BCE of the correlation part alone: each must tell same from
        different on its own; their blend (cnn_weight) is chosen on validation."""
        cnn, corr = net.head.parts(net.encoder(xa), net.encoder(xb))
        loss = nn.functional.binary_cross_entropy_with_logits(cnn, y)
        if corr is not None:
            loss = loss + nn.functional.binary_cross_entropy_with_logits(corr, y)
        return loss

    def _siamese(self, net: SiameseNet, ck: dict | None) -> dict:
        cfg = self.cfg
        opt = self._optimizer(net)
        best: dict[str, Any] = {"score": -math.inf, "epoch": None, "val_accuracy": None}
        start, stale = cfg.pretrain_epochs, 0
        if ck is not None:
            self._restore(ck, net, opt)
            start, best, stale = int(ck["epoch"]), dict(ck["best"]), int(ck.get("stale", 0))
        for epoch in range(start + 1, self.total + 1):
            self._epoch_events(epoch, "siamese")
            net.train()
            total, t0 = 0.0, time.perf_counter()
            for step in range(1, self.steps + 1):
                self._check()
                a, b, y = self._pairs(cfg.batch_size)
                xa = self._augment(self.x[a].to(self.device))
                xb = self._augment(self.x[b].to(self.device))
                loss = self._siamese_loss(net, xa, xb, torch.from_numpy(y).to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                self.log.step(epoch=epoch, step=step, steps=self.steps, loss=float(loss.detach()), phase="siamese",
                              throughput=step * cfg.batch_size / max(time.perf_counter() - t0, 1e-9))
            val = self._val_nway(net)
            net.head.cnn_weight.fill_(val["cnn_weight"])
            score = val["val_accuracy"] if val["val_accuracy"] is not None else -(total / self.steps)
            score = score - 1e-4 * (val["val_loss"] or 0.0)  # ties: lower validation loss
            improved = score > best["score"] + 1e-9
            if improved:
                best, stale = {"score": score, "epoch": epoch, "val_accuracy": val["val_accuracy"],
                               "cnn_weight": val["cnn_weight"]}, 0
                self._save("siamese", epoch, net, opt, best, stale, self.best_path)
                self.log.event("best", epoch=epoch, val_accuracy=val["val_accuracy"], val_loss=val["val_loss"])
            else:
                stale += 1
            self._save("siamese", epoch, net, opt, best, stale, self.last_path)
            self.log.event("checkpoint", epoch=epoch, path=self.last_path.name)
            self._ended(epoch, "siamese", total / self.steps, val)
            if cfg.patience and stale >= cfg.patience:
                self.log.event("early_stop", epoch=epoch, best_epoch=best["epoch"], patience=cfg.patience)
                break
        if not self.best_path.is_file():  # epochs == 0: the pre-trained encoder with an untrained head
            best = {"score": 0.0, "epoch": start, "val_accuracy": None}
            self._save("siamese", start, net, opt, best, 0, self.best_path)
        return best

    def _cnn_weights(self) -> tuple[float, ...]:
        """Blends of the CNN distance tried on validation: a grid when validation types are unseen
        in training (only they can tell whether it generalises); else the configured weight (auto:
        0, the CNN distance is not trusted on types it was not validated on)."""
        if not self.mcfg.corr_skip:
            return (1.0,)
        if self.cfg.cnn_weight >= 0:
            return (float(self.cfg.cnn_weight),)
        return (0.0, 0.25, 0.5, 1.0) if self.split["val_types"] else (0.0,)

    @torch.no_grad()
    def _val_nway(self, net: SiameseNet) -> dict:
        grid = self._cnn_weights()
        if self.val_ways < 2:
            return {"val_accuracy": None, "val_loss": None, "val_ways": None, "cnn_weight": grid[-1]}
        net.eval()
        vi = self.val_idx
        emb = net.encoder(self.x[vi].to(self.device))
        tr = make_trials(self.labels[vi], self.val_types, self.val_ways, self.cfg.val_trials, self.cfg.seed + 1)
        qi = torch.from_numpy(np.repeat(tr.query, tr.ways))
        sj = torch.from_numpy(tr.support.ravel())
        cnn, corr = net.head.parts(emb[qi], emb[sj])
        results = {}
        for w in grid:
            logit = cnn if corr is None else w * cnn + corr
            s = logit.reshape(-1, tr.ways)
            results[w] = (float((s.argmax(1).cpu().numpy() == tr.truth).mean()), s)
        w_best = max(grid, key=lambda w: (results[w][0], -w))
        acc, s = results[w_best]
        y = torch.zeros_like(s)
        y[torch.arange(len(tr.truth)), torch.from_numpy(tr.truth)] = 1.0
        loss = float(nn.functional.binary_cross_entropy_with_logits(s, y))
        out = {"val_accuracy": acc, "val_nway_accuracy": acc, "val_ways": self.val_ways, "val_loss": loss,
               "cnn_weight": float(w_best)}
        if corr is not None:
            out["val_accuracy_cnn_only"] = float((cnn.reshape(-1, tr.ways).argmax(1).cpu().numpy() == tr.truth).mean())
            out["val_accuracy_correlation_only"] = float((corr.reshape(-1, tr.ways).argmax(1).cpu().numpy()
                                                          == tr.truth).mean())
        return out
