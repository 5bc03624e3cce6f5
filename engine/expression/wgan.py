"""The conditional WGAN-GP for expression profiles: covariate encoding, per-gene scaling, models.

- :class:`CovariateSpec` turns covariate columns into model inputs: a categorical column gets
  integer codes (index 0 is "missing", its own category; values unseen in training map to it),
  a numeric column gets its standardised value (missing -> the training median) plus a missing
  indicator. The spec is plain JSON, stored in checkpoints and in the ONNX package, so
  :mod:`engine.expression.generate` encodes covariates without torch.
- :class:`GeneScaler`: per-gene standardisation of log-scale values and its exact inverse;
  :func:`detect_floor`: the platform's detection floor generated values are clipped at.
- :func:`build_models`: generator and critic MLPs, each with its own embedding tables.

torch is imported inside :func:`build_models` only (the spec and scaler are numpy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DatasetError

MISSING = "<missing>"


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip().lower() in ("", "na", "nan", "none", "null", "[not available]")


def _numeric_or_none(values: list[Any]) -> np.ndarray | None:
    """Float values (NaN for missing) when every present value is a number, else None."""
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if _is_missing(v):
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            return None
    return out


@dataclass(frozen=True, slots=True)
class CovariateSpec:
    """How covariates become model inputs.

    Attributes:
        columns: ``[{"name", "kind": "categorical", "categories": [MISSING, ...]}`` or
            ``{"name", "kind": "numeric", "mean", "std", "median"}]`` in input order.
    """

    columns: tuple[dict[str, Any], ...] = ()

    @property
    def categorical(self) -> list[dict[str, Any]]:
        return [c for c in self.columns if c["kind"] == "categorical"]

    @property
    def numeric(self) -> list[dict[str, Any]]:
        return [c for c in self.columns if c["kind"] == "numeric"]

    @property
    def numeric_dim(self) -> int:
        """Width of the numeric input: value + missing indicator per numeric column."""
        return 2 * len(self.numeric)

    @property
    def cardinalities(self) -> list[int]:
        return [len(c["categories"]) for c in self.categorical]

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    @classmethod
    def fit(cls, table: pd.DataFrame, names: list[str], categorical: tuple[str, ...] = ()) -> CovariateSpec:
        """Learn categories / scaling from the training rows.

        A column is numeric when all its present values parse as numbers and it has more than
        5 distinct values (unless listed in ``categorical``).

        Raises:
            DatasetError: a column is absent or holds no value at all.
        """
        cols = []
        for name in names:
            if name not in table.columns:
                raise DatasetError(
                    f"covariate {name!r} is not a column of the sample table (columns: {', '.join(map(str, table.columns))})"
                )
            raw = table[name].tolist()
            if all(_is_missing(v) for v in raw):
                raise DatasetError(f"covariate {name!r} has no value in the training samples")
            num = _numeric_or_none(raw)
            present = num[~np.isnan(num)] if num is not None else None
            if num is not None and name not in categorical and len(np.unique(present)) > 5:
                std = float(np.std(present))
                cols.append(
                    {
                        "name": name,
                        "kind": "numeric",
                        "mean": float(np.mean(present)),
                        "std": std if std > 1e-12 else 1.0,
                        "median": float(np.median(present)),
                    }
                )
            else:
                cats = sorted({_canon(v) for v in raw if not _is_missing(v)})
                cols.append({"name": name, "kind": "categorical", "categories": [MISSING, *cats]})
        return cls(tuple(cols))

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [dict(c) for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CovariateSpec:
        try:
            cols = tuple(dict(c) for c in d.get("columns", []))
            for c in cols:
                if c["kind"] not in ("numeric", "categorical") or not c["name"]:
                    raise KeyError(c["kind"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"invalid covariate specification: {exc}") from exc
        return cls(cols)

    def encode(self, rows: pd.DataFrame | list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Rows of covariate values -> ``(numeric float32 (n, numeric_dim), codes int64 (n, Kc),
        notes)``; absent columns count as missing, unseen categories map to missing (noted)."""
        table = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
        n = len(table)
        notes: list[str] = []
        numeric = np.zeros((n, self.numeric_dim), dtype=np.float32)
        codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for k, c in enumerate(self.numeric):
            vals = table[c["name"]].tolist() if c["name"] in table.columns else [None] * n
            num = _numeric_or_none(vals)
            if num is None:
                raise DatasetError(f"covariate {c['name']!r} must be numeric")
            miss = np.isnan(num)
            filled = np.where(miss, c["median"], num)
            numeric[:, 2 * k] = (filled - c["mean"]) / c["std"]
            numeric[:, 2 * k + 1] = miss.astype(np.float32)
        for k, c in enumerate(self.categorical):
            index = {v: i for i, v in enumerate(c["categories"])}
            vals = table[c["name"]].tolist() if c["name"] in table.columns else [None] * n
            unseen = set()
            for i, v in enumerate(vals):
                if _is_missing(v):
                    continue
                key = _canon(v)
                if key in index:
                    codes[i, k] = index[key]
                else:
                    unseen.add(key)
            if unseen:
                notes.append(
                    f"{c['name']}: value(s) not seen in training treated as missing: {', '.join(sorted(unseen)[:5])}"
                )
        return numeric, codes, notes


