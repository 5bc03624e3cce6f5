"""Patient-level pN category from a heatmap folder: one slide is one lymph node (CAMELYON17).

Each slide's result (``DIR/<slide>/heatmap.json``, written by ``metascope heatmap``) carries the
category of its largest lesion (:mod:`engine.infer.lesions`): no tumour, isolated tumour cells
(ITC), micrometastasis, macrometastasis, or unknown (no mpp). A patient's nodes give the pN
category as CAMELYON17 defines it:

- ``pN0``: no micro- or macrometastasis and no ITC;
- ``pN0(i+)``: only ITC;
- ``pN1mi``: micrometastases, no macrometastasis;
- ``pN1``: metastases (micro or macro; nodes with only ITC do not count) in 1-3 nodes, at least
  one a macrometastasis;
- ``pN2``: metastases in 4-9 nodes, at least one a macrometastasis;
- ``pN3``: metastases in 10 or more nodes, at least one a macrometastasis. CAMELYON17 stops at
  pN2 (its patients have 5 nodes, so 4-5 nodes with metastasis); pN3 follows the same counting
  for patients with more slides.

A node whose category is unknown (a slide without mpp, a slide that failed or whose folder has no
result) makes the patient ``pNX`` with the reason, unless the known nodes already give pN1, pN2
or pN3: then the category stands and the note says the count is a lower bound.

Agreement with a reference (CAMELYON17's challenge metric): quadratic weighted Cohen's kappa over
the ordered stages pN0 < pN0(i+) < pN1mi < pN1 < pN2 < pN3; pNX patients are left out and counted.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, DatasetError
from engine.infer.lesions import CATEGORY_ITC, CATEGORY_MACRO, CATEGORY_MICRO, CATEGORY_NONE, CATEGORY_UNKNOWN

STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2", "pN3")
PNX = "pNX"
NO_RESULT = "no result"
SIZE_CATEGORIES = (CATEGORY_NONE, CATEGORY_ITC, CATEGORY_MICRO, CATEGORY_MACRO)
CAMELYON17_NAME = re.compile(r"^(patient_\d+)_node_\d+$", re.IGNORECASE)
CSV_COLUMNS = (
    "patient", "pn_stage", "nodes", "nodes_with_metastasis", "largest_lesion_mm", "node_categories", "note",
)
# How an unknown node is named in a note
_UNKNOWN_WORDS = {CATEGORY_UNKNOWN: "no mpp", NO_RESULT: "no result"}
# How a stage may be spelt in a reference CSV (lower case, spaces removed) -> the stage
_SPELLINGS = {s.lower(): s for s in (*STAGES, PNX)}


@dataclass(frozen=True, slots=True)
class Node:
    """One lymph-node slide of a patient.

    Attributes:
        slide: the result folder name (or the patients CSV's slide when it has no folder).
        category: a lesion category of :mod:`engine.infer.lesions`, or :data:`NO_RESULT`.
        largest_mm: the slide's largest lesion diameter (mm), when known.
        reason: why the slide has no result (with :data:`NO_RESULT`).
    """

    slide: str
    category: str
    largest_mm: float | None = None
    reason: str = ""

    @property
    def text(self) -> str:
        """``slideA: micrometastasis`` (``slideB: no result (why)``)."""
        return f"{self.slide}: {self.category}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True, slots=True)
class PatientStage:
    """The pN category of one patient and how it came about."""

    patient: str
    stage: str
    nodes: tuple[Node, ...]
    nodes_with_metastasis: int
    note: str = ""

    @property
    def largest_lesion_mm(self) -> float | None:
        sizes = [n.largest_mm for n in self.nodes if n.largest_mm is not None]
        return max(sizes) if sizes else None

    @property
    def node_categories(self) -> str:
        return "; ".join(n.text for n in self.nodes)

    def row(self) -> dict[str, Any]:
        """The patient's row of the CSV (:data:`CSV_COLUMNS`)."""
        largest = self.largest_lesion_mm
        return {
            "patient": self.patient,
            "pn_stage": self.stage,
            "nodes": len(self.nodes),
            "nodes_with_metastasis": self.nodes_with_metastasis,
            "largest_lesion_mm": "" if largest is None else f"{largest:.3f}",
            "node_categories": self.node_categories,
            "note": self.note,
        }

    def line(self) -> str:
        """One line for a terminal: ``patient_012: pN1 (2 of 5 nodes with metastasis, largest lesion 3.10 mm)``."""
        largest = self.largest_lesion_mm
        size = "" if largest is None else f", largest lesion {largest:.2f} mm"
        counts = f"{self.nodes_with_metastasis} of {len(self.nodes)} nodes with metastasis"
        text = f"{self.patient}: {self.stage} ({counts}{size})"
        return text + (f"; {self.note}" if self.note else "")


@dataclass(frozen=True, slots=True)
class Staging:
    """The patients of a heatmap folder, and what was left out (one line each)."""

    patients: tuple[PatientStage, ...]
    notes: tuple[str, ...] = ()


# -- the rule -----------------------------------------------------------------------------------


def stage_of(categories: Iterable[str], slides: Sequence[str] | None = None) -> tuple[str, int, str]:
    """The pN category of one patient's node categories (one per slide).

    Args:
        categories: each node's slide category (:mod:`engine.infer.lesions`); anything else
            (``unknown (no mpp)``, :data:`NO_RESULT`) is an unknown node.
        slides: each node's slide name, in the same order: the note then names the unknown ones.

    Returns:
        ``(stage, nodes with metastasis, note)``; the note says why a stage is pNX or that the
        count is a lower bound.
    """
    cats = list(categories)
    if not cats:
        return PNX, 0, "no nodes"
    macro = sum(c == CATEGORY_MACRO for c in cats)
    micro = sum(c == CATEGORY_MICRO for c in cats)
    itc = sum(c == CATEGORY_ITC for c in cats)
    unknown = [c for c in cats if c not in SIZE_CATEGORIES]
    metastatic = macro + micro  # ITC nodes do not count
    why = ""
    if unknown:
        kinds = sorted({_UNKNOWN_WORDS.get(c, c) for c in unknown})
        words = [_UNKNOWN_WORDS.get(c, c) for c in unknown]
        detail = kinds[0] if len(kinds) == 1 else ", ".join(f"{words.count(k)} {k}" for k in kinds)
        why = f"{len(unknown)} node{'s' if len(unknown) > 1 else ''} unknown ({detail})"
        if slides is not None:  # "1 node unknown (no mpp): slideB"
            why += ": " + ", ".join(n for n, c in zip(slides, cats, strict=True) if c not in SIZE_CATEGORIES)
    if macro:
        stage = "pN1" if metastatic <= 3 else "pN2" if metastatic <= 9 else "pN3"
        note = f"{why}; the count of nodes with metastasis is a lower bound" if why else ""
        return stage, metastatic, note
    if unknown:
        return PNX, metastatic, why
    if micro:
        return "pN1mi", metastatic, ""
    return ("pN0(i+)" if itc else "pN0"), 0, ""


def stage_patient(patient: str, nodes: Sequence[Node]) -> PatientStage:
    nodes = tuple(sorted(nodes, key=lambda n: natural_key(n.slide)))
    stage, metastatic, note = stage_of([n.category for n in nodes], [n.slide for n in nodes])
    return PatientStage(patient, stage, nodes, metastatic, note)


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key putting ``patient_2`` before ``patient_10``."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text))


# -- reading a heatmap folder -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlideFolder:
    """One sub-folder of a heatmap folder: its node, and the names a patients CSV may use for it."""

    node: Node
    slide_file: str = ""  # the slide's file name (heatmap.json ``slide.path``)
    slide_stem: str = ""


@dataclass(frozen=True, slots=True)
class HeatmapFolder:
    path: Path
    slides: tuple[SlideFolder, ...]
    notes: tuple[str, ...] = field(default=())


def read_heatmap_folder(path: str | os.PathLike[str]) -> HeatmapFolder:
    """Every ``*/heatmap.json`` of a ``metascope heatmap --out`` folder.

    A sub-folder without ``heatmap.json`` (or with one that cannot be read or has no lesion
    category) becomes a node with :data:`NO_RESULT` and a note; hidden folders (an unfinished
    write) are passed over.

    Raises:
        DatasetError: the folder is missing or holds no slide result at all.
    """
    from engine.fileio import recover_dir

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"heatmap folder {path} not found")
    for old in root.glob(".*.old"):  # a replacement cut short by a crash: the previous result comes back
        recover_dir(root / old.name[1:-4])
    slides, notes = [], []
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for sub in sorted(subs, key=lambda p: natural_key(p.name)):
        folder = _read_slide_folder(sub)
        slides.append(folder)
        if folder.node.category == NO_RESULT:
            notes.append(f"{sub.name}: {folder.node.reason}")
    if not slides:
        raise DatasetError(f"{path} holds no slide results (folders with heatmap.json from `metascope heatmap --out`)")
    if all(s.node.category == NO_RESULT for s in slides):
        raise DatasetError(f"{path}: no sub-folder holds a readable heatmap.json (not a `heatmap --out` folder?)")
    return HeatmapFolder(root, tuple(slides), tuple(notes))


