"""Per-sample features of a study: clinical attributes, MAF summaries, per-gene indicators.

- Clinical: every sample / patient attribute that is not an identifier or a label leak
  (numbers stay numbers, the rest are categories); tumour type and detailed type by role.
- MAF summaries (``maf_*``): mutation count, variant types (SNV / DNP / ONP / insertion /
  deletion, from ``Variant_Type`` or derived from the alleles), SNV substitution classes, mean
  ``t_ref_count`` / ``t_alt_count`` / depth, mean and max VAF, summed and mean end-start span;
  with a full MAF also ``Variant_Classification`` counts, protein position and codon changes.
- Allele states (``maf_*`` too; INCOMMON's idea): each mutation's VAF / tumour purity, about 0.5
  for a clonal heterozygous mutation in a diploid region, above ``LOH_RATIO`` when the mutant
  allele is amplified or the other one lost (LOH), below ``SUBCLONAL_RATIO`` when subclonal;
  per sample the share of mutations in each state, the mean / max ratio, the LOH count, and
  the highest ratio of each of ``KEY_GENES`` (0 when not mutated, missing without purity).
- Within tumour type (``<SOURCE>__z_in__<TYPE COLUMN>``): FGA, TMB, mutation count, purity and
  age standardised within the sample's tumour type; the frame holds whole-study values (for the
  report), training refits the group statistics on its training samples (:mod:`encode`).
- Genes (``gene_*``): 1 mutated, 0 covered and not mutated, missing when the gene is not on the
  sample's panel (from panel gene lists, else inferred from the data: a gene never mutated on a
  panel although its rate elsewhere predicts >= 5 mutations there is taken as absent from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DatasetError
from engine.genomics.encode import WITHIN_SEP, apply_within, fit_within, within_name
from engine.genomics.leaks import ID_COLUMNS
from engine.genomics.study import Study, is_numeric_column, numeric

FEATURE_SETS = ("clinical", "mutations", "all")
ROLE_CANDIDATES = {
    "tumour_type": ("CANCER_TYPE", "ONCOTREE_CODE_GROUP", "TUMOR_TYPE"),
    "detailed_type": ("CANCER_TYPE_DETAILED", "SUBTYPE_ABBREVIATION", "ONCOTREE_CODE", "SUBTYPE"),
    "tmb": ("TMB_NONSYNONYMOUS", "TMB"),
    "fga": ("FRACTION_GENOME_ALTERED", "FGA"),
    "purity": ("TUMOR_PURITY",),
    "panel": ("GENE_PANEL",),
    "sex": ("SEX", "GENDER"),
    "age": ("AGE_AT_SEQUENCING", "AGE_AT_SEQ_REPORT", "AGE_AT_DIAGNOSIS", "AGE"),
    "mutation_count": ("MUTATION_COUNT",),
    "coverage": ("SAMPLE_COVERAGE",),
    "dna_input": ("DNA_INPUT",),
}
MAX_LEVELS = 200
VARIANT_TYPES = ("SNV", "DNP", "ONP", "INS", "DEL")
SUBSTITUTIONS = ("C>A", "C>G", "C>T", "T>A", "T>C", "T>G")
CLASSIFICATIONS = (
    "Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins", "Splice_Site",
    "In_Frame_Del", "In_Frame_Ins", "Silent", "Translation_Start_Site", "Nonstop_Mutation",
)
_COMP = str.maketrans("ACGT", "TGCA")
#: VAF / purity above this: mutant allele amplified or the other allele lost; below SUBCLONAL_RATIO: subclonal
LOH_RATIO = 0.6
SUBCLONAL_RATIO = 0.3
#: roles standardised within the tumour type (mutation count falls back to the MAF's count)
WITHIN_ROLES = ("fga", "tmb", "mutation_count", "purity", "age")
#: genes with a per-gene VAF / purity feature (driver genes whose allele state is informative)
KEY_GENES = ("TP53", "KRAS", "PIK3CA", "APC", "EGFR", "CDKN2A", "PTEN", "SMAD4", "RB1", "ARID1A", "KMT2D", "BRAF",
             "CTNNB1", "NF1", "ATM", "FBXW7", "KEAP1", "STK11", "BRCA2", "ERBB2")


@dataclass
class FeatureTable:
    """Features of every sample (rows: sample ids).

    Attributes:
        frame: numeric columns as float64 (NaN = missing), categorical ones as str ("" = missing).
        numeric, categorical: column names by kind.
        groups: column -> ``"clinical"`` or ``"mutations"`` (for ablations).
        roles: role (tumour_type, detailed_type, tmb, ...) -> column used.
        not_computed: feature -> why it could not be computed.
        notes: coverage and other remarks for the report.
        genes: genes with an indicator column.
    """

    frame: pd.DataFrame
    numeric: list[str]
    categorical: list[str]
    groups: dict[str, str]
    roles: dict[str, str] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    genes: list[str] = field(default_factory=list)
    patients: pd.Series | None = None

    @property
    def columns(self) -> list[str]:
        return self.numeric + self.categorical

    def group_values(self) -> pd.Series:
        """The subgroup of each sample (tumour type, else empty)."""
        col = self.roles.get("tumour_type")
        if col and col in self.frame.columns:
            return self.frame[col].astype(str)
        return pd.Series("", index=self.frame.index)

    def select(self, which: str) -> FeatureTable:
        """Only ``clinical`` / ``mutations`` / ``all`` columns."""
        if which == "all":
            return self
        keep = [c for c in self.columns if self.groups.get(c) == which]
        # a within-type column needs its tumour-type column as a feature (prediction rebuilds it from it)
        keep = [c for c in keep if WITHIN_SEP not in c or c.partition(WITHIN_SEP)[2] in keep]
        role_cols = [self.roles[r] for r in ("tumour_type",) if r in self.roles and self.roles[r] in self.frame]
        frame = self.frame[list(dict.fromkeys(keep + role_cols))]
        return FeatureTable(frame, [c for c in self.numeric if c in keep], [c for c in self.categorical if c in keep],
                            {c: self.groups[c] for c in keep}, self.roles, self.not_computed, self.notes,
                            [g for g in self.genes if f"gene_{g}" in keep], self.patients)


def find_role(columns: list[str] | pd.Index, role: str) -> str | None:
    return next((c for c in ROLE_CANDIDATES[role] if c in columns), None)


def clinical_features(study: Study, leaks: dict[str, str]) -> tuple[pd.DataFrame, list[str], list[str], dict[str, str], list[str]]:
    """Usable clinical columns: ``(frame, numeric, categorical, roles, notes)``."""
    s = study.samples
    roles = {r: c for r in ROLE_CANDIDATES if (c := find_role(s.columns, r)) and c not in leaks}
    frame = pd.DataFrame(index=s.index)
    num: list[str] = []
    cat: list[str] = []
    notes: list[str] = []
    role_cols = set(roles.values())
    for c in s.columns:
        if c in leaks or c in ID_COLUMNS:
            continue
        col = s[c]
        if (col == "").all() or col[col != ""].nunique() < 2:
            notes.append(f"{c}: one value only, not used")
            continue
        if is_numeric_column(col):
            frame[c] = numeric(col)
            num.append(c)
        elif col.nunique() <= MAX_LEVELS or c in role_cols:
            frame[c] = col.astype(str)
            cat.append(c)
        else:
            notes.append(f"{c}: {col.nunique()} distinct text values (free text or an identifier), not used")
    if "panel" not in roles and study.panel_of:
        frame["GENE_PANEL"] = pd.Series(study.panel_of).reindex(s.index).fillna("").astype(str)
        cat.append("GENE_PANEL")
        roles["panel"] = "GENE_PANEL"
    return frame, num, cat, roles, notes


def _variant_types(m: pd.DataFrame) -> pd.Series:
    if "Variant_Type" in m.columns and (m["Variant_Type"] != "").mean() > 0.9:
        vt = m["Variant_Type"].str.upper().replace({"SNP": "SNV", "INDEL": "DEL"})
        return vt.where(vt.isin(VARIANT_TYPES), "SNV")
    ref = m["Reference_Allele"].fillna("").str.upper().replace("", "-")
    alt = m["Tumor_Seq_Allele2"].fillna("").str.upper().replace("", "-")
    lr = ref.where(ref != "-", "").str.len()
    la = alt.where(alt != "-", "").str.len()
    out = np.where(lr == 0, "INS", np.where(la == 0, "DEL", np.where(
        lr == la, np.where(lr == 1, "SNV", np.where(lr == 2, "DNP", "ONP")), np.where(lr > la, "DEL", "INS"))))
    return pd.Series(out, index=m.index)


def _substitution(m: pd.DataFrame, vt: pd.Series) -> pd.Series:
    ref = m["Reference_Allele"].fillna("").str.upper()
    alt = m["Tumor_Seq_Allele2"].fillna("").str.upper()
    flip = ref.isin(["A", "G"])
    r = ref.where(~flip, ref.str.translate(_COMP))
    a = alt.where(~flip, alt.str.translate(_COMP))
    sub = r + ">" + a
    return sub.where((vt == "SNV") & sub.isin(SUBSTITUTIONS), "")


def _protein_position(m: pd.DataFrame) -> pd.Series | None:
    if "Protein_position" in m.columns and (m["Protein_position"] != "").any():
        return pd.to_numeric(m["Protein_position"].str.extract(r"(\d+)")[0], errors="coerce")
    if "HGVSp_Short" in m.columns and (m["HGVSp_Short"] != "").any():
        return pd.to_numeric(m["HGVSp_Short"].str.extract(r"^p\.\D*?(\d+)")[0], errors="coerce")
    return None


def mutation_summaries(study: Study) -> tuple[pd.DataFrame, dict[str, str]]:
    """``maf_*`` features per sample and the features that could not be computed (with why)."""
    m = study.mutations
    idx = study.samples.index
    missing: dict[str, str] = {}
    assert m is not None
    bc = m["Tumor_Sample_Barcode"]
    out = pd.DataFrame(index=idx)
    out["maf_mutations"] = bc.value_counts().reindex(idx).fillna(0).astype(np.float64)
    has_alleles = {"Reference_Allele", "Tumor_Seq_Allele2"} <= set(m.columns) or "Variant_Type" in m.columns
    if has_alleles:
        vt = _variant_types(m)
        counts = pd.crosstab(bc, vt).reindex(index=idx, columns=list(VARIANT_TYPES)).fillna(0)
        for t in VARIANT_TYPES:
            out[f"maf_n_{t.lower()}"] = counts[t].astype(np.float64)
        total = out["maf_mutations"].replace(0, np.nan)
        out["maf_frac_indel"] = (counts["INS"] + counts["DEL"]) / total
        if {"Reference_Allele", "Tumor_Seq_Allele2"} <= set(m.columns):
            sub = _substitution(m, vt)
            sc = pd.crosstab(bc[sub != ""], sub[sub != ""]).reindex(index=idx, columns=list(SUBSTITUTIONS)).fillna(0)
            n_snv = sc.sum(axis=1).replace(0, np.nan)
            for s in SUBSTITUTIONS:
                out[f"maf_frac_{s.replace('>', '')}"] = sc[s] / n_snv
        else:
            missing["maf_frac_<substitution>"] = "no Reference_Allele / Tumor_Seq_Allele2 columns"
    else:
        missing["maf_n_<variant type>"] = "no Variant_Type and no allele columns"
    num = pd.DataFrame({"bc": bc})
    for col, name in (("t_ref_count", "maf_mean_t_ref"), ("t_alt_count", "maf_mean_t_alt"), ("t_depth", "maf_mean_depth")):
        if col in m.columns:
            num[name] = m[col]
        else:
            missing[name] = f"no {col} column"
    vaf = _vaf(m)
    if vaf is not None:
        num["maf_mean_vaf"] = vaf
        num["maf_max_vaf"] = vaf
    else:
        missing["maf_mean_vaf"] = "no VAF and no t_alt_count / t_ref_count columns"
    if {"Start_Position", "End_Position"} <= set(m.columns):
        num["maf_sum_span"] = (m["End_Position"] - m["Start_Position"]).abs() + 1
        num["maf_mean_span"] = num["maf_sum_span"]
    else:
        missing["maf_sum_span"] = "no Start_Position / End_Position columns"
    pos = _protein_position(m)
    if pos is not None:
        num["maf_mean_protein_position"] = pos
    else:
        missing["maf_mean_protein_position"] = "no Protein_position / HGVSp_Short column (reduced MAF)"
    g = num.groupby("bc")
    aggs = {c: ("max" if c == "maf_max_vaf" else "sum" if c == "maf_sum_span" else "mean") for c in num.columns if c != "bc"}
    if aggs:
        out = out.join(g.agg(aggs).reindex(idx))
    if "maf_sum_span" in out:
        out["maf_sum_span"] = out["maf_sum_span"].fillna(0)
    _full_maf(m, bc, idx, out, missing)
    if vaf is not None:
        allele_states(study, vaf, out, missing)
    return out, missing


def sample_purity(study: Study) -> pd.Series | None:
    """Tumour purity per sample as a fraction (0 or missing -> NaN; percentages scaled), or None."""
    col = find_role(study.samples.columns, "purity")
    if col is None:
        return None
    p = pd.Series(numeric(study.samples[col]), index=study.samples.index, dtype=np.float64)
    if p.max() > 1.5:
        p = p / 100.0
    return p.where(p > 0)


def allele_states(study: Study, vaf: pd.Series, out: pd.DataFrame, missing: dict[str, str]) -> None:
    """Allele-state columns from VAF / purity (see the module docstring), added to ``out``."""
    purity = sample_purity(study)
    if purity is None or not purity.notna().any():
        missing["maf_frac_loh"] = "no tumour purity column (allele states need VAF / purity)"
        return
    m = study.mutations
    assert m is not None
    bc = m["Tumor_Sample_Barcode"]
    r = pd.Series(vaf.to_numpy(dtype=np.float64) / bc.map(purity).to_numpy(dtype=np.float64), index=m.index)
    ok = np.isfinite(r)
    rows = pd.DataFrame({"bc": bc[ok], "r": r[ok], "gene": m.loc[ok, "Hugo_Symbol"]})
    rows["sub"] = (rows["r"] < SUBCLONAL_RATIO).astype(np.float64)
    rows["loh"] = (rows["r"] > LOH_RATIO).astype(np.float64)
    rows["het"] = 1.0 - rows["sub"] - rows["loh"]
    g = rows.groupby("bc")
    idx = out.index
    has = pd.Series(idx.isin(purity.dropna().index), index=idx)
    for name, col in (("subclonal", "sub"), ("heterozygous", "het"), ("loh", "loh")):
        out[f"maf_frac_{name}"] = g[col].mean().reindex(idx)
    out["maf_mean_vaf_purity"] = g["r"].mean().reindex(idx)
    out["maf_max_vaf_purity"] = g["r"].max().reindex(idx)
    # no usable mutation: zero LOH mutations when the purity is known
    out["maf_n_loh"] = g["loh"].sum().reindex(idx).fillna(0).where(has)
    key = rows[rows["gene"].isin(KEY_GENES)]
    per_gene = key.groupby(["bc", "gene"])["r"].max().unstack().reindex(index=idx, columns=list(KEY_GENES))
    for gene in KEY_GENES:  # 0: the gene is not mutated (no mutant allele); missing: no purity
        out[f"maf_vaf_purity_{gene}"] = per_gene[gene].astype(np.float64).fillna(0).where(has)


def _vaf(m: pd.DataFrame) -> pd.Series | None:
    if "VAF" in m.columns and m["VAF"].notna().any():
        v = m["VAF"]
        return v / 100.0 if v.max() > 1.5 else v
    if {"t_alt_count", "t_ref_count"} <= set(m.columns):
        return m["t_alt_count"] / (m["t_alt_count"] + m["t_ref_count"]).replace(0, np.nan)
    if {"t_alt_count", "t_depth"} <= set(m.columns):
        return m["t_alt_count"] / m["t_depth"].replace(0, np.nan)
    return None


def _full_maf(m: pd.DataFrame, bc: pd.Series, idx: pd.Index, out: pd.DataFrame, missing: dict[str, str]) -> None:
    if "Variant_Classification" in m.columns and (m["Variant_Classification"] != "").any():
        vc = m["Variant_Classification"].where(m["Variant_Classification"].isin(CLASSIFICATIONS), "Other")
        ct = pd.crosstab(bc, vc).reindex(index=idx, columns=[*CLASSIFICATIONS, "Other"]).fillna(0)
        for c in ct.columns:
            out[f"maf_n_{c.lower()}"] = ct[c].astype(np.float64)
    else:
        missing["maf_n_<variant classification>"] = "no Variant_Classification column (reduced MAF)"
    if "Codons" in m.columns and (m["Codons"] != "").any():
        changed = m["Codons"].str.contains("/", regex=False)
        out["maf_codon_changes"] = changed.groupby(bc).sum().reindex(idx).fillna(0).astype(np.float64)
    else:
        missing["maf_codon_changes"] = "no Codons column (reduced MAF)"
    if "HGVSp_Short" in m.columns and (m["HGVSp_Short"] != "").any():
        trunc = m["HGVSp_Short"].str.contains(r"\*|fs", regex=True)
        out["maf_n_truncating"] = trunc.groupby(bc).sum().reindex(idx).fillna(0).astype(np.float64)
    else:
        missing["maf_n_truncating"] = "no HGVSp_Short / protein change column (reduced MAF)"


def gene_indicators(
    study: Study, min_freq: float = 0.005, max_genes: int = 300, genes: list[str] | None = None
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``gene_<SYMBOL>`` columns (1 / 0 / NaN when not on the sample's panel), genes, notes.

    ``genes`` fixes the gene list (a trained model's); otherwise genes mutated in at least
    ``min_freq`` of the samples, most frequent first, at most ``max_genes``.
    """
    m = study.mutations
    assert m is not None
    idx = study.samples.index
    pairs = m[["Tumor_Sample_Barcode", "Hugo_Symbol"]].drop_duplicates()
    freq = pairs["Hugo_Symbol"].value_counts() / max(len(idx), 1)
    if genes is None:
        genes = [str(g) for g in freq[freq >= min_freq].index[:max_genes] if g]
    mut = pd.crosstab(pairs["Tumor_Sample_Barcode"], pairs["Hugo_Symbol"]).reindex(index=idx, columns=genes).fillna(0)
    mut = (mut > 0).astype(np.float64)
    notes = [f"{len(genes)} genes mutated in >= {min_freq:.1%} of samples get an indicator (max {max_genes})"]
    mut = mut.fillna(0)
    panel = pd.Series(study.panel_of).reindex(idx).fillna("")
    panels = sorted(p for p in panel.unique() if p)
    if study.panel_genes:
        for p in panels:
            covered = study.panel_genes.get(p)
            if covered is None:
                continue
            absent = [g for g in genes if g not in covered]
            mut.loc[panel == p, absent] = np.nan
        notes.append("gene coverage from the study's gene-panel files: genes not on a sample's panel are missing")
    elif len(panels) > 1:
        absent_total = 0
        for p in panels:
            on_p = (panel == p).to_numpy()
            n_p, n_o = on_p.sum(), (~on_p).sum()
            if n_p == 0 or n_o == 0:
                continue
            rate_other = mut[~on_p].mean(axis=0)
            absent = [g for g in genes if mut.loc[on_p, g].sum() == 0 and rate_other[g] * n_p >= 5]
            mut.loc[on_p, absent] = np.nan
            absent_total += len(absent)
            if absent:
                notes.append(f"panel {p}: {len(absent)} genes inferred absent (never mutated there), e.g. {', '.join(absent[:5])}")
        notes.append(
            "no gene-panel gene lists in the study: genes are taken as covered by every panel, except those "
            f"inferred absent from a panel ({absent_total} gene-panel pairs)"
        )
    else:
        notes.append("no gene-panel gene lists: genes are taken as covered by every panel")
    mut.columns = [f"gene_{g}" for g in genes]
    return mut, genes, notes


