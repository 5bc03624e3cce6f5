"""Train/validation splits: stratified by label, or grouped (slide, patient, duplicate group) so
that no group has patches on both sides."""

from __future__ import annotations

import numpy as np

from engine.data.base import PatchDataset
from engine.errors import DatasetError

STRATEGIES = ("stratified", "grouped")


def _check_fraction(val_fraction: float) -> float:
    try:
        f = float(val_fraction)
    except (TypeError, ValueError):
        raise DatasetError(f"validation fraction must be a number, got {val_fraction!r}") from None
    if not 0.0 < f < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    return f


def _stratified(labels: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * f))
        # a class with 2+ patches appears on both sides
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
    return np.concatenate(val) if val else np.array([], np.int64)


def _grouped(labels: np.ndarray, groups: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy group assignment: each group goes to validation if that brings the validation
    class counts closer to ``f`` times the class totals (largest groups placed first)."""
    classes, y = np.unique(labels, return_inverse=True)
    g_ids, g = np.unique(groups, return_inverse=True)
    if len(g_ids) < 2:
        raise DatasetError("cannot split: all patches belong to one group (slide/patient), so validation would be empty")
    hist = np.zeros((len(g_ids), len(classes)), np.int64)
    np.add.at(hist, (g, y), 1)
    target = hist.sum(0) * f
    sizes = hist.sum(1)
    order = rng.permutation(len(g_ids))
    order = order[np.argsort(-sizes[order], kind="stable")]
    val_counts = np.zeros(len(classes), np.float64)
    in_val = np.zeros(len(g_ids), bool)
    # relative deviation per class so that rare classes weigh as much as common ones
    scale = np.maximum(target, 1.0)
    for gi in order:
        before = np.abs(val_counts - target) / scale
        after = np.abs(val_counts + hist[gi] - target) / scale
        if after.sum() < before.sum():
            in_val[gi] = True
            val_counts += hist[gi]
    if not in_val.any():
        in_val[order[-1]] = True
    if in_val.all():
        in_val[order[0]] = False
    return np.flatnonzero(in_val[g])


def split_dataset(
    ds: PatchDataset,
    val_fraction: float = 0.2,
    strategy: str = "stratified",
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split patch indices into training and validation.

    Args:
        ds: the dataset.
        val_fraction: share of patches for validation, in ``(0, 1)``.
        strategy: ``"stratified"`` (random, class proportions kept) or ``"grouped"`` (every
            group on one side only, class proportions kept as far as groups allow).
        seed: random seed; the same seed gives the same split.
        groups: ``(N,)`` group id per patch for ``"grouped"``; default ``ds.groups`` (slide or
            patient) combined with exact-duplicate groups (:func:`duplicate_groups`), so byte-
            identical copies never straddle the split either (patches cut from slides are
            grouped by slide only: hashing them would mean cutting them all).

    Returns:
        ``(train_idx, val_idx)``: sorted ``int64`` index arrays, disjoint, covering all patches.

    Raises:
        DatasetError: bad fraction or strategy, too few patches or groups to split.
    """
    from engine.data.validate import duplicate_groups

    f = _check_fraction(val_fraction)
    if strategy not in STRATEGIES:
        raise DatasetError(f"unknown split strategy {strategy!r} (choose {', '.join(STRATEGIES)})")
    n = len(ds)
    if n < 2:
        raise DatasetError(f"cannot split {n} patch into training and validation")
    rng = np.random.default_rng(seed)
    labels = np.asarray(ds.labels, np.int64)
    if strategy == "stratified":
        val = _stratified(labels, f, rng)
    else:
        if groups is None:
            if ds.groups is not None and not ds.hashing_is_cheap:
                groups = ds.groups  # patches cut from slides: the slide is the group
            else:
                dup = duplicate_groups(ds)
                groups = dup if ds.groups is None else merge_groups(ds.groups, dup)
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise DatasetError(f"groups must have one entry per patch ({n}), got shape {groups.shape}")
        val = _grouped(labels, groups, f, rng)
    mask = np.zeros(n, bool)
    mask[val] = True
    if mask.all() or not mask.any():
        raise DatasetError(f"cannot split {n} patches with validation fraction {f}: one side would be empty")
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def merge_groups(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of two groupings: patches sharing a group in ``a`` or in ``b``
    end up in one group (e.g. slide groups joined by duplicate copies across slides).

    Returns:
        ``int64`` ``(N,)`` component ids.
    """
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1] + (a.max() + 1 if len(a) else 0)
    parent = np.arange(int(max(a.max(initial=0), b.max(initial=0))) + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for u, v in zip(a.tolist(), b.tolist(), strict=True):
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[rv] = ru
    return np.array([find(int(u)) for u in a], np.int64)