def _read_slide_folder(sub: Path) -> SlideFolder:
    meta_path = sub / "heatmap.json"
    if not meta_path.is_file():
        return SlideFolder(Node(sub.name, NO_RESULT, reason="no heatmap.json: the slide failed or is unfinished"))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return SlideFolder(Node(sub.name, NO_RESULT, reason=f"heatmap.json unreadable ({exc})"))
    if not isinstance(meta, dict):
        return SlideFolder(Node(sub.name, NO_RESULT, reason="heatmap.json is not a heatmap description"))
    slide = meta.get("slide") if isinstance(meta.get("slide"), dict) else {}
    file = Path(str(slide.get("path") or "")).name
    stem = str(slide.get("name") or Path(file).stem)
    lesions = meta.get("lesions") if isinstance(meta.get("lesions"), dict) else {}
    category = meta.get("category") or lesions.get("category")
    if category not in (*SIZE_CATEGORIES, CATEGORY_UNKNOWN):
        why = "heatmap.json has no lesion category (made by an older MetaScope: compute the heatmap again)"
        if category:
            why = f"heatmap.json has an unknown category {category!r}"
        return SlideFolder(Node(sub.name, NO_RESULT, reason=why), file, stem)
    largest = lesions.get("largest_diameter_mm")
    try:
        largest_mm = None if largest is None else float(largest)
    except (TypeError, ValueError):
        largest_mm = None
    if largest_mm is not None and not math.isfinite(largest_mm):
        largest_mm = None
    return SlideFolder(Node(sub.name, str(category), largest_mm), file, stem)


