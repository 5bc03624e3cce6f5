"""Preprocessing fitted on training samples only: numeric medians / means / standard deviations,
category maps (code 0 = missing, unseen or rare) and each category's smoothed positive rate (for
the study report and explanations; the boosted trees split on the categories natively).

The spec is plain JSON: it travels in the model package's metadata, and the ONNX graph applies
the numeric part (imputation, scaling, missing indicators) itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MIN_CATEGORY_COUNT = 5
#: at most this many categories per column (the most frequent; boosted trees allow 254 codes)
MAX_CATEGORIES = 250
SMOOTHING = 20.0


@dataclass
class Preprocessor:
    """Encoding of a feature table into ``numeric (N, Dn) float32`` (NaN = missing) and
    ``codes (N, Kc) int64``.

    For the networks: missing values take the column's median, ``log_columns`` then become
    ``log1p(x)``, and every column is standardised with ``mean`` / ``std`` (of those values).
    """

    numeric: list[str]
    categorical: list[str]
    median: list[float]
    mean: list[float]
    std: list[float]
    mask_columns: list[int]
    categories: dict[str, list[str]]
    target_rate: dict[str, list[float]] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    log_columns: list[int] = field(default_factory=list)

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str], y: np.ndarray | None) -> Preprocessor:
        x = frame[numeric].to_numpy(dtype=np.float64) if numeric else np.zeros((len(frame), 0))
        with np.errstate(all="ignore"):
            med = np.nanmedian(x, axis=0) if x.size else np.zeros(0)
        med = np.where(np.isfinite(med), med, 0.0)
        filled = np.where(np.isnan(x), med, x)
        # heavy-tailed non-negative counts (TMB, depths, spans): the networks see log1p(x)
        log_cols = [int(j) for j in range(x.shape[1]) if _skewed(filled[:, j])]
        filled[:, log_cols] = np.log1p(filled[:, log_cols])
        mean = filled.mean(axis=0) if len(filled) else np.zeros(x.shape[1])
        std = filled.std(axis=0) if len(filled) else np.ones(x.shape[1])
        std = np.where(std > 1e-9, std, 1.0)
        # 0/1 indicators (genes) stay 0/1: a rare mutation standardised becomes a huge input
        binary = np.array([bool(np.isin(x[~np.isnan(x[:, j]), j], (0.0, 1.0)).all()) for j in range(x.shape[1])], dtype=bool)
        mean = np.where(binary, 0.0, mean)
        std = np.where(binary, 1.0, std)
        mask_cols = [int(j) for j in np.nonzero(np.isnan(x).any(axis=0) & ~np.isnan(x).all(axis=0))[0]]
        cats: dict[str, list[str]] = {}
        rates: dict[str, list[float]] = {}
        modes: dict[str, int] = {}
        prior = float(np.mean(y)) if y is not None and len(y) else 0.5
        for c in categorical:
            vc = frame[c].astype(str)
            counts = vc[vc != ""].value_counts()
            kept = sorted(str(v) for v in counts[counts >= MIN_CATEGORY_COUNT].index[:MAX_CATEGORIES])
            cats[c] = kept
            modes[c] = (kept.index(str(counts.index[0])) + 1) if len(counts) and str(counts.index[0]) in kept else 0
            if y is not None:
                codes = _codes(vc, kept)
                pos = np.bincount(codes, weights=np.asarray(y, dtype=np.float64), minlength=len(kept) + 1)
                n = np.bincount(codes, minlength=len(kept) + 1).astype(np.float64)
                r = (pos + SMOOTHING * prior) / (n + SMOOTHING)
                rates[c] = [float("nan")] + [float(v) for v in r[1:]]
        return cls(list(numeric), list(categorical), med.tolist(), mean.tolist(), std.tolist(), mask_cols, cats, rates,
                   modes, log_cols)

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, including code 0."""
        return [len(self.categories[c]) + 1 for c in self.categorical]

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(numeric float32 with NaN, codes int64)``; absent columns are all-missing."""
        n = len(frame)
        num = np.full((n, len(self.numeric)), np.nan, dtype=np.float32)
        for j, c in enumerate(self.numeric):
            if c in frame.columns:
                num[:, j] = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float32)
        codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            if c in frame.columns:
                codes[:, j] = _codes(frame[c].astype(str), self.categories[c])
        return num, codes

    def tree_matrix(self, num: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Input of the boosted trees: numeric values (NaN kept, float32 precision as in the ONNX
        graph) then the category codes as numbers (code 0 -> NaN), treated natively as categories."""
        cats = np.where(codes == 0, np.nan, codes.astype(np.float64))
        return np.concatenate([num.astype(np.float32).astype(np.float64), cats], axis=1)

    def tree_feature_names(self) -> list[str]:
        return self.numeric + self.categorical

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric, "categorical": self.categorical, "median": self.median, "mean": self.mean,
            "std": self.std, "mask_columns": self.mask_columns, "categories": self.categories,
            "target_rate": {k: [None if not np.isfinite(x) else x for x in v] for k, v in self.target_rate.items()},
            "modes": self.modes, "log_columns": self.log_columns,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        return cls(
            list(d["numeric"]), list(d["categorical"]), list(d["median"]), list(d["mean"]), list(d["std"]),
            [int(j) for j in d["mask_columns"]], {k: list(v) for k, v in d["categories"].items()},
            {k: [float(x) if x is not None else float("nan") for x in v] for k, v in d.get("target_rate", {}).items()},
            {k: int(v) for k, v in d.get("modes", {}).items()},
            [int(j) for j in d.get("log_columns", [])],
        )


def _skewed(col: np.ndarray) -> bool:
    """Non-negative with a long right tail (skewness > 2)."""
    if not len(col) or col.min() < 0 or col.std() == 0:
        return False
    z = (col - col.mean()) / col.std()
    return bool(np.mean(z**3) > 2.0)


def _codes(values: pd.Series, kept: list[str]) -> np.ndarray:
    lookup = {v: i + 1 for i, v in enumerate(kept)}
    return values.map(lookup).fillna(0).to_numpy(dtype=np.int64)
