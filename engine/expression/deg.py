"""Differential expression between two groups of samples (gene selection for the generator).

For every gene: log2 fold change (on log-scale data, the difference of the group means), a
Welch t-test or a Mann-Whitney U test (independent groups), or a paired t-test / Wilcoxon
signed-rank test when the samples pair up by patient, and the p values corrected for multiple
testing (Bonferroni or Benjamini-Hochberg, statsmodels ``multipletests``). A gene is selected
by the seed's intersection rule: corrected p <= alpha AND |log2 FC| >= log2(fold).

Outputs (:func:`write_deg`): ``deg.csv`` (one row per gene), ``genes.txt`` (selected genes,
most different first), ``volcano.png`` and ``metrics.json``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DatasetError
from engine.fileio import atomic_path, atomic_write_json, atomic_write_text, ensure_writable_dir

TESTS = ("wilcoxon", "welch")
CORRECTIONS = ("bonferroni", "bh")
DEG_COLUMNS = (
    "gene", "rank", "log2fc", "mean_a", "mean_b", "statistic", "p_value", "p_corrected", "selected",
)


@dataclass(frozen=True, slots=True)
class DegConfig:
    """Settings of a differential-expression run.

    Attributes:
        test: ``wilcoxon`` (Mann-Whitney U, or the signed-rank test when paired) or ``welch``
            (Welch t-test, or the paired t-test when paired).
        correction: ``bonferroni`` or ``bh`` (Benjamini-Hochberg FDR).
        alpha: threshold on the corrected p value.
        fold: fold-change threshold T on the linear scale (|log2 FC| >= log2 T).
        top: at most this many genes in ``genes.txt`` (0: all selected).
    """

    test: str = "wilcoxon"
    correction: str = "bonferroni"
    alpha: float = 0.05
    fold: float = 2.0
    top: int = 0

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ConfigError(f"--test must be one of {', '.join(TESTS)}, got {self.test!r}")
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {self.correction!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"--alpha must be in (0, 1), got {self.alpha}")
        if not self.fold >= 1.0:
            raise ConfigError(f"--fold must be >= 1 (a fold change on the linear scale), got {self.fold}")
        if self.top < 0:
            raise ConfigError("--top must be >= 0")


def parse_group(text: str) -> tuple[str, str, str]:
    """``COL=A,B`` -> ``(column, A, B)``; the fold change is A minus B (A over B on the linear scale).

    Raises:
        ConfigError: malformed text.
    """
    col, sep, rest = (text or "").partition("=")
    values = [v.strip() for v in rest.split(",") if v.strip()]
    if not sep or not col.strip() or len(values) != 2 or values[0] == values[1]:
        raise ConfigError(f"--group must look like COLUMN=A,B with two different values, got {text!r}")
    return col.strip(), values[0], values[1]


def _pair(a_ids: list[str], b_ids: list[str], pairs_a: pd.Series, pairs_b: pd.Series) -> tuple[list[int], list[int]]:
    """Row indices of A and B samples that share a pairing key (first sample of each key)."""
    first_b: dict[str, int] = {}
    for j, key in enumerate(pairs_b.astype(str).tolist()):
        first_b.setdefault(key, j)
    ia, ib, seen = [], [], set()
    for i, key in enumerate(pairs_a.astype(str).tolist()):
        if key in first_b and key not in seen and key != "nan":
            seen.add(key)
            ia.append(i)
            ib.append(first_b[key])
    return ia, ib


def _tests(a: np.ndarray, b: np.ndarray, test: str, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene statistic and two-sided p value (scipy), NaN-safe for constant genes."""
    from scipy import stats

    with np.errstate(all="ignore"):
        if test == "welch":
            res = stats.ttest_rel(a, b, axis=0) if paired else stats.ttest_ind(a, b, axis=0, equal_var=False)
            stat, p = np.asarray(res.statistic, float), np.asarray(res.pvalue, float)
        elif paired:
            stat = np.full(a.shape[1], np.nan)
            p = np.full(a.shape[1], np.nan)
            diff = a - b
            ok = np.any(diff != 0, axis=0)
            if ok.any():
                res = stats.wilcoxon(a[:, ok], b[:, ok], axis=0)
                stat[ok], p[ok] = res.statistic, res.pvalue
        else:
            res = stats.mannwhitneyu(a, b, axis=0, alternative="two-sided")
            stat, p = np.asarray(res.statistic, float), np.asarray(res.pvalue, float)
    p = np.where(np.isfinite(p), p, 1.0)  # a constant gene: no evidence of a difference
    return stat, p


