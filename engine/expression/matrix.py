"""Read an expression matrix (+ an optional sample table) into one :class:`ExpressionMatrix`.

Handles what real matrices look like: TSV / CSV / other delimiters (sniffed, also ``.gz``),
samples x genes or genes x samples (detected from the sample table, sample/gene id patterns or
the shape; the user can force it), gene ids as symbols, Ensembl ids (version suffix stripped),
``SYMBOL|ENTREZ`` pairs or miRNA names, raw counts or linear values (log2(x+1) applied) vs values
already on a log scale, missing values (genes / samples with too many dropped, the rest filled
with the gene mean) and duplicated genes (averaged). Everything done is listed in ``report``.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DatasetError
from engine.fileio import atomic_path

ORIENTATIONS = ("auto", "samples_x_genes", "genes_x_samples")
LOG_MODES = ("auto", "yes", "no")
MAX_MISSING_GENE = 0.2  # genes missing in more than this fraction of samples are dropped
MAX_MISSING_SAMPLE = 0.5  # samples missing more than this fraction of genes are dropped

_ENSEMBL = re.compile(r"^(ENS[A-Z]*[GTP]\d{6,})(\.\d+)?(_PAR_Y)?$", re.IGNORECASE)
_MIRNA = re.compile(r"^([a-z]{3}-)?(mir|let|miR|MIR)-?\d", re.IGNORECASE)
_ENTREZ = re.compile(r"^\d+$")
_SYMBOL = re.compile(r"^[A-Za-z][A-Za-z0-9\-\.]{0,19}$")
_SAMPLE = re.compile(
    r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}|GSM\d+|SRR\d+|ERR\d+|TARGET-|CPTAC|[A-Z]{2,}-\d+-\d+)", re.IGNORECASE
)


@dataclass
class ExpressionMatrix:
    """Samples x genes values (float32, log scale) with their ids and sample annotations."""

    values: np.ndarray
    samples: list[str]
    genes: list[str]
    sample_table: pd.DataFrame | None = None
    report: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.values.shape[0]), int(self.values.shape[1])

    def label_columns(self) -> list[str]:
        return [] if self.sample_table is None else [str(c) for c in self.sample_table.columns]

    def labels(self, column: str) -> np.ndarray:
        """The ``column`` of the sample table as strings aligned to ``samples`` ("" where missing)."""
        if self.sample_table is None:
            raise ConfigError(f"no sample table: cannot read label column '{column}' (give --samples)")
        if column not in self.sample_table.columns:
            avail = ", ".join(self.label_columns()) or "none"
            raise ConfigError(f"label column '{column}' is not in the sample table; available: {avail}")
        col = self.sample_table[column].reindex(self.samples)
        return np.array(["" if pd.isna(v) else str(v) for v in col], dtype=object).astype(str)

    def subset(self, samples=None, genes=None) -> ExpressionMatrix:
        """A copy restricted to ``samples`` / ``genes`` (ids, integer indices or boolean masks)."""
        rows = _indexer(samples, self.samples, "sample")
        cols = _indexer(genes, self.genes, "gene")
        values = self.values[rows][:, cols]
        new_samples = [self.samples[i] for i in rows]
        new_genes = [self.genes[i] for i in cols]
        table = None if self.sample_table is None else self.sample_table.reindex(new_samples)
        return ExpressionMatrix(np.ascontiguousarray(values, dtype=np.float32), new_samples, new_genes, table,
                                dict(self.report))


def _indexer(sel, ids: list[str], what: str) -> np.ndarray:
    if sel is None:
        return np.arange(len(ids))
    arr = np.asarray(sel)
    if arr.dtype == bool:
        if arr.shape[0] != len(ids):
            raise ConfigError(f"{what} mask has {arr.shape[0]} entries, expected {len(ids)}")
        return np.flatnonzero(arr)
    if arr.size and np.issubdtype(arr.dtype, np.integer):
        return arr.astype(int)
    pos = {s: i for i, s in enumerate(ids)}
    missing = [str(s) for s in arr if str(s) not in pos]
    if missing:
        raise ConfigError(f"{len(missing)} {what}(s) not in the matrix, e.g. {missing[0]}")
    return np.array([pos[str(s)] for s in arr], dtype=int)


# ---------------------------------------------------------------------------------------------
# reading


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _sniff_delimiter(path: Path) -> str:
    try:
        with _open_text(path) as fh:
            head = [fh.readline() for _ in range(5)]
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"cannot read {path.name}: {exc}") from exc
    head = [h for h in head if h.strip() and not h.startswith("#")]
    if not head:
        raise DatasetError(f"{path.name} is empty")
    sample = "".join(head)
    try:
        return csv.Sniffer().sniff(sample, delimiters="\t,; |").delimiter
    except csv.Error:
        counts = {d: head[0].count(d) for d in "\t,;|"}
        best = max(counts, key=counts.get)
        return best if counts[best] else r"\s+"


def _read_table(path: Path, what: str, as_text: bool = False) -> pd.DataFrame:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if path.is_dir():
        raise DatasetError(f"{what} is a folder, expected a TSV/CSV file: {path}")
    sep = _sniff_delimiter(path)
    try:
        df = pd.read_csv(path, sep=sep, compression="gzip" if _is_gzip(path) else None,
                         dtype=str if as_text else None,
                         comment=None, engine="python" if len(sep) > 1 else "c", skip_blank_lines=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot parse {what} {path.name}: {str(exc).splitlines()[0]}") from exc
    if df.shape[1] < 2 or df.shape[0] < 1:
        raise DatasetError(f"{what} {path.name} has {df.shape[0]} rows and {df.shape[1]} columns: too small")
    return df


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def clean_gene_id(gene: str) -> str:
    """Strip an Ensembl version suffix, take the symbol of ``SYMBOL|ENTREZ``; keep the rest."""
    g = str(gene).strip().strip('"')
    if "|" in g:
        left, right = g.split("|", 1)
        g = left if left and left != "?" else right
    m = _ENSEMBL.match(g)
    if m:
        return m.group(1).upper() + (m.group(3) or "")
    return g


def gene_id_type(genes: list[str]) -> str:
    """"ensembl", "mirna", "entrez", "symbol" or "other" (the majority of the ids)."""
    if not genes:
        return "other"
    sample = genes[:: max(1, len(genes) // 500)]
    kinds = {"ensembl": _ENSEMBL, "mirna": _MIRNA, "entrez": _ENTREZ, "symbol": _SYMBOL}
    for name, rx in kinds.items():
        if sum(bool(rx.match(g)) for g in sample) >= 0.8 * len(sample):
            return name
    return "other"


def _gene_score(ids: list[str]) -> float:
    """How gene-like a list of ids is (0..1): Ensembl / miRNA / SYMBOL|ENTREZ ids."""
    if not ids:
        return 0.0
    sample = ids[:: max(1, len(ids) // 300)]
    hits = sum(bool(_ENSEMBL.match(clean_gene_id(s)) or _MIRNA.match(s) or "|" in s) for s in sample)
    return hits / len(sample)


def _sample_score(ids: list[str]) -> float:
    if not ids:
        return 0.0
    sample = ids[:: max(1, len(ids) // 300)]
    return sum(bool(_SAMPLE.match(s)) for s in sample) / len(sample)


def _is_numeric_column(col: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(col.dtype):
        return True
    vals = pd.to_numeric(col, errors="coerce")
    present = col.notna() & (col.astype(str).str.strip().str.upper().isin(["", "NA", "NAN", "NULL", "NONE", "."]) == 0)
    if present.sum() == 0:
        return True  # an all-missing column is numeric (handled as missing values)
    return bool(vals[present].notna().mean() >= 0.9)


_GENE_HEADER = re.compile(r"gene|symbol|ensembl|probe|mirna|hugo|feature|transcript|entrez", re.IGNORECASE)
_SAMPLE_HEADER = re.compile(r"sample|barcode|patient|case|specimen|cell|subject", re.IGNORECASE)


def _detect_orientation(row_ids: list[str], col_ids: list[str], table_ids: set[str] | None,
                        corner: str = "") -> tuple[str, str]:
    """("samples_x_genes" | "genes_x_samples", why); ``corner`` is the first header cell."""
    if table_ids:
        rows = sum(r in table_ids for r in row_ids)
        cols = sum(c in table_ids for c in col_ids)
        if rows or cols:
            if rows >= cols:
                return "samples_x_genes", f"{rows} row ids match the sample table"
            return "genes_x_samples", f"{cols} column ids match the sample table"
    gr, gc = _gene_score(row_ids), _gene_score(col_ids)
    if max(gr, gc) >= 0.5 and abs(gr - gc) >= 0.3:
        return ("genes_x_samples", "row ids look like gene ids") if gr > gc else (
            "samples_x_genes", "column ids look like gene ids")
    sr, sc = _sample_score(row_ids), _sample_score(col_ids)
    if max(sr, sc) >= 0.5 and abs(sr - sc) >= 0.3:
        return ("samples_x_genes", "row ids look like sample barcodes") if sr > sc else (
            "genes_x_samples", "column ids look like sample barcodes")
    if _GENE_HEADER.search(corner or ""):
        return "genes_x_samples", f"the id column is named '{corner}'"
    if _SAMPLE_HEADER.search(corner or ""):
        return "samples_x_genes", f"the id column is named '{corner}'"
    if len(row_ids) > len(col_ids):
        return "genes_x_samples", "guessed from the shape (more rows than columns: rows are genes)"
    return "samples_x_genes", "guessed from the shape (more columns than rows: columns are genes)"


def _read_sample_table(path: Path, id_column: str | None) -> pd.DataFrame:
    df = _read_table(path, "sample table", as_text=True)
    df.columns = [str(c).strip() for c in df.columns]
    if id_column is None:
        id_column = df.columns[0]
    elif id_column not in df.columns:
        raise ConfigError(f"sample id column '{id_column}' is not in {path.name}; available: {', '.join(df.columns)}")
    df[id_column] = df[id_column].astype(str).str.strip()
    df = df[df[id_column].ne("") & df[id_column].ne("nan")]
    df = df.drop_duplicates(subset=id_column, keep="first").set_index(id_column)
    df.index.name = "sample"
    for c in df.columns:  # numeric annotations (age, ...) as numbers
        conv = pd.to_numeric(df[c], errors="coerce")
        if df[c].notna().sum() and conv.notna().sum() == df[c].notna().sum():
            df[c] = conv
    return df


def _match_table(samples: list[str], table: pd.DataFrame) -> tuple[dict[str, str], str]:
    """Map matrix sample id -> table id: exact, else TCGA sample level (first 15 / 12 chars)."""
    ids = set(table.index)
    exact = {s: s for s in samples if s in ids}
    if exact:
        return exact, "exact"
    for n in (16, 15, 12):
        short = {}
        for t in table.index:
            short.setdefault(str(t)[:n].upper().replace(".", "-"), t)
        m = {s: short[s[:n].upper().replace(".", "-")] for s in samples if s[:n].upper().replace(".", "-") in short}
        if len(m) >= 0.5 * len(samples):
            return m, f"first {n} characters of the sample id"
    return {}, "none"


def _to_numeric(block: pd.DataFrame) -> np.ndarray:
    obj = [c for c in block.columns if not pd.api.types.is_numeric_dtype(block[c].dtype)]
    if obj:
        block = block.copy()
        block[obj] = block[obj].apply(pd.to_numeric, errors="coerce")
    arr = np.array(block.to_numpy(dtype=np.float64), dtype=np.float64, copy=True)
    arr[~np.isfinite(arr)] = np.nan
    return arr


#: A log-scale matrix (log2 / ln / log10 of counts, intensities, TPM) never goes above this.
LOG_MAX = 30.0


def _detect_scale(values: np.ndarray, log: str) -> tuple[np.ndarray, str]:
    """``(values on a log scale, what was done)``. Linear-scale data (raw or normalised counts,
    TPM / FPKM, microarray intensities) get log2(x+1); the ``scale`` text starts with ``counts``
    or ``linear`` then (see :func:`value_transform`), ``log`` when the values were kept."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise DatasetError("the matrix holds no numeric values")
    vmin, vmax = float(finite.min()), float(finite.max())
    if log == "yes":
        if vmin < 0:
            raise ConfigError("--log yes but the matrix has negative values (already log scale?)")
        return np.log2(values + 1.0), "forced: log2(x+1) applied"
    if log == "no":
        return values, "log (as given)"
    sample = finite[:: max(1, finite.size // 200_000)]
    integer = float(np.mean(np.abs(sample - np.round(sample)) < 1e-6))
    if vmin >= 0 and integer > 0.99 and vmax > LOG_MAX:
        return np.log2(values + 1.0), "counts: log2(x+1) applied"
    if vmin >= 0 and vmax > LOG_MAX:
        return np.log2(values + 1.0), f"linear (max {vmax:.4g} > {LOG_MAX:g}): log2(x+1) applied"
    positive = sample[sample > 0]
    if vmin >= 0 and vmax > 8 and positive.size > 20:
        # a low-valued linear matrix (e.g. TPM of a few genes): strongly right-skewed, unlike logs
        sd = float(positive.std())
        skew = float(np.mean(((positive - positive.mean()) / sd) ** 3)) if sd > 0 else 0.0
        if skew > 3.0:
            kind = "counts" if integer > 0.99 else "linear"
            return np.log2(values + 1.0), f"{kind} (skewness {skew:.1f}): log2(x+1) applied"
    return values, "log (as given)"


def value_transform(scale: str) -> dict:
    """How the reader changed the values (from the report's ``scale`` text), so that generated
    values can be written back on the matrix's own scale: ``{"kind": "log2p1", "integer": bool}``
    (log2(x+1) applied; ``integer``: the input was counts) or ``{"kind": "none"}``."""
    if "log2(x+1) applied" in (scale or ""):
        return {"kind": "log2p1", "integer": str(scale).startswith("counts")}
    return {"kind": "none"}


def inverse_value_transform(values: np.ndarray, transform: dict | None) -> np.ndarray:
    """Log-scale values back on the input matrix's scale (exact inverse of :func:`_detect_scale`:
    ``2**x - 1``, never below 0, rounded to whole numbers for counts, or floored when the
    generator was trained on dequantised counts, ``"dequantized": True``)."""
    if not transform or transform.get("kind") != "log2p1":
        return values
    out = np.maximum(np.exp2(np.asarray(values, np.float64)) - 1.0, 0.0)
    if transform.get("dequantized"):  # trained on log2(count + U(0, 1) + 1)
        out = np.floor(out)
    elif transform.get("integer"):
        out = np.round(out)
    return out.astype(np.float32)


def _collapse_duplicates(values: np.ndarray, genes: list[str]) -> tuple[np.ndarray, list[str], int]:
    if len(set(genes)) == len(genes):
        return values, genes, 0
    codes, uniques = pd.factorize(pd.Index(genes))
    df = pd.DataFrame(values.T)
    merged = df.groupby(codes, sort=False).mean().to_numpy().T  # nan-aware mean
    order = pd.unique(codes)
    return merged, [str(uniques[i]) for i in order], len(genes) - len(uniques)


def _handle_missing(values: np.ndarray, samples: list[str], genes: list[str], report: dict):
    miss = np.isnan(values)
    n_missing = int(miss.sum())
    info = {"count": n_missing, "fraction": round(n_missing / max(1, values.size), 6)}
    dropped_genes: list[str] = []
    dropped_samples: list[str] = []
    if n_missing:
        gene_frac = miss.mean(axis=0)
        keep_g = gene_frac <= MAX_MISSING_GENE
        dropped_genes = [g for g, k in zip(genes, keep_g, strict=False) if not k]
        values, genes, miss = values[:, keep_g], [g for g, k in zip(genes, keep_g, strict=False) if k], miss[:, keep_g]
        samp_frac = miss.mean(axis=1) if values.shape[1] else np.zeros(len(samples))
        keep_s = samp_frac <= MAX_MISSING_SAMPLE
        dropped_samples = [s for s, k in zip(samples, keep_s, strict=False) if not k]
        values, samples, miss = values[keep_s], [s for s, k in zip(samples, keep_s, strict=False) if k], miss[keep_s]
        if miss.any():
            means = np.nanmean(np.where(miss, np.nan, values), axis=0) if values.shape[0] else np.zeros(0)
            values = np.where(miss, means[None, :], values)
        info["handling"] = (f"genes with > {MAX_MISSING_GENE:.0%} missing dropped ({len(dropped_genes)}), samples "
                            f"with > {MAX_MISSING_SAMPLE:.0%} missing dropped ({len(dropped_samples)}), "
                            f"remaining {int(miss.sum())} filled with the gene mean")
    else:
        info["handling"] = "none missing"
    report["missing_values"] = info
    report["dropped_genes"] = {"count": len(dropped_genes), "examples": dropped_genes[:10],
                               "reason": "too many missing values"}
    report["dropped_samples"] = {"count": len(dropped_samples), "examples": dropped_samples[:10],
                                 "reason": "too many missing values"}
    return values, samples, genes


def read_matrix(path, samples_path=None, orientation: str = "auto", log: str = "auto",
                sample_id_column: str | None = None) -> ExpressionMatrix:
    """Read ``path`` (+ the sample table ``samples_path``) into a samples x genes log-scale matrix."""
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"orientation must be one of {', '.join(ORIENTATIONS)}, not '{orientation}'")
    if log not in LOG_MODES:
        raise ConfigError(f"log must be one of {', '.join(LOG_MODES)}, not '{log}'")
    path = Path(path)
    df = _read_table(path, "expression matrix")
    table = _read_sample_table(Path(samples_path), sample_id_column) if samples_path else None
    report: dict = {"path": str(path), "sample_table": str(samples_path) if samples_path else None}

    first = df.columns[0]
    if pd.api.types.is_float_dtype(df[first].dtype):
        ids = [f"row{i + 1}" for i in range(len(df))]  # no id column: the first column is data
        report["row_ids"] = "generated (first column is numeric)"
    else:
        ids = df[first].astype(str).str.strip().str.strip('"').tolist()
        df = df.drop(columns=[first])
    df.index = ids
    numeric = [c for c in df.columns if _is_numeric_column(df[c])]
    annotations = [c for c in df.columns if c not in set(numeric)]
    if not numeric:
        raise DatasetError(f"{path.name} has no numeric columns")
    row_ids, col_ids = ids, [str(c).strip() for c in numeric]

    table_ids = set(table.index) if table is not None else None
    if orientation == "auto":
        corner = "" if report.get("row_ids") else str(first)
        orientation, why = _detect_orientation(row_ids, col_ids, table_ids, corner)
        report["orientation"] = {"value": orientation, "detected": True, "why": why}
    else:
        report["orientation"] = {"value": orientation, "detected": False, "why": "forced by the user"}
    values = _to_numeric(df[numeric])
    extra = None
    if orientation == "samples_x_genes":
        samples, genes = row_ids, col_ids
        if annotations:
            extra = df[annotations].copy()
            extra.index = samples
    else:
        samples, genes, values = col_ids, row_ids, values.T
    report["annotation_columns_in_matrix"] = annotations
    return _finish(values, samples, genes, table, extra, log, report)


def _finish(values, samples, genes, table, extra, log, report) -> ExpressionMatrix:
    samples = [str(s) for s in samples]
    raw_genes = [str(g) for g in genes]
    genes = [clean_gene_id(g) for g in raw_genes]
    report["gene_id_type"] = gene_id_type(genes)
    values, report["scale"] = _detect_scale(values, log)  # before averaging duplicates: counts stay integers
    report["gene_versions_stripped"] = sum(a != b for a, b in zip(raw_genes, genes, strict=False))
    if len(set(samples)) != len(samples):  # keep the first of duplicated sample ids
        keep = ~pd.Index(samples).duplicated(keep="first")
        report["duplicate_samples_dropped"] = int((~keep).sum())
        values, samples = values[keep], [s for s, k in zip(samples, keep, strict=False) if k]
        if extra is not None:
            extra = extra[keep]
    values, genes, n_dup = _collapse_duplicates(values, genes)
    report["duplicate_genes_averaged"] = n_dup

    sample_table = None
    if table is not None:
        mapping, how = _match_table(samples, table)
        if not mapping:
            raise DatasetError("no sample id of the matrix is in the sample table (check the id column)")
        keep = np.array([s in mapping for s in samples])
        report["sample_table_match"] = {"how": how, "matched": int(keep.sum()),
                                        "matrix_samples_without_annotation": int((~keep).sum()),
                                        "table_rows_not_in_matrix": len(table) - len(set(mapping.values()))}
        values, samples = values[keep], [s for s in samples if s in mapping]
        sample_table = table.loc[[mapping[s] for s in samples]].copy()
        sample_table.index = pd.Index(samples, name="sample")
        if extra is not None:
            extra = extra.loc[samples]
            for c in extra.columns:
                if c not in sample_table.columns:
                    sample_table[c] = extra[c].to_numpy()
    elif extra is not None and len(extra.columns):
        sample_table = extra
        sample_table.index = pd.Index(samples, name="sample")

    values, samples, genes = _handle_missing(values, samples, genes, report)
    if not samples or not genes:
        raise DatasetError(f"no usable data left ({len(samples)} samples x {len(genes)} genes)")
    if sample_table is not None:
        sample_table = sample_table.reindex(samples)
    report["n_samples"], report["n_genes"] = len(samples), len(genes)
    return ExpressionMatrix(np.ascontiguousarray(values, dtype=np.float32), samples, genes, sample_table, report)


# ---------------------------------------------------------------------------------------------
# aligning and writing


def _key(g: str) -> str:
    return clean_gene_id(g).upper()


def align_genes(matrix: ExpressionMatrix, genes: list[str], fill: np.ndarray | None = None
                ) -> tuple[np.ndarray, dict]:
    """The matrix values in ``genes`` order (samples x len(genes)); genes missing from the matrix are
    filled with ``fill`` (e.g. the training means; zeros if None) and reported."""
    genes = [str(g) for g in genes]
    pos = {g: i for i, g in enumerate(matrix.genes)}
    upper = {}
    for i, g in enumerate(matrix.genes):
        upper.setdefault(_key(g), i)
    idx = np.full(len(genes), -1, dtype=int)
    for j, g in enumerate(genes):
        i = pos.get(g, pos.get(clean_gene_id(g)))
        if i is None:
            i = upper.get(_key(g))
        if i is not None:
            idx[j] = i
    found = idx >= 0
    if not found.any():
        raise DatasetError(f"none of the {len(genes)} model genes is in the matrix "
                           f"(model ids e.g. {genes[0]}, matrix ids e.g. {matrix.genes[0]})")
    if fill is None:
        fill = np.zeros(len(genes), dtype=np.float32)
    fill = np.asarray(fill, dtype=np.float32)
    if fill.shape[0] != len(genes):
        raise ConfigError(f"fill has {fill.shape[0]} values for {len(genes)} genes")
    out = np.empty((matrix.values.shape[0], len(genes)), dtype=np.float32)
    out[:] = fill[None, :]
    out[:, found] = matrix.values[:, idx[found]]
    missing = [g for g, f in zip(genes, found, strict=False) if not f]
    report = {"genes": len(genes), "matched": int(found.sum()), "missing": len(missing),
              "missing_fraction": round(len(missing) / len(genes), 4), "missing_examples": missing[:20],
              "filled_with": "training means" if fill.any() else "zeros"}
    return out, report


def write_matrix(path, values, samples, genes, extra_columns: pd.DataFrame | None = None) -> None:
    """Write a samples x genes TSV (gzip when ``path`` ends in .gz), atomically.
    ``extra_columns`` (indexed by sample or row-aligned) go between the sample id and the genes."""
    values = np.asarray(values)
    if values.shape != (len(samples), len(genes)):
        raise ConfigError(f"values {values.shape} do not match {len(samples)} samples x {len(genes)} genes")
    df = pd.DataFrame(values, columns=[str(g) for g in genes])
    if extra_columns is not None and len(extra_columns.columns):
        ex = extra_columns.reindex([str(s) for s in samples]) if set(map(str, samples)) <= set(
            map(str, extra_columns.index)) else extra_columns.reset_index(drop=True)
        ex = ex.reset_index(drop=True)
        df = pd.concat([ex, df], axis=1)
    df.insert(0, "sample", [str(s) for s in samples])
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6g",
                  compression="gzip" if path.name.endswith(".gz") else None)


def matrix_summary(m: ExpressionMatrix) -> dict:
    """The ``expression info`` report: shape, scale, ids, missing values, label columns."""
    finite = m.values[np.isfinite(m.values)]
    out = dict(m.report)
    out.update({
        "n_samples": m.shape[0], "n_genes": m.shape[1],
        "value_range": [float(finite.min()), float(finite.max())] if finite.size else None,
        "value_mean": float(finite.mean()) if finite.size else None,
        "sample_examples": m.samples[:5], "gene_examples": m.genes[:5],
        "label_columns": {},
    })
    if m.sample_table is not None:
        for c in m.sample_table.columns:
            col = m.sample_table[c]
            nun = int(col.nunique(dropna=True))
            entry = {"distinct": nun, "missing": int(col.isna().sum())}
            if 0 < nun <= 60:
                counts = col.astype(str)[col.notna()].value_counts()
                entry["counts"] = {str(k): int(v) for k, v in counts.items()}
            out["label_columns"][str(c)] = entry
    return out
