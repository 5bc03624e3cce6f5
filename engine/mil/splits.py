"""Patient-level splits: a patient's slides always land in the same split (no leakage).

Either one train / validation / test split (from the manifest's ``split`` column when every
slide has one, otherwise drawn at random, stratified by label) or K-fold cross-validation where
each fold's patients are the test set once and a share of the rest validates model selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import DatasetError
from engine.mil.cohort import CohortEntry


@dataclass(frozen=True, slots=True)
class Fold:
    """Slide ids of one train / val / test partition (``index`` 1-based)."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fold:
        return cls(int(d["index"]), tuple(d["train"]), tuple(d["val"]), tuple(d["test"]))


def _patient_labels(entries: Sequence[CohortEntry]) -> dict[str, int]:
    # a patient's stratum is its highest label (the most advanced nodal status among its slides)
    out: dict[str, int] = {}
    for e in entries:
        out[e.patient_id] = max(out.get(e.patient_id, 0), e.label)
    return out


def _stratified_chunks(patients: dict[str, int], k: int, rng: np.random.Generator) -> list[list[str]]:
    """Deal patients of each label round-robin into ``k`` chunks after shuffling."""
    chunks: list[list[str]] = [[] for _ in range(k)]
    offset = 0
    for label in sorted(set(patients.values())):
        group = sorted(p for p, lab in patients.items() if lab == label)
        rng.shuffle(group)
        for i, p in enumerate(group):
            chunks[(i + offset) % k].append(p)
        offset += len(group)
    return chunks


def _slides_of(entries: Sequence[CohortEntry], patients: set[str]) -> tuple[str, ...]:
    return tuple(e.slide_id for e in entries if e.patient_id in patients)


def _split_off(patients: dict[str, int], fraction: float, rng: np.random.Generator) -> tuple[set[str], set[str]]:
    """Take about ``fraction`` of the patients (per label, at least one when possible)."""
    taken: set[str] = set()
    for label in sorted(set(patients.values())):
        group = sorted(p for p, lab in patients.items() if lab == label)
        rng.shuffle(group)
        n = int(round(fraction * len(group)))
        if fraction > 0 and n == 0 and len(group) >= 3:
            n = 1
        taken.update(group[:n])
    return set(patients) - taken, taken


def single_split(entries: Sequence[CohortEntry], val_fraction: float, test_fraction: float, seed: int) -> Fold:
    """One patient-level split: the manifest's when every slide has a split, else random.

    Raises:
        DatasetError: the training or validation part would be empty.
    """
    if entries and all(e.split is not None for e in entries):
        fold = Fold(
            1,
            tuple(e.slide_id for e in entries if e.split == "train"),
            tuple(e.slide_id for e in entries if e.split == "val"),
            tuple(e.slide_id for e in entries if e.split == "test"),
        )
    else:
        rng = np.random.default_rng(seed)
        patients = _patient_labels(entries)
        rest, test = _split_off(patients, test_fraction, rng)
        sub = {p: patients[p] for p in rest}
        train, val = _split_off(sub, val_fraction / max(1e-9, 1.0 - test_fraction), rng)
        fold = Fold(1, _slides_of(entries, train), _slides_of(entries, val), _slides_of(entries, test))
    if not fold.train:
        raise DatasetError("the training split is empty (too few patients, or no 'train' rows in the split column)")
    if not fold.val:
        raise DatasetError("the validation split is empty (too few patients, or no 'val' rows in the split column)")
    return fold


def kfold_splits(entries: Sequence[CohortEntry], k: int, val_fraction: float, seed: int) -> list[Fold]:
    """K patient-level folds; fold i tests on chunk i and validates on a share of the rest.

    Raises:
        DatasetError: fewer patients than folds.
    """
    patients = _patient_labels(entries)
    if len(patients) < k:
        raise DatasetError(f"{k}-fold cross-validation needs at least {k} patients, the cohort has {len(patients)}")
    rng = np.random.default_rng(seed)
    chunks = _stratified_chunks(patients, k, rng)
    folds = []
    for i in range(k):
        test = set(chunks[i])
        rest = {p: patients[p] for p in patients if p not in test}
        train, val = _split_off(rest, val_fraction, np.random.default_rng(seed + 1 + i))
        if not val:  # tiny cohorts: still validate on something
            val = {sorted(train)[0]}
            train -= val
        folds.append(Fold(i + 1, _slides_of(entries, train), _slides_of(entries, val), _slides_of(entries, test)))
    return folds