def build_features(
    study: Study, leaks: dict[str, str], which: str = "all", min_gene_freq: float = 0.005, max_genes: int = 300
) -> FeatureTable:
    """All features of the study (then :meth:`FeatureTable.select` for ablations).

    Raises:
        DatasetError: ``mutations`` requested for a study without a mutations table, or no
            usable feature at all.
    """
    if which not in FEATURE_SETS:
        raise DatasetError(f"features must be one of {', '.join(FEATURE_SETS)}, got {which!r}")
    frame, num, cat, roles, notes = clinical_features(study, leaks)
    groups = {c: "clinical" for c in num + cat}
    not_computed: dict[str, str] = {}
    genes: list[str] = []
    if study.mutations is not None:
        maf, not_computed = mutation_summaries(study)
        if "maf_frac_loh" in maf.columns:
            notes.append(f"allele states from VAF / tumour purity (> {LOH_RATIO} LOH or amplified mutant allele, < "
                         f"{SUBCLONAL_RATIO} subclonal): maf_frac_subclonal / heterozygous / loh, maf_mean_vaf_purity, "
                         f"maf_max_vaf_purity, maf_n_loh, and maf_vaf_purity_<gene> for {len(KEY_GENES)} driver genes")
        gen, genes, gnotes = gene_indicators(study, min_gene_freq, max_genes)
        frame = pd.concat([frame, maf, gen], axis=1)
        new = list(maf.columns) + list(gen.columns)
        num += new
        groups.update({c: "mutations" for c in new})
        notes += gnotes
    else:
        if which == "mutations":
            raise DatasetError("the study has no mutations table: use --features clinical")
        not_computed["maf_* and gene_* features"] = "the study has no mutations (MAF) table"
    within = within_columns(frame, num, cat, roles, groups)
    if within:
        frame = apply_within(frame, fit_within(frame, within))
        num += within
        notes.append(f"{len(within)} numbers standardised within the tumour type ({roles['tumour_type']}; group "
                     "mean / std refitted on each model's training samples): " + ", ".join(within))
    ft = FeatureTable(frame, num, cat, groups, roles, not_computed, notes, genes, study.samples["PATIENT_ID"])
    ft = ft.select(which)
    if not ft.columns:
        raise DatasetError(f"no usable {which} features in the study")
    return ft


def within_columns(frame: pd.DataFrame, num: list[str], cat: list[str], roles: dict[str, str],
                   groups: dict[str, str]) -> list[str]:
    """Names of the within-tumour-type columns (sources that are numeric features; the tumour type a
    categorical one); registers their feature group (the source's) in ``groups``."""
    group = roles.get("tumour_type")
    if group not in cat:
        return []
    out = []
    for role in WITHIN_ROLES:
        src = roles.get(role) or ("maf_mutations" if role == "mutation_count" else None)
        if src in num and src in frame.columns:
            name = within_name(src, group)
            groups[name] = groups.get(src, "clinical")
            out.append(name)
    return out


def summary(ft: FeatureTable) -> dict[str, Any]:
    return {
        "n_features": len(ft.columns),
        "numeric": len(ft.numeric),
        "categorical": ft.categorical,
        "genes": len(ft.genes),
        "roles": ft.roles,
        "not_computed": ft.not_computed,
        "notes": ft.notes,
    }