# -- patients -----------------------------------------------------------------------------------


def stage_patients(heatmaps: str | os.PathLike[str], patients_csv: str | os.PathLike[str] | None = None) -> Staging:
    """The pN category of every patient in a heatmap folder.

    Args:
        heatmaps: the ``metascope heatmap --out`` folder.
        patients_csv: a CSV with columns ``slide,patient`` (a slide by its result folder name, file
            name or file stem); without it, folder names must follow CAMELYON17
            (``patient_012_node_3`` -> ``patient_012``).

    Raises:
        DatasetError: unreadable folder or CSV, names that do not follow CAMELYON17 without a
            CSV, a CSV patient none of whose slides has a result folder.
    """
    folder = read_heatmap_folder(heatmaps)
    if patients_csv is None:
        groups, notes = _group_camelyon17(folder), []
    else:
        groups, notes = _group_csv(folder, read_patients_csv(patients_csv))
    patients = tuple(stage_patient(p, nodes) for p, nodes in sorted(groups.items(), key=lambda kv: natural_key(kv[0])))
    return Staging(patients, (*folder.notes, *notes))


def _group_camelyon17(folder: HeatmapFolder) -> dict[str, list[Node]]:
    groups: dict[str, list[Node]] = {}
    bad = []
    for s in folder.slides:
        m = CAMELYON17_NAME.match(s.node.slide) or CAMELYON17_NAME.match(s.slide_stem)
        if m is None:
            bad.append(s.node.slide)
            continue
        groups.setdefault(m.group(1).lower(), []).append(s.node)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DatasetError(
            f"slide names {shown} do not follow CAMELYON17's patient_NNN_node_N; give a patients CSV "
            "(columns slide,patient) to say which slides belong to which patient"
        )
    return groups


