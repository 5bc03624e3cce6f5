"""A slide-level cohort: a manifest CSV of slides with labels, patients and clinical data.

The manifest has one row per slide. Required columns: the slide path (``slide``), the label
(``label``) and the patient id (``patient``); optional: ``split`` (train / val / test) and
``roi`` (a GeoJSON of regions of interest). Every other column is a clinical variable, numeric
when all its present values parse as numbers, categorical otherwise. Relative paths are resolved
against the manifest's folder.

Missing clinical values are kept and handled at encoding time (see :mod:`engine.mil.clinical`):
numeric values are imputed with the training median and flagged by a missing indicator,
categorical values go to a ``"missing"`` category; categories never seen in training go to the
``"unknown"`` bucket at prediction time.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, DatasetError

# Accepted spellings of the required/optional columns (lower-case, stripped).
SLIDE_COLUMNS = ("slide", "slide_path", "path", "image", "wsi")
LABEL_COLUMNS = ("label", "target", "class", "ln_status", "n_status")
PATIENT_COLUMNS = ("patient", "patient_id", "case", "case_id")
SPLIT_COLUMNS = ("split", "fold_split", "set")
ROI_COLUMNS = ("roi", "roi_path", "annotation", "annotations", "geojson")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "holdout": "test",
}
MISSING_STRINGS = frozenset({"", "na", "n/a", "nan", "none", "null", "?", "-", "missing", "unknown"})


def _norm(s: str) -> str:
    return " ".join(str(s).strip().lower().replace("_", " ").split())


@dataclass(frozen=True, slots=True)
class LabelScheme:
    """Maps raw label strings of a manifest to class indices.

    Attributes:
        name: short name, e.g. ``"three_class"`` or ``"binary"``.
        class_names: output classes in order.
        mapping: raw label (normalised: lower-case, ``_`` as space) -> class index.
    """

    name: str
    class_names: tuple[str, ...]
    mapping: dict[str, int]

    def __post_init__(self) -> None:
        if len(self.class_names) < 2:
            raise ConfigError("a label scheme needs at least two classes")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"duplicate class names in {self.class_names}")
        for raw, idx in self.mapping.items():
            if not 0 <= int(idx) < len(self.class_names):
                raise ConfigError(f"label {raw!r} maps to class {idx}, not one of 0..{len(self.class_names) - 1}")

    def index_of(self, raw: Any) -> int | None:
        """Class index of a raw manifest label, or ``None`` when it is not in the scheme."""
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            return None
        key = _norm(str(raw))
        from engine.mil.balnmp import canonical_label

        # BALNMP's spellings: N+(1~2), full-width N+(＞2)...
        canon = canonical_label(raw)
        if canon is not None and _norm(canon) in self.mapping:
            return self.mapping[_norm(canon)]
        # "1.0" from a numeric column reads as "1"
        if key.endswith(".0") and key[:-2].lstrip("-").isdigit():
            key = key[:-2]
        return self.mapping.get(key)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "class_names": list(self.class_names), "mapping": dict(self.mapping)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelScheme:
        try:
            return cls(
                name=str(d["name"]),
                class_names=tuple(str(c) for c in d["class_names"]),
                mapping={_norm(k): int(v) for k, v in dict(d["mapping"]).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid label scheme: {exc}") from exc


def _mapping(pairs: dict[str, int], class_names: tuple[str, ...]) -> dict[str, int]:
    out = {_norm(k): v for k, v in pairs.items()}
    for i, name in enumerate(class_names):
        out[_norm(name)] = i
        out[str(i)] = i
    return out


THREE_CLASS = LabelScheme(
    "three_class",
    ("N0", "N+(1-2)", "N+(>2)"),
    _mapping(
        {"n0": 0, "negative": 0, "n+(1-2)": 1, "n1": 1, "1-2": 1, "n+(>2)": 2, "n2": 2, "n3": 2, ">2": 2},
        ("N0", "N+(1-2)", "N+(>2)"),
    ),
)
BINARY = LabelScheme(
    "binary",
    ("N0", "N+"),
    _mapping(
        {
            "n0": 0,
            "negative": 0,
            "n+": 1,
            "positive": 1,
            "n+(1-2)": 1,
            "n1": 1,
            "1-2": 1,
            "n+(>2)": 1,
            "n2": 1,
            "n3": 1,
            ">2": 1,
            # "2" codes N+(>2) in three-class manifests; in the binary scheme that is N+ too
            "2": 1,
        },
        ("N0", "N+"),
    ),
)


def label_scheme(spec: str | LabelScheme | None) -> LabelScheme:
    """Resolve a label scheme from a name or a mapping spec.

    Args:
        spec: ``"three_class"`` (N0 / N+(1-2) / N+(>2)), ``"binary"`` (N0 vs N+), a scheme, or a
            custom mapping ``"raw=Class,raw=Class,..."`` whose classes keep their first-seen order,
            e.g. ``"N0=neg,N1=pos,N2=pos"``.

    Raises:
        ConfigError: an unreadable spec.
    """
    if spec is None:
        return BINARY
    if isinstance(spec, LabelScheme):
        return spec
    s = spec.strip()
    if s.lower() in ("three_class", "three", "3", "multiclass", "multi"):
        return THREE_CLASS
    if s.lower() in ("binary", "two", "2"):
        return BINARY
    classes: list[str] = []
    mapping: dict[str, int] = {}
    for part in s.split(","):
        if "=" not in part:
            raise ConfigError(
                f"label mapping {spec!r}: expected 'three_class', 'binary' or raw=Class pairs separated by commas"
            )
        raw, cls = (x.strip() for x in part.split("=", 1))
        if not raw or not cls:
            raise ConfigError(f"label mapping {spec!r}: empty label in {part!r}")
        if cls not in classes:
            classes.append(cls)
        mapping[_norm(raw)] = classes.index(cls)
    for i, c in enumerate(classes):
        mapping.setdefault(_norm(c), i)
    return LabelScheme("custom", tuple(classes), mapping)


@dataclass(frozen=True, slots=True)
class CohortEntry:
    """One slide of the cohort.

    Attributes:
        slide_id: unique id used for feature files (file stem; made unique when stems clash).
        slide_path: absolute path to the slide file.
        label: class index into the cohort's ``class_names``.
        patient_id: patient identifier (splits never separate a patient's slides).
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` when the manifest has no split.
        roi_path: GeoJSON of regions of interest, or ``None``.
        clinical: clinical column -> value (float for numeric, str for categorical, None if missing).
        row: 1-based data row in the manifest (for messages).
    """

    slide_id: str
    slide_path: Path
    label: int
    patient_id: str
    split: str | None
    roi_path: Path | None
    clinical: dict[str, float | str | None]
    row: int


@dataclass(frozen=True, slots=True)
class CohortProblem:
    """A row that cannot be used, or a value that will be handled specially."""

    row: int
    slide: str
    kind: str  # "missing_slide", "unknown_label", "missing_roi", "duplicate_slide", "missing_patient"
    message: str


@dataclass(frozen=True, slots=True)
class ClinicalColumnReport:
    name: str
    kind: str  # "numeric" or "categorical"
    missing: int
    handling: str
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Cohort:
    """A validated cohort. ``entries`` holds only usable rows; ``problems`` lists the rest.

    Attributes:
        manifest: the manifest path.
        scheme: the label scheme.
        entries: usable slides in manifest order.
        problems: excluded rows and why.
        numeric_columns, categorical_columns: clinical columns by inferred type.
        n_rows: data rows in the manifest.
    """

    manifest: Path
    scheme: LabelScheme
    entries: tuple[CohortEntry, ...]
    problems: tuple[CohortProblem, ...]
    numeric_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    n_rows: int
    clinical_report: tuple[ClinicalColumnReport, ...] = field(default=())

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.scheme.class_names

    @property
    def clinical_columns(self) -> tuple[str, ...]:
        return self.numeric_columns + self.categorical_columns

    def class_counts(self) -> dict[str, int]:
        counts = Counter(e.label for e in self.entries)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def patients(self) -> list[str]:
        return sorted({e.patient_id for e in self.entries})

    def by_id(self) -> dict[str, CohortEntry]:
        return {e.slide_id: e for e in self.entries}

    def check_columns(self, columns: list[str] | tuple[str, ...]) -> None:
        """Raise :class:`DatasetError` if any of ``columns`` is not a clinical column."""
        unknown = [c for c in columns if c not in self.clinical_columns]
        if unknown:
            have = ", ".join(self.clinical_columns) or "none"
            raise DatasetError(
                f"clinical column(s) {', '.join(unknown)} not in the manifest (clinical columns: {have})"
            )

    def report_lines(self) -> list[str]:
        """A human-readable validation report (one string per line)."""
        lines = [
            f"manifest: {self.manifest}",
            f"slides: {len(self.entries)} usable of {self.n_rows} rows, {len(self.patients())} patients",
            "classes: " + ", ".join(f"{k} {v}" for k, v in self.class_counts().items()),
        ]
        splits = Counter(e.split or "-" for e in self.entries)
        if any(e.split for e in self.entries):
            lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
        if self.clinical_report:
            lines.append("clinical columns:")
            for c in self.clinical_report:
                cats = (
                    f" [{', '.join(c.categories[:8])}{', ...' if len(c.categories) > 8 else ''}]"
                    if c.categories
                    else ""
                )
                lines.append(f"  {c.name} ({c.kind}){cats}: {c.missing} missing -> {c.handling}")
        else:
            lines.append("clinical columns: none")
        if self.problems:
            lines.append(f"problems ({len(self.problems)} rows excluded or flagged):")
            for p in self.problems:
                lines.append(f"  row {p.row} {p.slide}: {p.message}")
        else:
            lines.append("problems: none")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest),
            "label_scheme": self.scheme.to_dict(),
            "rows": self.n_rows,
            "usable": len(self.entries),
            "patients": len(self.patients()),
            "class_counts": self.class_counts(),
            "numeric_columns": list(self.numeric_columns),
            "categorical_columns": list(self.categorical_columns),
            "clinical": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "missing": c.missing,
                    "handling": c.handling,
                    "categories": list(c.categories),
                }
                for c in self.clinical_report
            ],
            "problems": [{"row": p.row, "slide": p.slide, "kind": p.kind, "message": p.message} for p in self.problems],
        }


def _find_column(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip().lower() in MISSING_STRINGS


def _as_float(v: Any) -> float | None:
    if _is_missing(v):
        return None
    try:
        f = float(str(v).strip())
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def load_cohort(
    manifest: str | os.PathLike[str],
    scheme: str | LabelScheme | None = None,
    categorical: tuple[str, ...] | list[str] = (),
    check_files: bool = True,
) -> Cohort:
    """Read and validate a manifest CSV.

    Rows with a missing slide file, an unknown label or no patient id are excluded and listed
    in ``problems``; a missing ROI file is flagged and the whole slide is used instead.

    Args:
        manifest: CSV path.
        scheme: label scheme name, mapping spec or :class:`LabelScheme` (default binary).
        categorical: columns to treat as categorical even if their values look numeric
            (e.g. a grade coded 1/2/3).
        check_files: check that slide and ROI files exist.

    Raises:
        DatasetError: the file is unreadable, lacks a required column, or has no usable row.
    """
    import pandas as pd

    path = Path(manifest)
    if not path.is_file():
        raise DatasetError(f"manifest not found: {path}")
    scheme_ = label_scheme(scheme)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"cannot read manifest {path.name}: {exc}") from exc
    cols = [str(c) for c in df.columns]
    slide_col = _find_column(cols, SLIDE_COLUMNS)
    label_col = _find_column(cols, LABEL_COLUMNS)
    patient_col = _find_column(cols, PATIENT_COLUMNS)
    missing_cols = [
        name for name, col in (("slide", slide_col), ("label", label_col), ("patient", patient_col)) if col is None
    ]
    if missing_cols:
        raise DatasetError(
            f"manifest {path.name} lacks column(s) {', '.join(missing_cols)} (has: {', '.join(cols) or 'no columns'})"
        )
    split_col = _find_column(cols, SPLIT_COLUMNS)
    roi_col = _find_column(cols, ROI_COLUMNS)
    reserved = {slide_col, label_col, patient_col, split_col, roi_col}
    clinical_cols = [c for c in cols if c not in reserved and c.strip()]
    unknown_cat = [c for c in categorical if c not in clinical_cols]
    if unknown_cat:
        raise DatasetError(f"--categorical column(s) {', '.join(unknown_cat)} are not clinical columns of the manifest")

    numeric: list[str] = []
    cat: list[str] = []
    for c in clinical_cols:
        present = [v for v in df[c].tolist() if not _is_missing(v)]
        if c not in categorical and present and all(_as_float(v) is not None for v in present):
            numeric.append(c)
        else:
            cat.append(c)

    base = path.parent
    entries: list[CohortEntry] = []
    problems: list[CohortProblem] = []
    seen_paths: dict[Path, int] = {}
    stems: Counter[str] = Counter()
    for i, rec in enumerate(df.to_dict(orient="records"), start=1):
        raw_slide = str(rec[slide_col]).strip()
        if not raw_slide:
            problems.append(CohortProblem(i, "-", "missing_slide", "no slide path"))
            continue
        sp = Path(raw_slide).expanduser()
        sp = (sp if sp.is_absolute() else base / sp).resolve()
        if check_files and not sp.exists():
            problems.append(CohortProblem(i, raw_slide, "missing_slide", f"slide file not found: {sp}"))
            continue
        if sp in seen_paths:
            problems.append(
                CohortProblem(i, raw_slide, "duplicate_slide", f"same slide as row {seen_paths[sp]}; row ignored")
            )
            continue
        label = scheme_.index_of(rec[label_col])
        if label is None:
            known = ", ".join(scheme_.class_names)
            problems.append(
                CohortProblem(i, raw_slide, "unknown_label", f"label {rec[label_col]!r} is not one of {known}")
            )
            continue
        patient = str(rec[patient_col]).strip()
        if _is_missing(patient):
            problems.append(CohortProblem(i, raw_slide, "missing_patient", "no patient id"))
            continue
        split: str | None = None
        if split_col is not None and not _is_missing(rec[split_col]):
            split = SPLIT_ALIASES.get(_norm(rec[split_col]))
            if split is None:
                problems.append(
                    CohortProblem(
                        i, raw_slide, "unknown_split", f"split {rec[split_col]!r} is not train/val/test; row ignored"
                    )
                )
                continue
        roi: Path | None = None
        if roi_col is not None and not _is_missing(rec[roi_col]):
            rp = Path(str(rec[roi_col]).strip()).expanduser()
            rp = (rp if rp.is_absolute() else base / rp).resolve()
            if check_files and not rp.is_file():
                problems.append(
                    CohortProblem(i, raw_slide, "missing_roi", f"ROI file not found: {rp}; the whole tissue is used")
                )
                rp = None
            roi = rp
        clinical: dict[str, float | str | None] = {}
        for c in numeric:
            clinical[c] = _as_float(rec[c])
        for c in cat:
            v = rec[c]
            clinical[c] = None if _is_missing(v) else str(v).strip()
        seen_paths[sp] = i
        stem = _safe_id(sp.stem if sp.suffix else sp.name)
        stems[stem] += 1
        sid = stem if stems[stem] == 1 else f"{stem}__{stems[stem]}"
        entries.append(CohortEntry(sid, sp, label, patient, split, roi, clinical, i))

    if not entries:
        detail = f"; first problem: row {problems[0].row}: {problems[0].message}" if problems else ""
        raise DatasetError(f"manifest {path.name} has no usable slide ({len(df)} rows){detail}")

    # patients must not carry conflicting splits: a patient's slides stay together
    patient_splits: dict[str, set[str]] = {}
    for e in entries:
        patient_splits.setdefault(e.patient_id, set()).add(e.split or "")
    conflicts = sorted(p for p, s in patient_splits.items() if len(s) > 1)
    if conflicts:
        raise DatasetError(
            f"patient(s) {', '.join(conflicts[:5])} have slides in different splits; a patient's slides must share one split"
        )

    report: list[ClinicalColumnReport] = []
    for c in numeric:
        miss = sum(1 for e in entries if e.clinical[c] is None)
        report.append(
            ClinicalColumnReport(
                c, "numeric", miss, "median of the training slides + a missing indicator" if miss else "none needed"
            )
        )
    for c in cat:
        miss = sum(1 for e in entries if e.clinical[c] is None)
        cats = tuple(sorted({str(e.clinical[c]) for e in entries if e.clinical[c] is not None}))
        handling = "category 'missing'" if miss else "none needed"
        report.append(
            ClinicalColumnReport(c, "categorical", miss, handling + "; unseen values at prediction -> 'unknown'", cats)
        )
    return Cohort(
        path.resolve(), scheme_, tuple(entries), tuple(problems), tuple(numeric), tuple(cat), len(df), tuple(report)
    )


def _safe_id(stem: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    return keep.strip(".") or "slide"