def differential_expression(
    values: np.ndarray,
    genes: list[str],
    labels: np.ndarray,
    group_a: str,
    group_b: str,
    cfg: DegConfig,
    pairs: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The DEG table of ``group_a`` vs ``group_b``.

    Args:
        values: samples x genes, log scale (NaN allowed: such genes are tested on what is there
            only through the means; the tests need complete genes, so NaN genes are not selected).
        genes: gene names (columns of ``values``).
        labels: per-sample group labels (strings).
        group_a, group_b: the two groups; log2 FC = mean(A) - mean(B).
        cfg: test, correction and thresholds.
        pairs: optional per-sample pairing key (e.g. patient): paired tests on the pairs found.

    Returns:
        ``(table, summary)``: the table has :data:`DEG_COLUMNS`, sorted by rank (selected genes
        first, largest |log2 FC| first), and the summary the counts and settings.

    Raises:
        DatasetError: a group is missing or too small.
    """
    from statsmodels.stats.multitest import multipletests

    labels = np.asarray(labels).astype(str)
    ia_all = np.flatnonzero(labels == group_a)
    ib_all = np.flatnonzero(labels == group_b)
    for name, idx in ((group_a, ia_all), (group_b, ib_all)):
        if len(idx) < 2:
            present = ", ".join(sorted(set(labels.tolist()))[:10])
            raise DatasetError(f"group {name!r} has {len(idx)} sample(s); need at least 2 (values present: {present})")
    paired = False
    n_pairs = 0
    if pairs is not None:
        pairs = np.asarray(pairs, dtype=object)
        ia, ib = _pair(
            [str(i) for i in ia_all], [str(i) for i in ib_all], pd.Series(pairs[ia_all]), pd.Series(pairs[ib_all])
        )
        n_pairs = len(ia)
        if n_pairs < 3:
            raise DatasetError(f"--paired-by found {n_pairs} pair(s) between {group_a!r} and {group_b!r}; need >= 3")
        ia_idx, ib_idx = ia_all[ia], ib_all[ib]
        paired = True
    else:
        ia_idx, ib_idx = ia_all, ib_all
    x = np.asarray(values, dtype=np.float64)
    a, b = x[ia_idx], x[ib_idx]
    complete = ~(np.isnan(a).any(0) | np.isnan(b).any(0))
    stat = np.full(x.shape[1], np.nan)
    p = np.ones(x.shape[1])
    if complete.any():
        stat[complete], p[complete] = _tests(a[:, complete], b[:, complete], cfg.test, paired)
    method = "bonferroni" if cfg.correction == "bonferroni" else "fdr_bh"
    p_corr = multipletests(p, alpha=cfg.alpha, method=method)[1]
    with np.errstate(all="ignore"):
        mean_a = np.nanmean(x[ia_all], axis=0)
        mean_b = np.nanmean(x[ib_all], axis=0)
    log2fc = mean_a - mean_b
    threshold = math.log2(cfg.fold)
    selected = complete & (p_corr <= cfg.alpha) & (np.abs(np.nan_to_num(log2fc)) >= threshold)
    table = pd.DataFrame(
        {
            "gene": list(genes),
            "log2fc": log2fc,
            "mean_a": mean_a,
            "mean_b": mean_b,
            "statistic": stat,
            "p_value": p,
            "p_corrected": p_corr,
            "selected": selected.astype(int),
        }
    )
    table["_abs"] = np.abs(np.nan_to_num(log2fc))
    table = table.sort_values(["selected", "_abs", "p_corrected"], ascending=[False, False, True], kind="mergesort")
    table = table.drop(columns="_abs").reset_index(drop=True)
    table.insert(1, "rank", np.arange(1, len(table) + 1))
    test_name = {
        ("welch", False): "Welch t-test", ("welch", True): "paired t-test",
        ("wilcoxon", False): "Mann-Whitney U", ("wilcoxon", True): "Wilcoxon signed-rank",
    }[(cfg.test, paired)]
    summary = {
        "group_a": group_a,
        "group_b": group_b,
        "n_a": int(len(ia_all)),
        "n_b": int(len(ib_all)),
        "paired": paired,
        "n_pairs": n_pairs,
        "test": test_name,
        "correction": "Bonferroni" if cfg.correction == "bonferroni" else "Benjamini-Hochberg",
        "alpha": cfg.alpha,
        "fold": cfg.fold,
        "log2fc_threshold": threshold,
        "n_genes": int(x.shape[1]),
        "n_tested": int(complete.sum()),
        "n_selected": int(selected.sum()),
        "n_up": int((selected & (log2fc > 0)).sum()),
        "n_down": int((selected & (log2fc < 0)).sum()),
    }
    return table, summary


def plot_volcano(table: pd.DataFrame, summary: dict[str, Any], path: str | os.PathLike[str], label_top: int = 10) -> None:
    """Volcano plot: log2 FC against -log10 corrected p, selected genes coloured, top ones named."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from engine.train.metrics import save_figure

    fig = Figure(figsize=(6.5, 5))
    ax = fig.add_subplot(111)
    fc = table["log2fc"].to_numpy(float)
    y = -np.log10(np.clip(table["p_corrected"].to_numpy(float), 1e-300, 1.0))
    sel = table["selected"].to_numpy(bool)
    up, down = sel & (fc > 0), sel & (fc < 0)
    ax.scatter(fc[~sel], y[~sel], s=6, c="#9a9a9a", alpha=0.6, label=f"not selected ({int((~sel).sum())})")
    ax.scatter(fc[up], y[up], s=8, c="#c0392b", label=f"up in {summary['group_a']} ({int(up.sum())})")
    ax.scatter(fc[down], y[down], s=8, c="#2c6fbb", label=f"down in {summary['group_a']} ({int(down.sum())})")
    thr = summary["log2fc_threshold"]
    ax.axhline(-math.log10(summary["alpha"]), color="k", lw=0.8, ls="--")
    if thr > 0:
        ax.axvline(thr, color="k", lw=0.8, ls="--")
        ax.axvline(-thr, color="k", lw=0.8, ls="--")
    for _, row in table[table["selected"] == 1].head(label_top).iterrows():
        ax.annotate(
            str(row["gene"]), (row["log2fc"], -math.log10(max(row["p_corrected"], 1e-300))), fontsize=7
        )
    ax.set_xlabel(f"log2 fold change ({summary['group_a']} vs {summary['group_b']})")
    ax.set_ylabel(f"-log10 p ({summary['correction']})")
    ax.set_title(f"{summary['test']}: {summary['n_selected']} of {summary['n_tested']} genes selected")
    ax.legend(fontsize=8, loc="upper left")
    save_figure(fig, path)


def write_deg(table: pd.DataFrame, summary: dict[str, Any], out_dir: str | os.PathLike[str], top: int = 0) -> Path:
    """Write ``deg.csv``, ``genes.txt`` (selected genes by rank; ``top`` > 0 keeps the first
    ``top``), ``volcano.png`` and ``metrics.json`` into ``out_dir``."""
    out = ensure_writable_dir(out_dir)
    with atomic_path(out / "deg.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    chosen = table.loc[table["selected"] == 1, "gene"].astype(str).tolist()
    if top:
        chosen = chosen[:top]
    atomic_write_text(out / "genes.txt", "".join(f"{g}\n" for g in chosen))
    plot_volcano(table, summary, out / "volcano.png")
    atomic_write_json(out / "metrics.json", {**summary, "genes_written": len(chosen), "top": top})
    return out


def read_gene_list(path: str | os.PathLike[str]) -> list[str]:
    """Genes from a text file: one per line (or comma/tab separated); ``#`` comments and blank
    lines ignored; a ``deg.csv`` is accepted too (its selected genes by rank).

    Raises:
        DatasetError: missing file or no gene in it.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"gene list not found: {p}")
    if p.suffix.lower() == ".csv":
        try:
            t = pd.read_csv(p)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read gene table {p}: {exc}") from exc
        if "gene" not in t.columns:
            raise DatasetError(f"{p} has no 'gene' column")
        if "selected" in t.columns:
            t = t[t["selected"].astype(int) == 1]
        genes = t["gene"].astype(str).tolist()
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read gene list {p}: {exc}") from exc
        genes = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            genes.extend(g.strip() for g in line.replace("\t", ",").split(",") if g.strip())
    seen: set[str] = set()
    unique = [g for g in genes if not (g in seen or seen.add(g))]
    if not unique:
        raise DatasetError(f"gene list {p} holds no gene")
    return unique
