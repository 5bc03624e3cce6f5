"""Hard-negative mining: each epoch's training order, drawn towards the negatives that were hard.

With ``TrainConfig.hard_negatives = alpha > 0`` the first epoch (the warm-up) visits every
training patch once, as without mining. From the second epoch on, every positive patch is still
visited once, and the negative slots of the epoch (as many as there are negative training
patches, so the epoch length is unchanged) are drawn with replacement, negative ``i`` with a
probability proportional to

    w_i = 1 + alpha * r_i,    r_i = rank of its last training loss among the negatives, in [0, 1]

(the easiest negative has weight 1, the hardest ``1 + alpha``). A patch's loss is its
per-patch cross-entropy (unweighted, under the training augmentation) the last time it was
trained on (the mean over the epoch's repeats); negatives not drawn in an epoch keep their older loss. The draw and the shuffle come
from ``numpy.random.default_rng([seed, epoch])``, so a run is deterministic under its seed; the
losses are stored in every checkpoint, so a resumed run draws exactly what the uninterrupted run
would have drawn. Under DDP every rank gathers all ranks' losses after the epoch and computes the
same order.

"Negative" is every class other than the positive class (label 0 of a binary tumour / normal
dataset).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: epochs that visit every patch once before mining starts
WARMUP_EPOCHS = 1


def rank_weights(losses: np.ndarray, alpha: float) -> np.ndarray:
    """``1 + alpha * rank / (n - 1)`` per loss (ties share their mean rank; never-seen NaN losses
    count as the hardest)."""
    x = np.asarray(losses, dtype=np.float64)
    n = x.size
    if n <= 1:
        return np.ones(n)
    x = np.where(np.isfinite(x), x, np.inf)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    # mean rank within ties, so equal losses get equal weights
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = sums[inv] / counts[inv]
    return 1.0 + float(alpha) * ranks / (n - 1)


class HardNegativeSampler:
    """The epoch orders of one run (positions into its training rows).

    Args:
        train_labels: class index of each training row.
        positive: the positive class index.
        alpha: mining strength (``0`` = off: a plain permutation every epoch).
        seed: the run seed.
    """

    def __init__(self, train_labels: np.ndarray, positive: int, alpha: float, seed: int) -> None:
        self.labels = np.asarray(train_labels, dtype=np.int64)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.neg = np.flatnonzero(self.labels != positive)
        self.pos = np.flatnonzero(self.labels == positive)
        self.losses = np.full(self.labels.size, np.nan, dtype=np.float64)
        self.stats: dict[str, Any] = {}

    @property
    def enabled(self) -> bool:
        return self.alpha > 0

    def mining(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` draws towards hard negatives."""
        return self.enabled and epoch >= WARMUP_EPOCHS and self.neg.size > 0

    def order(self, epoch: int) -> np.ndarray:
        """Positions of 0-based ``epoch``, in visiting order (``len`` = number of training rows)."""
        rng = np.random.default_rng([self.seed, epoch])
        if not self.mining(epoch):
            self.stats = {}
            return rng.permutation(self.labels.size)
        w = rank_weights(self.losses[self.neg], self.alpha)
        drawn = self.neg[rng.choice(self.neg.size, size=self.neg.size, replace=True, p=w / w.sum())]
        order = rng.permutation(np.concatenate([self.pos, drawn]))
        self.stats = self._describe(drawn)
        return order

    def _describe(self, drawn: np.ndarray) -> dict[str, Any]:
        """What the draw did: unique negatives, the share of draws from the hardest decile, and the
        mean last loss of all negatives vs of the drawn ones."""
        loss = self.losses[self.neg]
        cut = np.nanquantile(loss, 0.9) if np.isfinite(loss).any() else np.inf
        hard = self.neg[np.nan_to_num(loss, nan=np.inf) >= cut]
        top = float(np.isin(drawn, hard).mean()) if drawn.size else 0.0
        finite = np.isfinite(loss).any()
        drawn_loss = self.losses[drawn]
        return {
            "alpha": self.alpha, "negatives": int(self.neg.size), "positives": int(self.pos.size),
            "unique_negatives_drawn": int(np.unique(drawn).size), "hardest_decile_share": round(top, 4),
            "mean_negative_loss": round(float(np.nanmean(loss)), 6) if finite else None,
            "mean_drawn_negative_loss": round(float(np.nanmean(drawn_loss)), 6) if finite else None,
        }

    def record(self, positions: np.ndarray, losses: np.ndarray) -> None:
        """Remember the per-patch training losses of ``positions`` (the mean over an epoch's
        repeats, so the result does not depend on the order the ranks report them in)."""
        if not self.enabled:
            return
        pos = np.asarray(positions, dtype=np.int64)
        n = np.bincount(pos, minlength=self.losses.size)
        s = np.bincount(pos, weights=np.asarray(losses, dtype=np.float64), minlength=self.losses.size)
        seen = n > 0
        self.losses[seen] = s[seen] / n[seen]

    def state(self, torch: Any) -> Any:
        """The losses for the checkpoint (a float64 tensor; ``None`` when off)."""
        return torch.from_numpy(self.losses.copy()) if self.enabled else None

    def load(self, state: Any) -> None:
        if self.enabled and state is not None:
            arr = np.asarray(state.numpy() if hasattr(state, "numpy") else state, dtype=np.float64)
            if arr.shape == self.losses.shape:
                self.losses = arr


def gather_losses(dist: Any, positions: list[np.ndarray], losses: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' ``(positions, losses)`` of an epoch, in rank order (each rank's in its step order)."""
    from engine.train import ddp

    mine = np.stack([
        np.concatenate(positions).astype(np.float64) if positions else np.zeros(0),
        np.concatenate(losses).astype(np.float64) if losses else np.zeros(0),
    ])
    parts = ddp.gather_arrays(dist, mine)
    allv = np.concatenate(parts, axis=1)
    return allv[0].astype(np.int64), allv[1]
