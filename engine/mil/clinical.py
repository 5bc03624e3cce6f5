"""Encoding clinical variables for the MIL model's clinical branch (BALNMP's DL-CNB+C).

Numeric columns are standardised with the training mean/std after imputing missing values with
the training median; each gets a missing indicator (1.0 when the value was absent). Categorical
columns become integer codes for an embedding: code 0 is ``"unknown"`` (a value never seen in
training), code 1 is ``"missing"``, codes 2.. are the training categories in sorted order.

The spec is fitted on training slides only, stored in the run folder and in the exported model
package (``extra["clinical"]``), so prediction encodes exactly as training did.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import ConfigError, DatasetError

UNKNOWN = "unknown"
MISSING = "missing"
RESERVED_CODES = 2  # 0 unknown, 1 missing


@dataclass(frozen=True, slots=True)
class NumericFeature:
    """A numeric clinical column: ``z = (x - mean) / std`` with ``x`` imputed by ``median``."""

    name: str
    median: float
    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median) and math.isfinite(self.mean) and self.std > 0):
            raise ConfigError(f"clinical column {self.name!r}: invalid normalisation (std must be > 0)")


@dataclass(frozen=True, slots=True)
class CategoricalFeature:
    """A categorical clinical column with its training categories (codes 2..)."""

    name: str
    categories: tuple[str, ...]

    @property
    def cardinality(self) -> int:
        """Embedding table size: unknown + missing + categories."""
        return RESERVED_CODES + len(self.categories)

    def code(self, value: Any) -> int:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return 1
        s = str(value).strip()
        if not s or s.lower() in ("na", "n/a", "nan", "none", "null", "missing", "?", "-"):
            return 1
        try:
            return RESERVED_CODES + self.categories.index(s)
        except ValueError:
            return 0


@dataclass(frozen=True, slots=True)
class ClinicalSpec:
    """How clinical values become model inputs.

    Attributes:
        numeric: numeric columns (each gives 2 inputs: z-score and missing indicator).
        categorical: categorical columns (each gives 1 integer code).
    """

    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric) + tuple(f.name for f in self.categorical)

    @property
    def numeric_dim(self) -> int:
        """Width of the numeric input: z-scores then missing indicators."""
        return 2 * len(self.numeric)

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return tuple(f.cardinality for f in self.categorical)

    @property
    def empty(self) -> bool:
        return not self.numeric and not self.categorical

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, Any]], numeric: Sequence[str], categorical: Sequence[str]) -> ClinicalSpec:
        """Fit on training rows (clinical dicts as in :class:`engine.mil.cohort.CohortEntry`).

        A numeric column with no value at all in training cannot be normalised.

        Raises:
            DatasetError: a numeric column has no value in the training slides.
        """
        nums: list[NumericFeature] = []
        for name in numeric:
            vals = np.array([float(r[name]) for r in rows if r.get(name) is not None], dtype=np.float64)
            if vals.size == 0:
                raise DatasetError(f"clinical column {name!r} has no value in the training slides")
            std = float(vals.std())
            # a constant column carries no information but must not divide by zero
            nums.append(NumericFeature(name, float(np.median(vals)), float(vals.mean()), std if std > 1e-8 else 1.0))
        cats: list[CategoricalFeature] = []
        for name in categorical:
            values = sorted({str(r[name]).strip() for r in rows if r.get(name) is not None})
            cats.append(CategoricalFeature(name, tuple(values)))
        return cls(tuple(nums), tuple(cats))

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Encode rows for the model.

        Args:
            rows: B clinical dicts; numeric values as numbers or numeric strings, absent keys
                count as missing.

        Returns:
            ``(numeric, codes, notes)``: numeric ``float32 (B, 2 * n_numeric)`` (z-scores, then
            missing indicators), codes ``int64 (B, n_categorical)``, and human-readable notes on
            imputed, missing and unseen values.

        Raises:
            DatasetError: a numeric value does not parse as a number.
        """
        b = len(rows)
        n_num = len(self.numeric)
        numeric = np.zeros((b, 2 * n_num), dtype=np.float32)
        codes = np.zeros((b, len(self.categorical)), dtype=np.int64)
        notes: list[str] = []
        for i, r in enumerate(rows):
            for j, f in enumerate(self.numeric):
                raw = r.get(f.name)
                value = _to_float(raw, f.name)
                if value is None:
                    value = f.median
                    numeric[i, n_num + j] = 1.0
                    notes.append(f"{f.name}: missing, imputed with the training median {f.median:g}")
                numeric[i, j] = (value - f.mean) / f.std
            for j, f in enumerate(self.categorical):
                raw = r.get(f.name)
                codes[i, j] = f.code(raw)
                if codes[i, j] == 1:
                    notes.append(f"{f.name}: missing, encoded as category '{MISSING}'")
                elif codes[i, j] == 0:
                    notes.append(f"{f.name}: value {raw!r} not seen in training, encoded as '{UNKNOWN}'")
        return numeric, codes, notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": [{"name": f.name, "median": f.median, "mean": f.mean, "std": f.std} for f in self.numeric],
            "categorical": [{"name": f.name, "categories": list(f.categories)} for f in self.categorical],
            "encoding": "numeric: (x - mean) / std after median imputation, then one missing indicator per column; "
            "categorical: 0 unknown, 1 missing, 2+ categories in order",
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ClinicalSpec:
        if not d:
            return cls()
        try:
            nums = tuple(
                NumericFeature(str(f["name"]), float(f["median"]), float(f["mean"]), float(f["std"]))
                for f in d.get("numeric", [])
            )
            cats = tuple(
                CategoricalFeature(str(f["name"]), tuple(str(c) for c in f["categories"]))
                for f in d.get("categorical", [])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid clinical spec: {exc}") from exc
        return cls(nums, cats)


def _to_float(raw: Any, name: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw) if math.isfinite(float(raw)) else None
    s = str(raw).strip()
    if not s or s.lower() in ("na", "n/a", "nan", "none", "null", "missing", "?", "-", "unknown"):
        return None
    try:
        return float(s)
    except ValueError as exc:
        raise DatasetError(f"clinical value {name}={raw!r} is not a number") from exc


def parse_clinical_arg(text: str | None) -> dict[str, str]:
    """Parse ``"age=45,er=positive"`` (command line) into a dict; empty values mean missing.

    Raises:
        ConfigError: a part without ``=``.
    """
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"clinical value {part!r}: expected name=value (e.g. age=45,er=positive)")
        k, v = (x.strip() for x in part.split("=", 1))
        if not k:
            raise ConfigError(f"clinical value {part!r}: empty name")
        out[k] = v
    return out