def read_patients_csv(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(slide, patient)`` rows of a CSV with columns ``slide`` and ``patient`` (any order, more allowed).

    Raises:
        DatasetError: missing file or columns, an empty cell, a slide given to two patients.
    """
    rows = _read_csv(path, ("slide", "patient"), "patients CSV")
    out, seen = [], {}
    for line, row in rows:
        slide, patient = row["slide"], row["patient"]
        if not patient:
            raise DatasetError(f"{path} line {line}: slide {slide!r} has no patient")
        if not slide:
            raise DatasetError(f"{path} line {line}: patient {patient!r} has no slide")
        if slide in seen:
            if seen[slide] != patient:
                raise DatasetError(f"{path} line {line}: {slide!r} given to patients {seen[slide]!r} and {patient!r}")
            continue  # the same row twice
        seen[slide] = patient
        out.append((slide, patient))
    if not out:
        raise DatasetError(f"{path}: the patients CSV has no rows")
    return out


def _read_csv(path: str | os.PathLike[str], columns: Sequence[str], what: str) -> list[tuple[int, dict[str, str]]]:
    """The rows (with their line numbers) of a CSV that must have ``columns`` (header case-insensitive)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the {what} {path} ({exc})") from exc
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DatasetError(
            f"{what} {path} needs the columns {', '.join(columns)} (missing {', '.join(missing)}; it has "
            f"{', '.join(h for h in header if h) or 'no header'})"
        )
    idx = {c: header.index(c) for c in columns}
    rows = []
    for i, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        rows.append((i, {c: (cells[j].strip() if j < len(cells) else "") for c, j in idx.items()}))
    return rows


def _group_csv(folder: HeatmapFolder, rows: list[tuple[str, str]]) -> tuple[dict[str, list[Node]], list[str]]:
    groups: dict[str, list[Node]] = {}
    found: dict[str, int] = {}  # patient -> slides with a result folder
    used: set[str] = set()
    index = _index_slides(folder)
    for slide, patient in rows:
        match = _match_slide(folder, index, slide)
        found.setdefault(patient, 0)
        if match is None:
            node = Node(slide, NO_RESULT, reason=f"no result folder in {folder.path.name}")
        else:
            if match.node.slide in used:
                raise DatasetError(f"patients CSV: two slides match the result folder {match.node.slide}")
            used.add(match.node.slide)
            found[patient] += 1
            node = match.node
        groups.setdefault(patient, []).append(node)
    if found and not any(found.values()):  # not one slide of the CSV: the wrong folder or CSV
        shown = ", ".join(slide for slide, _ in rows[:3])
        raise DatasetError(f"no slide of the patients CSV has a result in {folder.path} (no {shown})")
    # a patient none of whose slides has a result stays in the table as pNX (its nodes: no result)
    notes = [
        f"{s.node.slide}: not in the patients CSV, left out"
        for s in folder.slides
        if s.node.slide not in used and s.node.category != NO_RESULT
    ]
    return groups, notes


def _index_slides(folder: HeatmapFolder) -> tuple[dict[str, list[int]], ...]:
    """The positions of ``folder.slides`` by folder name, by slide file name and by slide stem
    (built once, so matching a CSV row does not scan every folder)."""
    by_name: dict[str, list[int]] = {}
    by_file: dict[str, list[int]] = {}
    by_stem: dict[str, list[int]] = {}
    for i, s in enumerate(folder.slides):
        by_name.setdefault(s.node.slide, []).append(i)
        if s.slide_file:
            by_file.setdefault(s.slide_file, []).append(i)
        if s.slide_stem:
            by_stem.setdefault(s.slide_stem, []).append(i)
    return by_name, by_file, by_stem


def _match_slide(folder: HeatmapFolder, index: tuple[dict[str, list[int]], ...], slide: str) -> SlideFolder | None:
    """The result folder of a CSV ``slide``: by folder name, else slide file name, else stem."""
    from engine.infer.outputs import safe_name

    by_name, by_file, by_stem = index
    p = Path(slide.replace("\\", "/"))
    levels = (
        by_name.get(slide, []) + by_name.get(p.name, []),
        by_file.get(p.name, []),
        by_name.get(safe_name(p.stem), []) + by_stem.get(p.stem, []),
    )
    for hits in levels:
        found = [folder.slides[i] for i in sorted(set(hits))]  # in folder order, each once
        if len(found) > 1:
            names = ", ".join(s.node.slide for s in found)
            raise DatasetError(f"patients CSV: slide {slide!r} matches several result folders ({names})")
        if found:
            return found[0]
    return None


# -- reference and agreement --------------------------------------------------------------------


def parse_stage(text: str) -> str:
    """A stage as spelt in a reference (``pN0(i+)``, ``pn1mi``, ``pN0 (i+)``...) -> its :data:`STAGES` name.

    Raises:
        ConfigError: not a pN stage.
    """
    key = re.sub(r"\s+", "", text).lower()
    if key not in _SPELLINGS:
        raise ConfigError(f"unknown pN stage {text!r} (use {', '.join((*STAGES, PNX))})")
    return _SPELLINGS[key]


def read_reference(path: str | os.PathLike[str]) -> dict[str, str]:
    """``patient -> stage`` from a CSV with columns ``patient,stage``.

    CAMELYON17's ``stage_labels.csv`` reads as it is: ``patient_000.zip`` is patient_000, and its
    per-node rows (``patient_000_node_0.tif,negative``) are passed over.

    Raises:
        DatasetError: missing file or columns, an unknown stage spelling, a patient given twice.
    """
    out: dict[str, str] = {}
    for line, row in _read_csv(path, ("patient", "stage"), "reference CSV"):
        name = row["patient"]
        if Path(name).suffix.lower() in (".tif", ".tiff", ".svs", ".ndpi", ".mrxs"):
            continue  # a node row of CAMELYON17's labels
        patient = name[:-4] if name.lower().endswith(".zip") else name
        try:
            stage = parse_stage(row["stage"])
        except ConfigError as exc:
            raise DatasetError(f"{path} line {line}: {exc}") from None
        if patient in out and out[patient] != stage:
            raise DatasetError(f"{path} line {line}: patient {patient} has two stages ({out[patient]}, {stage})")
        out[patient] = stage
    if not out:
        raise DatasetError(f"{path}: the reference CSV has no patient rows")
    return out


@dataclass(frozen=True, slots=True)
class Agreement:
    """Predicted vs reference stages.

    Attributes:
        kappa: quadratic weighted Cohen's kappa (``None`` when undefined: no patient, or every
            patient in one stage on both sides).
        compared: patients compared (known stage on both sides).
        left_out_pnx: patients left out because a side is pNX.
        missing: reference patients with no result; unreferenced: results with no reference.
        confusion: ``confusion[i][j]``: reference :data:`STAGES` ``i`` predicted as ``j``.
    """

    kappa: float | None
    compared: int
    left_out_pnx: int
    missing: tuple[str, ...]
    unreferenced: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]

    def lines(self) -> list[str]:
        k = "undefined (one stage only)" if self.compared else "undefined"
        if self.kappa is not None:
            k = f"{self.kappa:.3f}"
        head = f"quadratic weighted kappa {k} over {self.compared} patients ({self.left_out_pnx} pNX left out"
        if self.missing:
            head += f", {len(self.missing)} reference patient(s) without slides"
        if self.unreferenced:
            head += f", {len(self.unreferenced)} patient(s) not in the reference"
        out = [head + ")", "confusion (rows: reference, columns: predicted):"]
        width = max(len(s) for s in STAGES) + 1
        out.append(" " * width + "".join(f"{s:>{width}}" for s in STAGES))
        for s, row in zip(STAGES, self.confusion, strict=True):
            out.append(f"{s:<{width}}" + "".join(f"{v:>{width}}" for v in row))
        return out


