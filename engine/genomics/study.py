"""Reading a cBioPortal study: a datahub folder or the tables downloaded from the web site.

Datahub layout: ``data_clinical_sample.txt`` / ``data_clinical_patient.txt`` (four ``#`` header
lines, then the attribute names such as ``SAMPLE_TYPE``), ``data_mutations*.txt`` (MAF),
optional ``data_gene_panel_matrix.txt``, gene-panel files (``gene_panels/*.txt`` or
``data_gene_panel_*.txt`` with ``stable_id:`` and ``gene_list:`` lines), ``data_cna.txt``,
``data_sv.txt`` and ``meta_*.txt``.

Web layout: a clinical table with display-name headers (``Sample ID``, ``Patient ID``,
``Sample Type``, ``Cancer Type Detailed``, ``TMB (nonsynonymous)``, ...) and a mutations table
(``Hugo Symbol`` or ``Gene``, ``Sample ID``, ``Start Pos``, ``Ref``, ``Var``, ...), any file names.

Both are mapped to the datahub names, so the rest of the engine sees one :class:`Study`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DatasetError

# display names (web download, first datahub header line) whose upper-snake form is not the datahub name
CLINICAL_ALIASES = {
    "SAMPLE_IDENTIFIER": "SAMPLE_ID",
    "PATIENT_IDENTIFIER": "PATIENT_ID",
    "OVERALL_SURVIVAL_MONTHS": "OS_MONTHS",
    "OVERALL_SURVIVAL_STATUS": "OS_STATUS",
    "DISEASE_FREE_MONTHS": "DFS_MONTHS",
    "DISEASE_FREE_STATUS": "DFS_STATUS",
    "PROGRESS_FREE_SURVIVAL_MONTHS": "PFS_MONTHS",
    "PROGRESSION_FREE_STATUS": "PFS_STATUS",
    "PATIENT_S_VITAL_STATUS": "VITAL_STATUS",
    "PRIMARY_TUMOR_SITE": "PRIMARY_SITE",
    "DIAGNOSIS_AGE": "AGE",
    "SAMPLE_COVERAGE": "SAMPLE_COVERAGE",
}

# mutation-table display names -> MAF column names
MAF_ALIASES = {
    "HUGO_SYMBOL": "Hugo_Symbol",
    "GENE": "Hugo_Symbol",
    "SAMPLE_ID": "Tumor_Sample_Barcode",
    "TUMOR_SAMPLE_BARCODE": "Tumor_Sample_Barcode",
    "CHROMOSOME": "Chromosome",
    "CHR": "Chromosome",
    "START_POS": "Start_Position",
    "START_POSITION": "Start_Position",
    "END_POS": "End_Position",
    "END_POSITION": "End_Position",
    "REF": "Reference_Allele",
    "REFERENCE_ALLELE": "Reference_Allele",
    "VAR": "Tumor_Seq_Allele2",
    "TUMOR_SEQ_ALLELE2": "Tumor_Seq_Allele2",
    "ALT": "Tumor_Seq_Allele2",
    "VARIANT_READS": "t_alt_count",
    "VAR_READS": "t_alt_count",
    "T_ALT_COUNT": "t_alt_count",
    "REF_READS": "t_ref_count",
    "T_REF_COUNT": "t_ref_count",
    "T_DEPTH": "t_depth",
    "TOTAL_DEPTH": "t_depth",
    "ALLELE_FREQ_T": "VAF",
    "ALLELE_FREQ": "VAF",
    "VAF": "VAF",
    "MUTATION_TYPE": "Variant_Classification",
    "VARIANT_CLASSIFICATION": "Variant_Classification",
    "VARIANT_TYPE": "Variant_Type",
    "PROTEIN_CHANGE": "HGVSp_Short",
    "HGVSP_SHORT": "HGVSp_Short",
    "PROTEIN_POSITION": "Protein_position",
    "CODONS": "Codons",
}
MAF_REQUIRED = ("Hugo_Symbol", "Tumor_Sample_Barcode")


def display_to_name(header: str) -> str:
    """``"TMB (nonsynonymous)"`` -> ``TMB_NONSYNONYMOUS``; ``"Sample Identifier"`` -> ``SAMPLE_ID``."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", header.strip()).strip("_").upper()
    return CLINICAL_ALIASES.get(s, s)