# -- subgroups ------------------------------------------------------------------------------

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "=": operator.eq,
}
_SUBGROUP_RE = re.compile(r"^\s*([^<>=!]+?)\s*(<=|>=|==|!=|<|>|=)\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Subgroup:
    """A condition on one clinical column, e.g. ``age<50`` or ``ER=positive``."""

    column: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Subgroup:
        """Parse ``COLUMN OP VALUE`` with OP one of ``< <= > >= = == !=``.

        Raises:
            ConfigError: unreadable expression.
        """
        m = _SUBGROUP_RE.match(text or "")
        if not m:
            raise ConfigError(f"subgroup {text!r}: expected COLUMN OP VALUE, e.g. 'age<50' or 'ER=positive'")
        return cls(m.group(1).strip(), m.group(2), m.group(3).strip())

    @property
    def text(self) -> str:
        return f"{self.column}{self.op}{self.value}"

    def mask(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Boolean ``(in_group, known)`` per row; rows whose value is missing are not ``known``.

        Raises:
            ConfigError: an ordering comparison on a non-numeric value.
        """
        fn = _OPS[self.op]
        numeric = self.op in ("<", "<=", ">", ">=")
        try:
            target: Any = float(self.value)
        except ValueError:
            if numeric:
                raise ConfigError(f"subgroup {self.text!r}: {self.value!r} is not a number") from None
            target = self.value
        inside = np.zeros(len(rows), dtype=bool)
        known = np.zeros(len(rows), dtype=bool)
        for i, r in enumerate(rows):
            v = r.get(self.column)
            if v is None:
                continue
            known[i] = True
            if isinstance(target, float):
                try:
                    inside[i] = fn(float(v), target)
                except (TypeError, ValueError):
                    if numeric:
                        raise ConfigError(f"subgroup {self.text!r}: column value {v!r} is not a number") from None
                    inside[i] = fn(str(v), self.value)
            else:
                inside[i] = fn(str(v).strip().lower(), target.lower())
        return inside, known
