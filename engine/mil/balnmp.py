"""Import the public BALNMP / BCNB release as a MetaScope cohort manifest.

The release, as its upstream code reads it::

    ROOT/WSIs/<id>.jpg               large JPEGs of core-needle biopsies (200x; see SLIDE_MPP_NOTE)
    ROOT/WSIs/<id>.json              tumour annotations {"positive": [{"vertices": [[x, y], ...]}, ...]}
    ROOT/<clinical>.xlsx | .csv      one row per patient: Patient ID, ALN status, age, tumour size, ...
    ROOT/[dataset-splitting/]{train,val,test}_id.txt   optional patient-id lists

:func:`import_balnmp` writes a manifest CSV (``slide, patient, label, roi[, split], clinical
columns...``) that :func:`engine.mil.cohort.load_cohort` reads, and returns an
:class:`ImportReport` saying which table column became which manifest column, which were left
out (label leaks) and what could not be matched.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DatasetError

#: BALNMP states "200x magnification": a 20x objective (x 10 eyepiece), about 0.5 um/px on the
#: usual scanners. The JPEGs record no resolution: pass ``--slide-mpp`` (0.5 if unsure).
SLIDE_MPP_NOTE = (
    "the slides record no resolution; BALNMP says 200x magnification (a 20x objective, about 0.5 um/px): "
    "pass --slide-mpp 0.5 (or your scanner's value) to mil features"
)
SLIDE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
TABLE_SUFFIXES = (".xlsx", ".xlsm", ".csv", ".tsv")

# manifest column <- normalised table header patterns (lower case, letters and digits only)
_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("patient", ("patientid", "patient", "id", "caseid")),
    ("label", ("alnstatus", "aln", "lymphnodestatus", "nstatus")),
    ("age", ("ageyears", "age")),
    ("tumour_size", ("tumoursizecm", "tumorsizecm", "tumoursize", "tumorsize", "size")),
    ("tumour_type", ("tumourtype", "tumortype")),
    ("er", ("er", "estrogenreceptor", "oestrogenreceptor")),
    ("pr", ("pr", "progesteronereceptor")),
    ("her2_expression", ("her2expression",)),
    ("her2", ("her2", "her2status")),
    ("histological_type", ("histologicaltype", "histologicgrading", "histologicalgrading", "histotype")),
    ("molecular_subtype", ("molecularsubtype", "subtype")),
    ("ki67", ("ki67",)),
    ("surgical", ("surgical", "surgery")),
)
# columns that restate the label: never features
_LEAKS = ("numberoflymphnodemetastases", "lymphnodemetastases", "nodecount", "nodesmetastases")

_LABELS = {"n0": "N0", "n+(1-2)": "N+(1-2)", "n+(>2)": "N+(>2)"}


def canonical_label(raw: Any) -> str | None:
    """``N0``, ``N+(1-2)`` or ``N+(>2)`` for BALNMP's spellings (``N+(1~2)``, full-width ``＞``...), else None."""
    if raw is None:
        return None
    s = str(raw).strip().lower().replace(" ", "")
    s = s.replace("～", "-").replace("~", "-").replace("－", "-").replace("＞", ">").replace("（", "(").replace("）", ")")
    s = s.replace("＋", "+")
    return _LABELS.get(s)


def _key(header: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(header or "").lower())


