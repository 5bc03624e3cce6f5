"""Training one fold of a MIL run (:class:`_FoldTrainer`): the clinical spec and feature
statistics fitted on its training slides, the epochs with checkpoints, and the scoring of its
validation and test slides with the best weights.

Split out of :mod:`engine.mil.train`, which re-exports these names. torch is imported lazily.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import Cancelled
from engine.fileio import atomic_write_json
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, report
from engine.mil.clinical import ClinicalSpec
from engine.mil.cohort import Cohort, CohortEntry
from engine.mil.splits import Fold
from engine.mil.train_config import MILTrainConfig
from engine.runs import stop_requested
from engine.train.runfolder import RunLog, load_checkpoint, save_torch

if TYPE_CHECKING:
    from engine.mil.train import BagStore


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


class _FoldTrainer:
    """Trains one fold: fits the clinical spec and feature statistics on its training slides,
    runs the epochs with checkpoints, then scores validation and test slides with the best
    weights."""

    def __init__(
        self,
        cfg: MILTrainConfig,
        fold: Fold,
        by_id: dict[str, CohortEntry],
        store: BagStore,
        cohort: Cohort,
        numeric_cols: tuple[str, ...],
        categorical_cols: tuple[str, ...],
        extraction: dict[str, Any],
        device: str,
        run: Path,
        log: RunLog,
    ) -> None:
        self.cfg, self.fold, self.by_id, self.store, self.cohort = cfg, fold, by_id, store, cohort
        self.extraction, self.device, self.run_dir, self.log = extraction, device, run, log
        train_rows = [by_id[s].clinical for s in fold.train]
        self.spec = ClinicalSpec.fit(train_rows, numeric_cols, categorical_cols)
        self.last_path = run / "checkpoints" / f"fold_{fold.index}_last.pt"
        self.best_path = run / "checkpoints" / f"fold_{fold.index}_best.pt"

    def _model(self) -> Any:
        from engine.mil.model import GatedAttentionMIL, MILModelConfig

        cfg = self.cfg
        mcfg = MILModelConfig(
            feature_dim=int(self.extraction["feature_dim"]),
            num_classes=len(self.cohort.class_names),
            hidden_dim=cfg.hidden_dim,
            attention_dim=cfg.attention_dim,
            dropout=cfg.dropout,
            numeric_dim=self.spec.numeric_dim,
            cardinalities=self.spec.cardinalities,
            embed_dim=cfg.embed_dim,
            clinical_dim=cfg.clinical_dim,
            attention=cfg.attention,
        )
        return GatedAttentionMIL(mcfg)

    def _clinical(self, slide_ids: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for s in slide_ids:
            num, codes, _ = self.spec.encode([self.by_id[s].clinical])
            out[s] = (num, codes)
        return out

    def _feature_stats(self) -> tuple[np.ndarray, np.ndarray]:
        total = None
        total_sq = None
        count = 0
        for s in self.fold.train:
            f = self.store.features(s).astype(np.float64)
            total = f.sum(0) if total is None else total + f.sum(0)
            total_sq = (f * f).sum(0) if total_sq is None else total_sq + (f * f).sum(0)
            count += f.shape[0]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
        return mean.astype(np.float32), std.astype(np.float32)

    def checkpoint_payload(
        self, model: Any, optimizer: Any, epoch: int, best: dict[str, Any], rng: np.random.Generator
    ) -> dict[str, Any]:
        import torch

        return {
            "model": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "epoch": epoch,
            "best": best,
            "model_config": model.cfg.to_dict(),
            "clinical_spec": self.spec.to_dict(),
            "class_names": list(self.cohort.class_names),
            "extraction": self.extraction,
            "fold": self.fold.index,
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def run(self, n_folds: int, progress: ProgressCallback | None, cancel: CancelToken | None) -> dict[str, Any]:
        import torch

        cfg, fold = self.cfg, self.fold
        torch.manual_seed(cfg.seed + fold.index)
        model = self._model()
        mean, std = self._feature_stats()
        model.set_feature_normalisation(torch.from_numpy(mean), torch.from_numpy(std))
        model.to(self.device)
        # foreach: one fused update for all (small) parameter tensors instead of a Python loop
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        rng = np.random.default_rng(cfg.seed * 1000 + fold.index)
        start_epoch, best = self._restore(model, optimizer, rng)
        loss_fn = self._loss_fn()
        clinical = self._clinical(fold.train + fold.val + fold.test)
        steps = len(fold.train) if not cfg.bag_size else sum(
            -(-self.store.features(s).shape[0] // cfg.bag_size) for s in fold.train
        )
        self.log.event(
            "run_started",
            epochs=cfg.epochs,
            steps_per_epoch=steps,
            device=self.device,
            fold=fold.index,
            folds=n_folds,
            resumed=start_epoch > 0,
            start_epoch=start_epoch,
            train_slides=len(fold.train),
            val_slides=len(fold.val),
            test_slides=len(fold.test),
        )
        stale = 0
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            self.log.state("running", fold=fold.index, folds=n_folds, epoch=epoch, epochs=cfg.epochs)
            self.log.event("epoch_started", epoch=epoch, epochs=cfg.epochs, steps=steps, fold=fold.index)
            total_loss = self._train_epoch(model, optimizer, loss_fn, clinical, rng, epoch, steps, cancel)
            val = self.score(model, fold.val, clinical, loss_fn)
            train_loss = total_loss / max(steps, 1)
            auc = val["auc"]
            # select on validation loss: validation sets are small and their AUC saturates
            # (ties at 1.0) long before the model is calibrated; the loss keeps improving
            score = -val["loss"]
            improved = score > best["score"] + 1e-9
            if improved:
                best = {"score": score, "epoch": epoch, "val_auc": auc, "val_loss": val["loss"]}
                stale = 0
            else:
                stale += 1
            payload = self.checkpoint_payload(model, optimizer, epoch, best, rng)
            if improved:
                save_torch(payload, self.best_path)
                self.log.event("best", epoch=epoch, fold=fold.index, val_auc=auc, val_loss=val["loss"])
            save_torch(payload, self.last_path)
            self.log.event(
                "epoch_ended",
                epoch=epoch,
                fold=fold.index,
                train_loss=train_loss,
                val_loss=val["loss"],
                val_auc=auc,
                val_accuracy=val["accuracy"],
            )
            self.log.event("checkpoint", epoch=epoch, fold=fold.index, path=str(self.last_path.name))
            report(
                progress,
                ProgressEvent(
                    "train" if n_folds == 1 else f"train fold {fold.index}/{n_folds}",
                    epoch,
                    cfg.epochs,
                    f"loss {train_loss:.3f} val auc {auc:.3f}" if auc is not None else f"loss {train_loss:.3f}",
                    {"train_loss": train_loss, "val_auc": auc, "val_loss": val["loss"]},
                ),
            )
            if cfg.patience and stale >= cfg.patience:
                break
        return self._finish(model, best, clinical, loss_fn)

    def _restore(self, model: Any, optimizer: Any, rng: np.random.Generator) -> tuple[int, dict[str, Any]]:
        """``(start_epoch, best)``: from the fold's last checkpoint when there is one (model,
        optimizer and RNG states are restored into the arguments), else a fresh start."""
        import torch

        start_epoch = 0
        best: dict[str, Any] = {"score": -math.inf, "epoch": 0, "val_auc": None, "val_loss": None}
        if self.last_path.is_file():
            ck = load_checkpoint(self.last_path)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer_state"])
            start_epoch, best = int(ck["epoch"]), dict(ck["best"])
            rng.bit_generator.state = ck["numpy_rng"]
            torch.set_rng_state(ck["torch_rng"])
        return start_epoch, best

    def _loss_fn(self) -> Any:
        """Cross-entropy, class-weighted by the fold's training labels when ``class_weighted``."""
        import torch
        from torch import nn

        labels = np.array([self.by_id[s].label for s in self.fold.train])
        n_classes = len(self.cohort.class_names)
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        weights = (
            np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
            if self.cfg.class_weighted
            else np.ones(n_classes)
        )
        return nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=self.device))

    def _train_epoch(
        self,
        model: Any,
        optimizer: Any,
        loss_fn: Any,
        clinical: dict[str, tuple[np.ndarray, np.ndarray]],
        rng: np.random.Generator,
        epoch: int,
        steps: int,
        cancel: CancelToken | None,
    ) -> float:
        """One epoch's optimisation steps; the summed training loss."""
        import torch

        fold = self.fold
        model.train()
        items = self._epoch_items(rng)
        total_loss = 0.0
        t0 = time.perf_counter()
        for k, (sid, feats) in enumerate(items, start=1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if stop_requested(self.run_dir):
                raise Cancelled("stop requested")
            num, codes = clinical[sid]
            logits, _ = model(
                torch.from_numpy(feats).to(self.device),
                torch.from_numpy(num).to(self.device),
                torch.from_numpy(codes).to(self.device),
            )
            loss = loss_fn(logits, torch.tensor([self.by_id[sid].label], device=self.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())  # one device-to-host read per step
            total_loss += loss_value
            elapsed = time.perf_counter() - t0
            self.log.step(
                epoch=epoch,
                step=k,
                steps=steps,
                loss=loss_value,
                fold=fold.index,
                throughput=k / elapsed if elapsed > 0 else None,
            )
        return total_loss

    def _finish(
        self, model: Any, best: dict[str, Any], clinical: dict[str, tuple[np.ndarray, np.ndarray]], loss_fn: Any
    ) -> dict[str, Any]:
        """Score validation and test slides with the best weights; write ``fold_K.json``."""
        fold = self.fold
        model.load_state_dict(load_checkpoint(self.best_path)["model"])
        val = self.score(model, fold.val, clinical, loss_fn)
        test = self.score(model, fold.test, clinical, loss_fn) if fold.test else {"probs": [], "auc": None}
        result = {
            "fold": fold.index,
            "best_epoch": best["epoch"],
            "best_score": best["score"],
            "val_auc": val["auc"],
            "test_auc": test["auc"],
            "val_ids": list(fold.val),
            "val_probs": val["probs"],
            "test_ids": list(fold.test),
            "test_probs": test["probs"],
        }
        atomic_write_json(self.run_dir / f"fold_{fold.index}.json", result)
        self.log.event(
            "fold_finished", fold=fold.index, best_epoch=best["epoch"], val_auc=val["auc"], test_auc=test["auc"]
        )
        return result

    def _epoch_items(self, rng: np.random.Generator) -> Any:
        """This epoch's training steps as ``(slide_id, features)``: one bag per slide (all tiles, or
        ``max_instances`` of them), or BALNMP's random bags of ``bag_size`` tiles."""
        cfg, train = self.cfg, self.fold.train
        if not cfg.bag_size:
            for j in rng.permutation(len(train)):
                feats = self.store.features(train[j])
                if cfg.max_instances and feats.shape[0] > cfg.max_instances:
                    feats = feats[rng.choice(feats.shape[0], cfg.max_instances, replace=False)]
                yield train[j], feats
            return
        bags = []
        for sid in train:
            n = self.store.features(sid).shape[0]
            perm = rng.permutation(n)
            bags += [(sid, perm[i : i + cfg.bag_size]) for i in range(0, n, cfg.bag_size)]
        for j in rng.permutation(len(bags)):
            sid, idx = bags[j]
            yield sid, self.store.features(sid)[np.sort(idx)]

    def _slide_bags(self, sid: str) -> list[np.ndarray]:
        """A slide's tiles as scored: all of them, or fixed random bags of ``bag_size`` tiles."""
        feats = self.store.features(sid)
        if not self.cfg.bag_size:
            return [feats]
        # the same fixed bags as the exported package scores (engine.mil.predict.Aggregator.run)
        perm = np.random.default_rng(feats.shape[0]).permutation(feats.shape[0])
        return [feats[np.sort(perm[i : i + self.cfg.bag_size])] for i in range(0, feats.shape[0], self.cfg.bag_size)]

    def score(
        self, model: Any, slide_ids: tuple[str, ...], clinical: dict[str, tuple[np.ndarray, np.ndarray]], loss_fn: Any
    ) -> dict[str, Any]:
        """Probabilities, loss, AUC and accuracy of ``model`` on some slides (eval mode, all tiles)."""
        import torch

        from engine.train.metrics import macro_auc

        model.eval()
        probs, losses = [], []
        with torch.no_grad():
            for sid in slide_ids:
                num, codes = clinical[sid]
                # the slide's probability: the mean over its bags (one bag = all tiles by default)
                bag_probs = []
                for feats in self._slide_bags(sid):
                    logits, _ = model(
                        torch.from_numpy(feats).to(self.device),
                        torch.from_numpy(num).to(self.device),
                        torch.from_numpy(codes).to(self.device),
                    )
                    bag_probs.append(torch.softmax(logits, dim=1)[0])
                p_slide = torch.stack(bag_probs).mean(0)  # C
                log_p = torch.log(p_slide.clamp_min(1e-12)).unsqueeze(0)
                target = torch.tensor([self.by_id[sid].label], device=self.device)
                losses.append(float(torch.nn.functional.nll_loss(log_p, target, weight=loss_fn.weight)))
                probs.append(p_slide.cpu().numpy().tolist())
        if not slide_ids:
            return {"probs": [], "loss": float("nan"), "auc": None, "accuracy": None}
        y = np.array([self.by_id[s].label for s in slide_ids])
        p = np.array(probs)
        return {
            "probs": probs,
            "loss": float(np.mean(losses)),
            "auc": _finite(macro_auc(y, p)),
            "accuracy": float((p.argmax(1) == y).mean()),
        }