def maf_column(header: str) -> str:
    """A mutation-table header mapped to its MAF name (unknown ones kept as they are)."""
    key = re.sub(r"[^0-9A-Za-z]+", "_", header.strip()).strip("_").upper()
    return MAF_ALIASES.get(key, header.strip())


@dataclass
class Study:
    """One study, in datahub names.

    Attributes:
        path: the folder (or file) read.
        layout: ``"datahub"`` or ``"web"``.
        samples: one row per sample, indexed by ``SAMPLE_ID``; ``PATIENT_ID`` and every clinical
            sample and patient attribute as strings (empty = missing).
        mutations: the MAF rows with normalised column names (``None`` when the study has none).
        panel_of: sample -> gene panel for mutations (matrix, else ``GENE_PANEL``; may be empty).
        panel_genes: panel -> genes it covers (from panel files; empty when none are present).
        files: the files read.
        notes: what was noticed while reading.
        meta: ``meta_study.txt`` fields.
    """

    path: Path
    layout: str
    samples: pd.DataFrame
    mutations: pd.DataFrame | None
    panel_of: dict[str, str] = field(default_factory=dict)
    panel_genes: dict[str, set[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    extra_tables: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.get("cancer_study_identifier") or self.path.name

    @property
    def n_samples(self) -> int:
        return int(len(self.samples))

    @property
    def n_patients(self) -> int:
        return int(self.samples["PATIENT_ID"].nunique())


# -- low-level readers ----------------------------------------------------------------------------


def _read_lines(path: Path, n: int = 8) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [fh.readline().rstrip("\r\n") for _ in range(n)]
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_tsv(path: Path, skiprows: int = 0) -> pd.DataFrame:
    try:
        df = pd.read_csv(
            path, sep="\t", skiprows=skiprows, dtype=str, keep_default_na=False, na_filter=False,
            quoting=3, low_memory=False, comment=None,
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"cannot read {path.name} as a tab-separated table: {str(exc).splitlines()[0]}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    return df


def read_clinical(path: Path) -> pd.DataFrame:
    """A clinical table in datahub names, datahub (``#`` header lines) or web (display names)."""
    lines = _read_lines(path)
    n_hash = 0
    while n_hash < len(lines) and lines[n_hash].startswith("#"):
        n_hash += 1
    df = _read_tsv(path, skiprows=n_hash)
    if n_hash == 0:
        df.columns = [display_to_name(c) for c in df.columns]
    df = df.apply(lambda s: s.str.strip())
    for missing in ("NA", "[Not Available]", "[Not Applicable]", "N/A", "#N/A", "nan", "NaN", "[Unknown]", "Unknown"):
        df = df.replace(missing, "")
    return df


def read_mutations(path: Path) -> pd.DataFrame:
    """A MAF (datahub) or a web mutations table, with MAF column names."""
    lines = _read_lines(path, 40)
    skip = 0
    while skip < len(lines) and lines[skip].startswith("#"):
        skip += 1
    df = _read_tsv(path, skiprows=skip)
    df.columns = [maf_column(c) for c in df.columns]
    df = df.loc[:, ~df.columns.duplicated()]
    missing = [c for c in MAF_REQUIRED if c not in df.columns]
    if missing:
        raise DatasetError(f"{path.name} is not a mutations table: no {' / '.join(missing)} column")
    for col in ("Start_Position", "End_Position", "t_ref_count", "t_alt_count", "t_depth", "VAF"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    df["Hugo_Symbol"] = df["Hugo_Symbol"].str.strip()
    df["Tumor_Sample_Barcode"] = df["Tumor_Sample_Barcode"].str.strip()
    return df


def read_meta(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def read_panel_genes(path: Path) -> tuple[str, set[str]] | None:
    """``(panel id, genes)`` of a cBioPortal gene-panel file, or None when it is not one."""
    meta = read_meta(path)
    if "stable_id" not in meta or "gene_list" not in meta:
        return None
    genes = {g for g in re.split(r"[\s,]+", meta["gene_list"]) if g}
    return meta["stable_id"], genes


# -- the study ------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """``clinical``, ``mutations``, ``panel_matrix`` or ``""`` from a table's header."""
    lines = [ln for ln in _read_lines(path, 40) if ln and not ln.startswith("#")]
    if not lines:
        return ""
    header = {re.sub(r"[^0-9A-Za-z]+", "_", h).strip("_").upper() for h in lines[0].split("\t")}
    if ("HUGO_SYMBOL" in header or "GENE" in header) and header & {"TUMOR_SAMPLE_BARCODE", "SAMPLE_ID"}:
        return "mutations"
    if "SAMPLE_ID" in header and "MUTATIONS" in header:
        return "panel_matrix"
    if header & {"SAMPLE_ID", "SAMPLE_IDENTIFIER"} and header & {"PATIENT_ID", "PATIENT_IDENTIFIER"}:
        return "clinical"
    return ""


def _find_files(folder: Path) -> dict[str, Any]:
    found: dict[str, Any] = {"sample": None, "patient": None, "clinical": [], "mutations": [], "matrix": None,
                             "panels": [], "meta": [], "other": []}
    names = sorted(p for p in folder.iterdir() if p.is_file())
    for p in names:
        n = p.name
        if n == "data_clinical_sample.txt":
            found["sample"] = p
        elif n == "data_clinical_patient.txt":
            found["patient"] = p
        elif n.startswith("data_mutations") and n.endswith((".txt", ".maf", ".tsv")):
            found["mutations"].append(p)
        elif n == "data_gene_panel_matrix.txt":
            found["matrix"] = p
        elif n.startswith("meta_") and n.endswith(".txt"):
            found["meta"].append(p)
        elif n.startswith("data_gene_panel_") and n.endswith(".txt"):
            found["panels"].append(p)
        elif n in ("data_cna.txt", "data_sv.txt"):
            found["other"].append(p)
    for sub in ("gene_panels", "gene-panels"):
        if (folder / sub).is_dir():
            found["panels"] += sorted(p for p in (folder / sub).iterdir() if p.suffix == ".txt")
    if found["sample"] is None:  # web layout: sniff every table
        for p in names:
            if p.suffix.lower() not in (".txt", ".tsv", ".maf") or p.name.startswith("meta_"):
                continue
            kind = _sniff(p)
            if kind == "clinical":
                found["clinical"].append(p)
            elif kind == "mutations":
                found["mutations"].append(p)
            elif kind == "panel_matrix" and found["matrix"] is None:
                found["matrix"] = p
    return found


def _merge_patient(samples: pd.DataFrame, patient: pd.DataFrame, name: str) -> pd.DataFrame:
    if "PATIENT_ID" not in patient.columns:
        raise DatasetError(f"{name} has no PATIENT_ID column")
    extra = [c for c in patient.columns if c not in samples.columns or c == "PATIENT_ID"]
    return samples.merge(patient[extra].drop_duplicates("PATIENT_ID"), on="PATIENT_ID", how="left").fillna("")


def load_study(path: str | os.PathLike[str]) -> Study:
    """Read a study folder (datahub or web download).

    Raises:
        DatasetError: no folder, no clinical sample table, missing SAMPLE_ID / PATIENT_ID columns,
            duplicated samples, or mutations of samples the clinical table does not list.
    """
    folder = Path(path)
    if not folder.exists():
        raise DatasetError(f"study folder not found: {folder}")
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder (give the study folder holding its data files)")
    f = _find_files(folder)
    files: list[str] = []
    notes: list[str] = []
    if f["sample"] is not None:
        layout = "datahub"
        samples = read_clinical(f["sample"])
        files.append(f["sample"].name)
        if f["patient"] is not None:
            _require_ids(samples, f["sample"].name)
            samples = _merge_patient(samples, read_clinical(f["patient"]), f["patient"].name)
            files.append(f["patient"].name)
    elif f["clinical"]:
        layout = "web"
        tables = [read_clinical(p) for p in f["clinical"]]
        files += [p.name for p in f["clinical"]]
        samples = next((t for t in tables if "SAMPLE_ID" in t.columns), tables[0])
        _require_ids(samples, f["clinical"][0].name)
        for t in tables:
            if t is samples:
                continue
            samples = (samples.merge(t[[c for c in t.columns if c not in samples.columns or c == "SAMPLE_ID"]],
                                     on="SAMPLE_ID", how="left").fillna("")
                       if "SAMPLE_ID" in t.columns else _merge_patient(samples, t, "patient table"))
    else:
        raise DatasetError(
            f"{folder} holds no clinical sample table (data_clinical_sample.txt, or a downloaded table with "
            "'Sample ID' and 'Patient ID' columns)"
        )
    samples = _check_ids(samples, files[0])
    if "STUDY_ID" in samples.columns:
        samples = samples.drop(columns=["STUDY_ID"])
    mutations = None
    if f["mutations"]:
        mutations = pd.concat([read_mutations(p) for p in f["mutations"]], ignore_index=True)
        files += [p.name for p in f["mutations"]]
        unknown = sorted(set(mutations["Tumor_Sample_Barcode"]) - set(samples.index))
        if unknown:
            raise DatasetError(
                f"the mutations table names {len(unknown)} sample(s) that the clinical table does not list "
                f"(e.g. {', '.join(unknown[:3])})"
            )
    else:
        notes.append("no mutations (MAF) table: mutation features cannot be computed")
    study = Study(folder, layout, samples, mutations, files=files, notes=notes)
    _read_panels(study, f)
    for p in f["meta"]:
        if p.name == "meta_study.txt":
            study.meta = read_meta(p)
    for p in f["other"]:
        study.extra_tables[p.name] = "present (not used as features)"
    return study


def _require_ids(samples: pd.DataFrame, name: str) -> None:
    for col in ("SAMPLE_ID", "PATIENT_ID"):
        if col not in samples.columns:
            raise DatasetError(f"{name} has no {col} column (columns: {', '.join(list(samples.columns)[:8])}...)")


def _check_ids(samples: pd.DataFrame, name: str) -> pd.DataFrame:
    _require_ids(samples, name)
    samples = samples[samples["SAMPLE_ID"] != ""]
    dup = samples["SAMPLE_ID"].duplicated()
    if dup.any():
        raise DatasetError(f"{name} lists sample {samples['SAMPLE_ID'][dup].iloc[0]} more than once")
    if samples.empty:
        raise DatasetError(f"{name} lists no samples")
    return samples.set_index("SAMPLE_ID", drop=True)


def _read_panels(study: Study, f: dict[str, Any]) -> None:
    if f["matrix"] is not None:
        m = _read_tsv(f["matrix"])
        sid = next((c for c in m.columns if display_to_name(c) == "SAMPLE_ID"), None)
        mut = next((c for c in m.columns if c.lower() == "mutations"), None)
        if sid and mut:
            study.panel_of = {s: p for s, p in zip(m[sid], m[mut], strict=True) if p and p not in ("NA", "#N/A")}
            study.files.append(f["matrix"].name)
    if not study.panel_of and "GENE_PANEL" in study.samples.columns:
        study.panel_of = {s: p for s, p in study.samples["GENE_PANEL"].items() if p}
    for p in f["panels"]:
        got = read_panel_genes(p)
        if got:
            study.panel_genes[got[0]] = got[1]
            study.files.append(p.name)


def numeric(series: pd.Series) -> np.ndarray:
    """float64 values of a string column (empty / non-numeric -> NaN)."""
    return pd.to_numeric(series.replace("", np.nan), errors="coerce").to_numpy(dtype=np.float64)


def is_numeric_column(series: pd.Series, min_share: float = 0.95) -> bool:
    """Whether (almost) all non-empty values of a string column parse as numbers."""
    s = series[series != ""]
    if s.empty:
        return False
    return float(pd.to_numeric(s, errors="coerce").notna().mean()) >= min_share
