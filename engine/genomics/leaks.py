"""The label (primary vs metastasis) and the columns that must never become features.

A column is dropped when it describes the label (``METASTATIC_SITE``, ``MET_COUNT``, ...), was
recorded after it (survival outcomes), identifies the sample, was named by the user, or (checked
on the data) almost determines the label: values that belong to one class >= 99% of the time
(with at least 20 samples) cover at least half of the labelled samples, or a numeric column alone
separates the classes with AUC >= 0.95.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DatasetError
from engine.genomics.study import Study, is_numeric_column, numeric

DEFAULT_LABEL = "SAMPLE_TYPE"
DEFAULT_CLASSES = ("Primary", "Metastasis")

# name -> reason; patterns below catch the families (survival, follow-up)
KNOWN_LEAKS = {
    "SAMPLE_TYPE": "the label itself",
    "METASTATIC_SITE": "describes the label (site of the metastasis; 'Not Applicable' for primaries)",
    "MET_COUNT": "describes the label (number of metastases of the patient)",
    "MET_SITE_COUNT": "describes the label (number of metastatic sites)",
    "SAMPLE_CLASS": "describes how the sample was classified (tumour / metastasis / cell line)",
    "IS_METASTASIS": "describes the label",
    "METASTATIC_SITE_BIOPSY": "describes the label",
    "TUMOR_SAMPLE_HISTOLOGY": "describes the label (primary / metastatic histology)",
    "SAMPLE_TYPE_DETAILED": "describes the label",
    "VITAL_STATUS": "outcome recorded after the sample (survival)",
}
LEAK_PATTERNS = (
    (re.compile(r"^(OS|DFS|PFS|DSS|RFS|EFS|MFS)_(STATUS|MONTHS|DAYS|TIME)$"), "survival outcome, recorded after the sample"),
    (re.compile(r"(SURVIVAL|FOLLOW_?UP|DEATH|RECURRENCE|PROGRESSION)"), "outcome recorded after the sample"),
    (re.compile(r"^MET(ASTA\w*)?_"), "describes metastases (the label)"),
)
ID_COLUMNS = ("PATIENT_ID", "SAMPLE_ID", "OTHER_SAMPLE_ID", "OTHER_PATIENT_ID", "STUDY_ID")

PURE_SHARE = 0.99
PURE_MIN_COUNT = 20
COVERAGE = 0.5
NUMERIC_AUC = 0.95


@dataclass
class Label:
    """Labels of the usable samples.

    Attributes:
        column: the label column.
        class_names: ``(negative, positive)``, e.g. ``("Primary", "Metastasis")``.
        y: sample id -> 0/1 for samples with a usable label.
        excluded: label value -> count of samples left out (other values, empty).
    """

    column: str
    class_names: tuple[str, str]
    y: pd.Series
    excluded: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {self.class_names[k]: int((self.y == k).sum()) for k in (0, 1)}


def make_label(study: Study, column: str = DEFAULT_LABEL, positive: str | None = None) -> Label:
    """The binary label of every sample that has one.

    ``SAMPLE_TYPE``-like columns: Primary (0) vs Metastasis (1); any other column must have
    exactly two values (the positive one given or the second in sorted order).

    Raises:
        DatasetError: no such column, or fewer than two classes.
    """
    s = study.samples
    if column not in s.columns:
        raise DatasetError(f"the study has no label column {column!r} (columns: {', '.join(s.columns[:12])}...)")
    values = s[column].astype(str).str.strip()
    low = values.str.lower()
    if positive is None and low.isin(["primary", "metastasis"]).any():
        y = pd.Series(np.where(low == "metastasis", 1, np.where(low == "primary", 0, -1)), index=s.index)
        names = DEFAULT_CLASSES
    else:
        distinct = sorted(v for v in values.unique() if v)
        pos = positive if positive is not None else (distinct[-1] if len(distinct) == 2 else None)
        if pos is None or pos not in distinct or len(distinct) != 2:
            raise DatasetError(
                f"label column {column!r} has values {', '.join(distinct[:6])}; give two classes "
                "(Primary / Metastasis) or name the positive one"
            )
        neg = next(v for v in distinct if v != pos)
        y = pd.Series(np.where(values == pos, 1, np.where(values == neg, 0, -1)), index=s.index)
        names = (neg, pos)
    excluded = values[y < 0].replace("", "(empty)").value_counts().to_dict()
    y = y[y >= 0].astype(np.int64)
    if y.nunique() < 2:
        only = names[int(y.iloc[0])] if len(y) else "none"
        raise DatasetError(f"label column {column!r} holds one class only ({only}); need both {names[0]} and {names[1]}")
    return Label(column, (str(names[0]), str(names[1])), y, {str(k): int(v) for k, v in excluded.items()})


def _categorical_purity(values: pd.Series, y: pd.Series) -> tuple[float, list[str]]:
    """Share of samples whose value (empty counts as a value) is >= 99% one class, and those values."""
    df = pd.DataFrame({"v": values.loc[y.index].replace("", "(missing)"), "y": y})
    g = df.groupby("v")["y"].agg(["mean", "size"])
    pure = g[(g["size"] >= PURE_MIN_COUNT) & ((g["mean"] >= PURE_SHARE) | (g["mean"] <= 1 - PURE_SHARE))]
    return float(pure["size"].sum() / max(len(df), 1)), [str(v) for v in pure.index[:5]]


def detect_leaks(
    study: Study, label: Label, extra: tuple[str, ...] = (), candidates: list[str] | None = None
) -> dict[str, str]:
    """Columns that must not become features, with the reason for each.

    Args:
        study: the study.
        label: its label.
        extra: columns the user drops (``--drop-columns``).
        candidates: columns to screen (default: every clinical column).
    """
    from engine.train.metrics import roc_auc

    cols = list(study.samples.columns) if candidates is None else candidates
    out: dict[str, str] = {label.column: "the label itself"}
    for c in extra:
        out.setdefault(c, "dropped by the user")
    for c in cols:
        if c in out or c in ID_COLUMNS:
            continue
        if c in KNOWN_LEAKS:
            out[c] = KNOWN_LEAKS[c]
            continue
        hit = next((reason for pat, reason in LEAK_PATTERNS if pat.search(c)), None)
        if hit:
            out[c] = hit
            continue
        col = study.samples[c]
        if is_numeric_column(col):
            x = numeric(col.loc[label.y.index])
            ok = np.isfinite(x)
            if ok.sum() >= 2 * PURE_MIN_COUNT and label.y[ok].nunique() == 2:
                auc = roc_auc(label.y.to_numpy()[ok] == 1, x[ok])
                auc = max(auc, 1 - auc)
                if auc >= NUMERIC_AUC:
                    out[c] = f"alone separates the classes (AUC {auc:.3f} >= {NUMERIC_AUC})"
                    continue
        share, values = _categorical_purity(col, label.y)
        if share >= COVERAGE:
            out[c] = (
                f"almost determines the label: values that are >= {PURE_SHARE:.0%} one class "
                f"({', '.join(values)}) cover {share:.0%} of the samples"
            )
    return out


def leak_table(leaks: dict[str, str]) -> list[dict[str, Any]]:
    return [{"column": c, "reason": r} for c, r in leaks.items()]
