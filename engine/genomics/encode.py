"""Preprocessing fitted on training samples only: numeric medians / means / standard deviations,
category maps (code 0 = missing, unseen or rare) and each category's smoothed positive rate (for
the study report and explanations; the boosted trees split on the categories natively).

Within-type columns (``<SOURCE>__z_in__<GROUP>``, e.g. ``FGA__z_in__ONCOTREE_CODE_GROUP``): the
source number standardised with the mean and standard deviation of its group (tumour type) among
the training samples (label-free; a group with fewer than ``WITHIN_MIN_COUNT`` training values, or
one not seen in training, takes those of all training samples). The statistics are part of the
spec, so a package reproduces the columns on new samples from the source and group columns alone.

The spec is plain JSON: it travels in the model package's metadata, and the ONNX graph applies
the numeric part (imputation, scaling, missing indicators) itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MIN_CATEGORY_COUNT = 5
#: at most this many categories per column (the most frequent; boosted trees allow 254 codes)
MAX_CATEGORIES = 250
SMOOTHING = 20.0
WITHIN_SEP = "__z_in__"
WITHIN_MIN_COUNT = 20


def within_name(source: str, group: str) -> str:
    """Name of the within-group standardised column of ``source``."""
    return f"{source}{WITHIN_SEP}{group}"


def fit_within(frame: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, Any]]:
    """Group mean / std of each within-type column's source (``{column: {source, group, stats}}``)."""
    out: dict[str, dict[str, Any]] = {}
    for c in columns:
        source, _, group = c.partition(WITHIN_SEP)
        stats: dict[str, list[float]] = {}
        overall = [0.0, 1.0]
        if source in frame.columns and group in frame.columns:
            x = pd.to_numeric(frame[source], errors="coerce")
            if x.count() >= 2 and x.std() > 0:
                overall = [float(x.mean()), float(x.std())]
            agg = x.groupby(frame[group].astype(str)).agg(["mean", "std", "count"])
            for k, row in agg.iterrows():
                if k != "" and row["count"] >= WITHIN_MIN_COUNT and np.isfinite(row["std"]) and row["std"] > 0:
                    stats[str(k)] = [float(row["mean"]), float(row["std"])]
        out[c] = {"source": source, "group": group, "stats": stats, "overall": overall}
    return out


def apply_within(frame: pd.DataFrame, within: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """``frame`` with its within-type columns (re)computed from ``within``'s statistics."""
    if not within:
        return frame
    frame = frame.copy()
    for c, spec in within.items():
        src, grp = spec["source"], spec["group"]
        if src not in frame.columns or grp not in frame.columns:
            frame[c] = np.nan
            continue
        g = frame[grp].astype(str)
        m0, s0 = spec["overall"]
        mean = g.map({k: v[0] for k, v in spec["stats"].items()}).astype(np.float64).fillna(m0)
        std = g.map({k: v[1] for k, v in spec["stats"].items()}).astype(np.float64).fillna(s0)
        frame[c] = (pd.to_numeric(frame[src], errors="coerce").astype(np.float64) - mean) / std
    return frame


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
    within: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str], y: np.ndarray | None) -> Preprocessor:
        within = fit_within(frame, [c for c in numeric if WITHIN_SEP in c])
        frame = apply_within(frame, within)
        x = frame[numeric].to_numpy(dtype=np.float64) if numeric else np.zeros((len(frame), 0))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column (a gene absent here)
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
                   modes, log_cols, within)

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, including code 0."""
        return [len(self.categories[c]) + 1 for c in self.categorical]

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(numeric float32 with NaN, codes int64)``; absent columns are all-missing."""
        frame = apply_within(frame, self.within)
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
            "modes": self.modes, "log_columns": self.log_columns, "within": self.within,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        return cls(
            list(d["numeric"]), list(d["categorical"]), list(d["median"]), list(d["mean"]), list(d["std"]),
            [int(j) for j in d["mask_columns"]], {k: list(v) for k, v in d["categories"].items()},
            {k: [float(x) if x is not None else float("nan") for x in v] for k, v in d.get("target_rate", {}).items()},
            {k: int(v) for k, v in d.get("modes", {}).items()},
            [int(j) for j in d.get("log_columns", [])],
            {k: {"source": str(v["source"]), "group": str(v["group"]),
                 "stats": {g: [float(a), float(b)] for g, (a, b) in v["stats"].items()},
                 "overall": [float(x) for x in v["overall"]]}
             for k, v in d.get("within", {}).items()},
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
