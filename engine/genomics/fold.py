"""One fold of a genomics run: fit the preprocessing on its training samples, train epoch by
epoch with checkpoints (resumable), pick the epoch with the lowest validation loss, score the
validation and test samples and explain the test samples."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import Cancelled, ConfigError
from engine.fileio import atomic_path, atomic_write_json
from engine.genomics.data import Prepared
from engine.genomics.encode import Preprocessor
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, report
from engine.mil.splits import Fold
from engine.runs import stop_requested
from engine.train.runfolder import RunLog, load_checkpoint, save_torch


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _loss_auc(y: np.ndarray, p: np.ndarray) -> tuple[float, float | None]:
    from engine.train.metrics import roc_auc

    if not len(y):
        return float("nan"), None
    q = np.clip(p, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    return loss, _finite(roc_auc(y == 1, p))


def _save_pickle(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)


def load_pickle(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        return pickle.load(fh)  # noqa: S301 - the run's own checkpoint


class FoldTrainer:
    def __init__(self, cfg: Any, fold: Fold, data: Prepared, run: Path, log: RunLog, n_folds: int) -> None:
        self.cfg, self.fold, self.data, self.run_dir, self.log, self.n_folds = cfg, fold, data, run, log, n_folds
        pos = {s: i for i, s in enumerate(data.samples)}
        self.idx = {k: np.array([pos[s] for s in getattr(fold, k)], dtype=np.int64) for k in ("train", "val", "test")}
        t = data.table
        self.pre = Preprocessor.fit(t.frame.iloc[self.idx["train"]], t.numeric, t.categorical, data.y[self.idx["train"]])
        self.num, self.codes = self.pre.transform(t.frame)
        ext = "pkl" if cfg.model == "gbm" else "pt"
        self.last_path = run / "checkpoints" / f"fold_{fold.index}_last.{ext}"
        self.best_path = run / "checkpoints" / f"fold_{fold.index}_best.{ext}"
        self.stage = "train final model" if fold.index == 0 else (
            "train" if n_folds == 1 else f"train fold {fold.index}/{n_folds}")

    # -- shared loop ----------------------------------------------------------------------------

    def run(self, progress: ProgressCallback | None, cancel: CancelToken | None) -> dict[str, Any]:
        cfg, fold = self.cfg, self.fold
        state = self._resume()
        self.log.event("run_started", epochs=cfg.n_epochs, model=cfg.model, fold=fold.index, folds=self.n_folds,
                       resumed=state["epoch"] > 0, start_epoch=state["epoch"], train_samples=len(fold.train),
                       val_samples=len(fold.val), test_samples=len(fold.test), features=len(self.pre.numeric) + len(self.pre.categorical))
        stale = state.get("stale", 0)
        for epoch in range(state["epoch"] + 1, cfg.n_epochs + 1):
            self._check(cancel)
            self.log.state("running", fold=fold.index, folds=self.n_folds, epoch=epoch, epochs=cfg.n_epochs)
            self.log.event("epoch_started", epoch=epoch, epochs=cfg.n_epochs, fold=fold.index)
            train_loss = self._epoch(epoch, cancel)
            vp = self._predict(self.idx["val"])
            val_loss, val_auc = _loss_auc(self.data.y[self.idx["val"]], vp)
            best = state["best"]
            improved = val_loss < best["val_loss"] - 1e-9
            if improved:
                state["best"] = {"val_loss": val_loss, "epoch": epoch, "val_auc": val_auc}
                stale = 0
                self._save(self.best_path, epoch, state, stale)
                self.log.event("best", epoch=epoch, fold=fold.index, val_auc=val_auc, val_loss=val_loss)
            else:
                stale += 1
            self._save(self.last_path, epoch, state, stale)
            val_acc = float(((vp >= 0.5) == (self.data.y[self.idx["val"]] == 1)).mean()) if len(vp) else None
            self.log.event("epoch_ended", epoch=epoch, fold=fold.index, train_loss=train_loss, loss=train_loss,
                           val_loss=val_loss, val_auc=val_auc, val_accuracy=val_acc)
            self.log.event("checkpoint", epoch=epoch, fold=fold.index, path=self.last_path.name)
            report(progress, ProgressEvent(self.stage, epoch, cfg.n_epochs,
                                           f"loss {train_loss:.3f} val auc {val_auc:.3f}" if val_auc else f"loss {train_loss:.3f}",
                                           {"train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc}))
            if cfg.patience and stale >= cfg.patience:
                self.log.event("early_stop", epoch=epoch, fold=fold.index)
                break
        return self._conclude(state)

    def _check(self, cancel: CancelToken | None) -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if stop_requested(self.run_dir):
            raise Cancelled("stop requested")

    def _conclude(self, state: dict[str, Any]) -> dict[str, Any]:
        from engine.genomics.explain import explain_fold

        self._load_best()
        vp, tp = self._predict(self.idx["val"]), self._predict(self.idx["test"])
        _, val_auc = _loss_auc(self.data.y[self.idx["val"]], vp)
        _, test_auc = _loss_auc(self.data.y[self.idx["test"]], tp)
        explained = self.idx["test"] if len(self.idx["test"]) else (self.idx["val"] if self.fold.index else np.zeros(0, np.int64))
        if self.cfg.explain_top and len(explained):
            explain_fold(self, explained, self.run_dir / f"fold_{self.fold.index}_explanations.csv")
        result = {
            "fold": self.fold.index, "best_epoch": state["best"]["epoch"], "best_score": -state["best"]["val_loss"],
            "val_auc": val_auc, "test_auc": test_auc,
            "val_ids": list(self.fold.val), "val_probs": [[1 - p, p] for p in vp.tolist()],
            "test_ids": list(self.fold.test), "test_probs": [[1 - p, p] for p in tp.tolist()],
        }
        atomic_write_json(self.run_dir / f"fold_{self.fold.index}.json", result)
        self.log.event("fold_finished", fold=self.fold.index, best_epoch=state["best"]["epoch"], val_auc=val_auc, test_auc=test_auc)
        return result

    # -- model-specific -------------------------------------------------------------------------

    def _resume(self) -> dict[str, Any]:
        base = {"epoch": 0, "best": {"val_loss": math.inf, "epoch": 0, "val_auc": None}, "stale": 0}
        self.model = self._new_model()
        if self.cfg.model != "gbm":
            import torch

            torch.manual_seed(self.cfg.seed + self.fold.index)
            self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.cfg.lr,
                                        weight_decay=self.cfg.weight_decay)
            self.rng = np.random.default_rng(self.cfg.seed * 1000 + self.fold.index)
        if not self.last_path.is_file():
            return base
        if self.cfg.model == "gbm":
            ck = load_pickle(self.last_path)
            self.model = ck["model"]
        else:
            import torch

            ck = load_checkpoint(self.last_path)
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer_state"])
            self.rng.bit_generator.state = ck["numpy_rng"]
            torch.set_rng_state(ck["torch_rng"])
        return {"epoch": int(ck["epoch"]), "best": dict(ck["best"]), "stale": int(ck.get("stale", 0))}

    def _new_model(self) -> Any:
        from engine.genomics.models import build_gbm, build_net

        c = self.cfg
        if c.model == "gbm":
            # small studies: leaves of at most 5% of the training samples, so trees can still split
            leaf = min(c.gbm_min_samples_leaf, max(5, len(self.idx["train"]) // 20))
            return build_gbm(c.gbm_learning_rate, c.gbm_max_leaf_nodes, leaf, c.gbm_l2, c.seed,
                             len(self.pre.numeric), len(self.pre.categorical), c.gbm_members, c.gbm_subsample,
                             c.gbm_max_features)
        embed_col = self.data.table.roles.get("detailed_type")
        if c.model == "dense_embed" and embed_col not in self.pre.categorical:
            embed_col = self.data.table.roles.get("tumour_type")
        return build_net(self.pre, c.model, embed_col, tuple(c.hidden), c.dropout, c.embed_dim)

    def _save(self, path: Path, epoch: int, state: dict[str, Any], stale: int) -> None:
        common = {"epoch": epoch, "best": state["best"], "stale": stale, "fold": self.fold.index,
                  "preprocessor": self.pre.to_dict(), "class_names": list(self.data.class_names)}
        if self.cfg.model == "gbm":
            _save_pickle({**common, "model": copy.copy(self.model)}, path)
            return
        import torch

        save_torch({**common, "model": self.model.state_dict(), "model_config": self.model.config,
                    "optimizer_state": self.opt.state_dict(), "numpy_rng": self.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state()}, path)

    def _load_best(self) -> None:
        if self.cfg.model == "gbm":
            self.model = load_pickle(self.best_path)["model"]
        else:
            self.model.load_state_dict(load_checkpoint(self.best_path)["model"])

    def _epoch(self, epoch: int, cancel: CancelToken | None) -> float:
        tr = self.idx["train"]
        y = self.data.y[tr]
        if self.cfg.model == "gbm":
            x = self.pre.tree_matrix(self.num[tr], self.codes[tr])
            self.model.max_iter = epoch * self.cfg.gbm_iter_per_epoch
            if hasattr(self.model, "members"):  # members on their own shares of the training patients
                self.model.fit(x, y, groups=np.asarray(self.data.patients)[tr])
            else:  # a checkpoint of an older run: one classifier
                self.model.fit(x, y)
            self.log.step(epoch=epoch, step=1, steps=1, fold=self.fold.index, iterations=self.model.n_iter_)
            return _loss_auc(y, self.model.predict_proba(x)[:, 1])[0]
        import torch

        self.model.train()
        order = self.rng.permutation(len(tr))
        bs = self.cfg.batch_size
        steps = max(1, math.ceil(len(tr) / bs))
        lossf = torch.nn.CrossEntropyLoss()
        total = 0.0
        for k in range(steps):
            self._check(cancel)
            b = tr[order[k * bs:(k + 1) * bs]]
            logits = self.model(torch.from_numpy(self.num[b]), torch.from_numpy(self.codes[b]))
            loss = lossf(logits, torch.from_numpy(self.data.y[b]))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += float(loss.detach()) * len(b)
            self.log.step(epoch=epoch, step=k + 1, steps=steps, loss=float(loss.detach()), fold=self.fold.index)
        return total / len(tr)

    def predict_rows(self, num: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Positive-class probability of encoded rows with the current model."""
        if not len(num):
            return np.zeros(0)
        if self.cfg.model == "gbm":
            return self.model.predict_proba(self.pre.tree_matrix(num, codes))[:, 1]
        import torch

        self.model.eval()
        with torch.no_grad():
            out = []
            for s in range(0, len(num), 4096):
                logits = self.model(torch.from_numpy(num[s:s + 4096]), torch.from_numpy(codes[s:s + 4096]))
                out.append(torch.softmax(logits, dim=1)[:, 1].numpy())
        return np.concatenate(out).astype(np.float64)

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        return self.predict_rows(self.num[rows], self.codes[rows])