def agreement(patients: Sequence[PatientStage], reference: dict[str, str]) -> Agreement:
    """Quadratic weighted kappa and confusion of ``patients`` against ``reference``.

    Raises:
        DatasetError: no patient of the reference is among ``patients``.
    """
    predicted = {p.patient: p.stage for p in patients}
    lower = {k.lower(): k for k in predicted}
    pairs, pnx, missing = [], 0, []
    for patient, ref in sorted(reference.items(), key=lambda kv: natural_key(kv[0])):
        key = patient if patient in predicted else lower.get(patient.lower())
        if key is None:
            missing.append(patient)
            continue
        if PNX in (ref, predicted[key]):
            pnx += 1
            continue
        pairs.append((ref, predicted[key]))
    found = {lower.get(p.lower(), p) for p in reference}
    unreferenced = tuple(p.patient for p in patients if p.patient not in found)
    if len(missing) == len(reference):
        raise DatasetError("no patient of the reference CSV is in the heatmap folder (patient names differ?)")
    confusion = [[0] * len(STAGES) for _ in STAGES]
    for ref, pred in pairs:
        confusion[STAGES.index(ref)][STAGES.index(pred)] += 1
    return Agreement(
        _kappa(pairs), len(pairs), pnx, tuple(missing), unreferenced, tuple(tuple(r) for r in confusion)
    )