def _canon(v: Any) -> str:
    """Category key: a whole float (from a numeric column read as float) without its ``.0``."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


@dataclass(frozen=True, slots=True)
class GeneScaler:
    """Per-gene standardisation ``z = (x - mean) / std`` and its exact inverse."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> GeneScaler:
        x = np.asarray(x, dtype=np.float64)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-8, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.std).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) * self.std + self.mean).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneScaler:
        return cls(np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64))


@dataclass(frozen=True, slots=True)
class GroupScaler:
    """Per-gene standardisation within the groups of one categorical covariate (e.g. cancer type)
    and its exact inverse: ``z = (x - mean[g]) / std[g]`` with ``g`` the sample's category code.

    Row 0 (missing / unseen category) holds the pooled statistics; a group's mean and variance are
    shrunk towards the pooled ones by ``SHRINK`` pseudo-samples (small groups stay stable). Without
    a grouping column the table has one row and this is :class:`GeneScaler`.
    """

    mean: np.ndarray  # (groups, genes)
    std: np.ndarray  # (groups, genes)
    column: str | None = None
    code_index: int = 0  # position of ``column`` among the categorical covariates

    SHRINK = 2.0

    @classmethod
    def fit(cls, x: np.ndarray, codes: np.ndarray | None = None, cardinality: int = 1,
            column: str | None = None, code_index: int = 0) -> GroupScaler:
        x = np.asarray(x, np.float64)
        base = GeneScaler.fit(x)
        mean = np.tile(base.mean, (max(1, cardinality), 1))
        std = np.tile(base.std, (max(1, cardinality), 1))
        if codes is not None and column is not None:
            for g in range(1, cardinality):
                rows = x[codes == g]
                n = len(rows)
                if n == 0:
                    continue
                w = n / (n + cls.SHRINK)
                m = w * rows.mean(0) + (1 - w) * base.mean
                v = w * rows.var(0) + (1 - w) * base.std**2
                mean[g], std[g] = m, np.sqrt(np.maximum(v, 1e-12))
            std = np.where(std > 1e-6, std, 1.0)
        return cls(mean, std, column if codes is not None else None, code_index)

    def _rows(self, codes: np.ndarray | None, n: int) -> np.ndarray:
        if self.column is None or codes is None:
            return np.zeros(n, dtype=int)
        return np.asarray(codes)[:, self.code_index].astype(int)

    def transform(self, x: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
        g = self._rows(codes, len(x))
        return ((np.asarray(x, np.float64) - self.mean[g]) / self.std[g]).astype(np.float32)

    def inverse(self, z: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
        g = self._rows(codes, len(z))
        return (np.asarray(z, np.float64) * self.std[g] + self.mean[g]).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column, "code_index": int(self.code_index),
            "mean": np.asarray(self.mean, float).tolist(), "std": np.asarray(self.std, float).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupScaler:
        return cls(np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64), d.get("column"),
                   int(d.get("code_index", 0)))


def choose_group_column(x: np.ndarray, spec: CovariateSpec, codes: np.ndarray, min_r2: float = 0.1) -> int | None:
    """The categorical covariate (index among ``spec.categorical``) that explains the most
    expression variance (mean over genes of the adjusted R^2 of a one-way ANOVA), when that is at
    least ``min_r2`` (e.g. cancer type across a pan-cancer cohort); else ``None``."""
    x = np.asarray(x, np.float64)
    n = len(x)
    total = ((x - x.mean(0)) ** 2).sum(0)
    total = np.where(total > 1e-12, total, 1.0)
    best, best_r2 = None, min_r2
    for k, card in enumerate(spec.cardinalities):
        within = np.zeros(x.shape[1])
        groups = 0
        for g in range(card):
            rows = x[codes[:, k] == g]
            if len(rows):
                groups += 1
                within += ((rows - rows.mean(0)) ** 2).sum(0)
        if groups < 2 or n - groups < 2:
            continue
        r2 = 1.0 - (within / total) * (n - 1) / (n - groups)
        score = float(np.mean(r2))
        if score >= best_r2:
            best, best_r2 = k, score
    return best


def detect_floor(values: np.ndarray, min_fraction: float = 0.005) -> float | None:
    """The matrix's detection floor: the most frequent value among its lowest 10 % when at least
    ``min_fraction`` of all values sit exactly there (e.g. 0 of log2(x+1) counts, -2 of a floored
    log2 scale), else ``None`` (no point mass at the bottom, e.g. microarray intensities).

    Generated values are clipped at the floor: real data has a point mass there (the few real
    values below a floor, where a cohort mixes processing batches, are not generated).
    """
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    low = np.round(x[x <= np.quantile(x, 0.1)], 6)
    uniq, counts = np.unique(low, return_counts=True)
    k = int(np.argmax(counts))
    return float(uniq[k]) if counts[k] >= min_fraction * x.size else None


def check_training_values(values: np.ndarray, genes: list[str]) -> None:
    """Refuse missing values and constant data (the GAN needs complete, varying profiles).

    Raises:
        DatasetError: NaN / infinite values or no variation.
    """
    bad = ~np.isfinite(values)
    if bad.any():
        cols = np.flatnonzero(bad.any(0))
        names = ", ".join(genes[i] for i in cols[:5])
        raise DatasetError(
            f"{int(bad.sum())} missing or infinite value(s) in the selected genes ({names}"
            f"{'...' if len(cols) > 5 else ''}); choose other genes or impute first"
        )
    if float(np.max(values.std(axis=0))) <= 1e-8:
        raise DatasetError("the selected genes do not vary across the training samples")


def build_models(n_genes: int, spec: CovariateSpec, model_cfg: dict[str, Any]) -> tuple[Any, Any]:
    """Generator and critic for ``n_genes`` genes under the covariate ``spec``.

    ``model_cfg``: ``noise_dim``, ``hidden`` (list of widths), ``embed_dim``.
    """
    import torch
    from torch import nn

    class _Conditioner(nn.Module):
        """Covariates -> one vector: embeddings of the codes, concatenated with the numerics."""

        def __init__(self) -> None:
            super().__init__()
            self.embeds = nn.ModuleList(
                nn.Embedding(card, min(model_cfg["embed_dim"], card)) for card in spec.cardinalities
            )
            self.dim = spec.numeric_dim + sum(min(model_cfg["embed_dim"], c) for c in spec.cardinalities)

        def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            parts = [numeric] if spec.numeric_dim else []
            parts += [emb(codes[:, k]) for k, emb in enumerate(self.embeds)]
            if not parts:
                return numeric[:, :0]
            return torch.cat(parts, dim=1)

    def mlp(d_in: int, d_out: int, norm: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for h in model_cfg["hidden"]:
            layers.append(nn.Linear(d_in, h))
            if norm:  # layer norm in the generator only: the gradient penalty is per sample
                layers.append(nn.LayerNorm(h))
            layers.append(nn.LeakyReLU(0.2))
            d_in = h
        layers.append(nn.Linear(d_in, d_out))
        return nn.Sequential(*layers)

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cond = _Conditioner()
            self.noise_dim = int(model_cfg["noise_dim"])
            self.net = mlp(self.noise_dim + self.cond.dim, n_genes, norm=True)

        def forward(self, noise: torch.Tensor, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            if self.cond.dim == 0:
                return self.net(noise)
            return self.net(torch.cat([noise, self.cond(numeric, codes)], dim=1))

    class Critic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cond = _Conditioner()
            self.net = mlp(n_genes + self.cond.dim, 1, norm=False)

        def forward(self, x: torch.Tensor, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            h = x if self.cond.dim == 0 else torch.cat([x, self.cond(numeric, codes)], dim=1)
            return self.net(h).squeeze(1)

    return Generator(), Critic()