@dataclass
class ImportReport:
    """What :func:`import_balnmp` did.

    Attributes:
        manifest: the written CSV.
        table: the clinical table read.
        columns: ``{table header: manifest column}`` for every column used.
        left_out: table headers not used, with why.
        n_patients, n_slides, n_annotated: rows in the table, slides written, slides with a ROI.
        label_counts: canonical label -> slides.
        label_spellings: raw spelling -> canonical label (as found).
        problems: one line per patient or slide that could not be used.
        splits: split name -> patients (from split files), empty when none.
        notes: other remarks (resolution).
    """

    manifest: str
    table: str
    columns: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    n_patients: int = 0
    n_slides: int = 0
    n_annotated: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    label_spellings: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"clinical table: {self.table} ({self.n_patients} patients)"]
        out += [f"  column {src!r} -> {dst}" for src, dst in self.columns.items()]
        out += [f"  column {src!r} left out: {why}" for src, why in self.left_out.items()]
        out.append("labels: " + ", ".join(f"{k} {v}" for k, v in self.label_counts.items()))
        odd = {k: v for k, v in self.label_spellings.items() if k != v}
        if odd:
            out.append("label spellings read: " + ", ".join(f"{k!r} -> {v}" for k, v in odd.items()))
        out.append(f"slides: {self.n_slides} ({self.n_annotated} with a tumour annotation used as ROI)")
        if self.splits:
            out.append("splits from files: " + ", ".join(f"{k} {v}" for k, v in self.splits.items()))
        out += [f"problem: {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            out.append(f"... and {len(self.problems) - 20} more problems")
        out += [f"note: {n}" for n in self.notes]
        out.append(f"manifest: {self.manifest}")
        return out


def read_table(path: str | os.PathLike[str]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of an Excel sheet (the first) or a CSV / TSV table.

    Raises:
        DatasetError: unreadable file, or openpyxl missing for Excel.
    """
    p = Path(path)
    if p.suffix.lower() in (".xlsx", ".xlsm"):
        try:
            import openpyxl
        except ImportError as exc:
            raise DatasetError(f"{p.name}: reading Excel needs the openpyxl package (pip install openpyxl), or save it as CSV") from exc
        try:
            wb = openpyxl.load_workbook(p, read_only=True, data_only=True)
        except Exception as exc:  # openpyxl raises assorted types for damaged files
            raise DatasetError(f"cannot read Excel file {p.name}: {' '.join(str(exc).split())}") from exc
        try:
            rows = [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()
    else:
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read table {p.name}: {exc}") from exc
        delim = "\t" if p.suffix.lower() == ".tsv" or text.split("\n", 1)[0].count("\t") > text.split("\n", 1)[0].count(",") else ","
        rows = [list(r) for r in csv.reader(io.StringIO(text), delimiter=delim)]
    rows = [r for r in rows if any(v not in (None, "") for v in r)]
    if not rows:
        raise DatasetError(f"table {p.name} is empty")
    header = [str(h).strip() if h is not None else "" for h in rows[0]]
    return header, rows[1:]


def _map_columns(header: list[str]) -> tuple[dict[int, str], dict[str, str]]:
    """``{column index: manifest name}`` and ``{header: why left out}``."""
    used: dict[int, str] = {}
    taken: set[str] = set()
    keys = [_key(h) for h in header]
    for name, patterns in _COLUMNS:  # exact header matches first, in pattern order
        for pat in patterns:
            hit = next((i for i, k in enumerate(keys) if k == pat and i not in used), None)
            if hit is not None and name not in taken:
                used[hit] = name
                taken.add(name)
                break
    left: dict[str, str] = {}
    for i, h in enumerate(header):
        if i in used or not h:
            continue
        if any(keys[i].startswith(leak) or leak in keys[i] for leak in _LEAKS):
            left[h] = "restates the label (lymph-node count): never a feature"
            continue
        safe = re.sub(r"[^a-z0-9]+", "_", h.lower()).strip("_") or f"column_{i + 1}"
        if safe in taken:
            left[h] = f"duplicate of column {safe!r}"
            continue
        used[i] = safe
        taken.add(safe)
    return used, left


def find_table(root: Path) -> Path:
    """The clinical table of a BALNMP folder: the Excel / CSV file with ``Patient ID`` and ``ALN status``."""
    candidates = sorted(p for p in root.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES and p.is_file()
                        and not p.name.startswith(("~$", ".")))
    for p in candidates:
        try:
            header, _ = read_table(p)
        except DatasetError:
            continue
        keys = {_key(h) for h in header}
        if keys & {"patientid", "patient"} and keys & {"alnstatus", "aln"}:
            return p
    raise DatasetError(
        f"no clinical table in {root}: expected an .xlsx or .csv with the columns 'Patient ID' and 'ALN status'"
    )


def _slides_by_id(root: Path) -> dict[str, Path]:
    folder = next((d for d in (root / "WSIs", root / "WSI", root / "wsis", root) if d.is_dir()), root)
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith("."):
            out.setdefault(p.stem, p)
    return out


def _read_splits(root: Path) -> dict[str, str]:
    """Patient id -> ``train`` / ``val`` / ``test`` from ``*train*.txt`` / ``*val*`` / ``*test*`` files (or JSON lists)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in (".txt", ".json") or p.parent.name.lower() in ("wsis", "wsi"):
            continue
        stem = p.stem.lower()
        split = "train" if "train" in stem else "val" if ("val" in stem or "valid" in stem) else "test" if "test" in stem else None
        if split is None:
            continue
        text = p.read_text(encoding="utf-8-sig", errors="replace")
        try:
            ids = [str(x) for x in json.loads(text)] if p.suffix.lower() == ".json" else text.split()
        except (json.JSONDecodeError, TypeError):
            continue
        for pid in ids:
            out[_id(pid)] = split
    return out


def _id(v: Any) -> str:
    s = str(v).strip()
    return s[:-2] if re.fullmatch(r"-?\d+\.0", s) else s


def import_balnmp(root: str | os.PathLike[str], out: str | os.PathLike[str], table: str | os.PathLike[str] | None = None) -> ImportReport:
    """Write the manifest of a BALNMP folder (see the module docstring).

    Args:
        root: the dataset folder.
        out: the manifest CSV to write (paths in it are relative to its folder).
        table: the clinical table, when it is not the one :func:`find_table` finds.

    Raises:
        DatasetError: no table, no usable patient, or the table lacks the id / label columns.
    """
    from engine.fileio import atomic_write_text

    root_p, out_p = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    if not root_p.is_dir():
        raise DatasetError(f"BALNMP folder not found: {root_p}")
    table_p = Path(table).resolve() if table else find_table(root_p)
    header, rows = read_table(table_p)
    cols, left = _map_columns(header)
    names = set(cols.values())
    if "patient" not in names or "label" not in names:
        raise DatasetError(f"{table_p.name} lacks 'Patient ID' or 'ALN status' (has: {', '.join(header)})")
    rep = ImportReport(str(out_p), str(table_p), {header[i]: n for i, n in cols.items()}, left)
    slides, splits = _slides_by_id(root_p), _read_splits(root_p)
    clinical = [(i, n) for i, n in cols.items() if n not in ("patient", "label")]
    out_rows = []
    for r in rows:
        get = {n: (r[i] if i < len(r) else None) for i, n in cols.items()}
        pid = _id(get["patient"]) if get["patient"] not in (None, "") else ""
        if not pid:
            continue
        rep.n_patients += 1
        label = canonical_label(get["label"])
        if label is None:
            rep.problems.append(f"patient {pid}: ALN status {get['label']!r} is not N0, N+(1-2) or N+(>2); left out")
            continue
        rep.label_spellings[str(get["label"]).strip()] = label
        slide = slides.get(pid)
        if slide is None:
            rep.problems.append(f"patient {pid}: no slide {pid}.jpg in WSIs/; left out")
            continue
        roi = slide.with_suffix(".json")
        roi_text = os.path.relpath(roi, out_p.parent) if roi.is_file() else ""
        rep.n_annotated += bool(roi_text)
        row = [os.path.relpath(slide, out_p.parent), pid, label, roi_text]
        if splits:
            row.append(splits.get(pid, ""))
        row += ["" if r[i] is None or i >= len(r) else str(r[i]).strip() for i, _ in clinical]
        out_rows.append(row)
        rep.label_counts[label] = rep.label_counts.get(label, 0) + 1
    if not out_rows:
        raise DatasetError(f"no usable patient in {table_p.name}: " + (rep.problems[0] if rep.problems else "empty table"))
    if splits:
        missing = sum(1 for row in out_rows if not row[4])
        for name in ("train", "val", "test"):
            rep.splits[name] = sum(1 for row in out_rows if row[4] == name)
        if missing:
            rep.notes.append(f"{missing} patients are in no split file: their split is empty, so training draws a random split")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide", "patient", "label", "roi", *(["split"] if splits else []), *[n for _, n in clinical]])
    w.writerows(out_rows)
    atomic_write_text(out_p, buf.getvalue())
    rep.n_slides = len(out_rows)
    rep.notes.append(SLIDE_MPP_NOTE)
    return rep