def _kappa(pairs: list[tuple[str, str]]) -> float | None:
    if not pairs:
        return None
    if len({s for pair in pairs for s in pair}) == 1:
        return None  # one stage on both sides: chance agreement is total, kappa is 0/0
    import warnings

    from sklearn.metrics import cohen_kappa_score

    ref, pred = zip(*pairs, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        k = float(cohen_kappa_score(list(ref), list(pred), labels=list(STAGES), weights="quadratic"))
    return k if math.isfinite(k) else None


# -- output -------------------------------------------------------------------------------------


def stages_csv(patients: Sequence[PatientStage], reference: dict[str, str] | None = None) -> str:
    """The CSV text: one row per patient (:data:`CSV_COLUMNS`, plus ``reference_stage`` with a reference)."""
    columns = list(CSV_COLUMNS) + (["reference_stage"] if reference is not None else [])
    lower = {k.lower(): v for k, v in (reference or {}).items()}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for p in patients:
        row = p.row()
        if reference is not None:
            row["reference_stage"] = reference.get(p.patient, lower.get(p.patient.lower(), ""))
        w.writerow(row)
    return buf.getvalue()


def write_stages_csv(
    path: str | os.PathLike[str], patients: Sequence[PatientStage], reference: dict[str, str] | None = None
) -> Path:
    """Write :func:`stages_csv` atomically.

    Raises:
        OutputError: the file cannot be written.
    """
    from engine.errors import OutputError
    from engine.fileio import atomic_write_text

    p = Path(path).expanduser()
    try:
        atomic_write_text(p, stages_csv(patients, reference))
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc.strerror or exc}") from exc
    return p
