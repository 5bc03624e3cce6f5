"""The study report (``report.json``) and the exploratory analysis (``report.html`` + PNGs).

:func:`study_report` is the machine-readable summary the Datasets view shows: samples,
patients, label balance, panels, missing values per column, dropped leak columns with reasons,
features that could not be computed. :func:`write_report` adds the EDA figures: missing-value map,
correlation heatmap, violin plots of the features that differ between classes (Mann-Whitney U,
Bonferroni), t-SNE of a subsample coloured by class, z-score outliers, top mutated genes by class.
"""

from __future__ import annotations

import html
import os
from typing import Any

import numpy as np
import pandas as pd

from engine.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir


class _Cfg:
    """The settings :func:`engine.genomics.data.prepare` reads, for a report."""

    def __init__(self, study: str, label_column: str, positive: str | None, drop_columns: tuple[str, ...]) -> None:
        self.study, self.label_column, self.positive, self.drop_columns = study, label_column, positive, drop_columns
        self.features, self.min_gene_freq, self.max_genes, self.max_samples, self.seed = "all", 0.02, 300, 0, 0


def study_report(study: str | os.PathLike[str], label_column: str = "SAMPLE_TYPE", positive: str | None = None,
                 drop_columns: tuple[str, ...] = (), _prepared: Any = None) -> dict[str, Any]:
    """The study report as a dict (see the module docstring).

    Raises:
        DatasetError: unreadable study or unusable label.
    """
    from engine.genomics.data import prepare

    d = _prepared or prepare(_Cfg(str(study), label_column, positive, drop_columns))
    st = d.study
    s = st.samples
    panels = pd.Series(st.panel_of).value_counts().to_dict() if st.panel_of else {}
    tt = d.table.roles.get("tumour_type")
    rep = {
        "study_name": st.name, "path": str(st.path), "layout": st.layout, "files": st.files,
        "other_tables": st.extra_tables, "samples": st.n_samples, "patients": st.n_patients,
        "mutations": int(len(st.mutations)) if st.mutations is not None else 0,
        "label_column": d.label.column, "class_names": list(d.class_names), "label_counts": d.label.counts(),
        "label_excluded": d.label.excluded, "panels": {str(k): int(v) for k, v in panels.items()},
        "panel_gene_lists": sorted(st.panel_genes),
        "tumour_types": {str(k): int(v) for k, v in s[tt].value_counts().head(40).items()} if tt else {},
        "missing_per_column": {c: round(float((s[c] == "").mean()), 4) for c in s.columns},
        "dropped_columns": [{"column": c, "reason": r} for c, r in d.leaks.items()],
        "features": d.report["features"],
        "not_computed": d.table.not_computed,
        "notes": d.notes,
    }
    return rep


def write_report(study: str | os.PathLike[str], out_dir: str | os.PathLike[str], label_column: str = "SAMPLE_TYPE",
                 positive: str | None = None, drop_columns: tuple[str, ...] = (), tsne_samples: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Write ``report.json``, the PNGs and ``report.html`` into ``out_dir``; returns the report."""
    from engine.genomics.data import prepare

    out = ensure_writable_dir(out_dir)
    d = prepare(_Cfg(str(study), label_column, positive, drop_columns))
    rep = study_report(study, _prepared=d)
    t = d.table
    y = d.y
    frame = t.frame
    plain = [c for c in t.numeric if not c.startswith("gene_")]
    rep["tests"] = class_tests(frame[plain], y, d.class_names)
    rep["outliers"] = zscore_outliers(frame[plain])
    figures = {
        "missing.png": _missing_map(d.study.samples, frame, seed),
        "correlation.png": _correlation(frame[plain]),
        "violins.png": _violins(frame, y, d.class_names, [r["feature"] for r in rep["tests"] if r["significant"]][:8]),
        "tsne.png": _tsne(frame[plain], y, d.class_names, tsne_samples, seed),
        "top_genes.png": _top_genes(frame, y, d.class_names, t.genes),
    }
    rep["figures"] = [name for name, fig in figures.items() if fig is not None]
    for name, fig in figures.items():
        if fig is not None:
            from engine.train.metrics import save_figure

            save_figure(fig, out / name)
    atomic_write_json(out / "report.json", rep)
    atomic_write_text(out / "report.html", _html(rep))
    return rep


def class_tests(frame: pd.DataFrame, y: np.ndarray, names: tuple[str, str], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Mann-Whitney U per numeric feature between the classes, Bonferroni-corrected."""
    from scipy.stats import mannwhitneyu

    rows = []
    for c in frame.columns:
        x = frame[c].to_numpy(dtype=np.float64)
        a, b = x[(y == 0) & np.isfinite(x)], x[(y == 1) & np.isfinite(x)]
        if len(a) < 5 or len(b) < 5 or np.nanstd(x) == 0:
            continue
        p = float(mannwhitneyu(a, b).pvalue)
        rows.append({"feature": c, f"median_{names[0]}": float(np.median(a)), f"median_{names[1]}": float(np.median(b)),
                     "p": p})
    k = max(len(rows), 1)
    for r in rows:
        r["p_bonferroni"] = min(1.0, r["p"] * k)
        r["significant"] = r["p_bonferroni"] < alpha
    rows.sort(key=lambda r: r["p"])
    return rows


def zscore_outliers(frame: pd.DataFrame, z: float = 4.0) -> list[dict[str, Any]]:
    rows = []
    for c in frame.columns:
        x = frame[c].to_numpy(dtype=np.float64)
        sd = np.nanstd(x)
        if not sd > 0:
            continue
        zz = np.abs((x - np.nanmean(x)) / sd)
        n = int(np.nansum(zz > z))
        if n:
            top = frame.index[np.nanargmax(zz)]
            rows.append({"feature": c, "outliers": n, "max_z": float(np.nanmax(zz)), "most_extreme_sample": str(top)})
    rows.sort(key=lambda r: -r["outliers"])
    return rows


def _fig(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=90)


def _missing_map(samples: pd.DataFrame, frame: pd.DataFrame, seed: int) -> Any:
    cols = [c for c in samples.columns] + [c for c in frame.columns if c.startswith("maf_")]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(samples), min(len(samples), 600), replace=False))
    miss = np.column_stack([
        (samples[c].to_numpy()[rows] == "") if c in samples.columns else np.isnan(frame[c].to_numpy(dtype=float)[rows])
        for c in cols])
    fig = _fig(max(6, 0.25 * len(cols)), 5)
    ax = fig.add_subplot()
    ax.imshow(miss.astype(float), aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set(ylabel=f"samples ({len(rows)} drawn at random)", title="missing values (black)")
    return fig


def _correlation(frame: pd.DataFrame) -> Any:
    if frame.shape[1] < 2:
        return None
    cols = list(frame.columns[:40])
    c = frame[cols].corr().to_numpy()
    fig = _fig(max(6, 0.22 * len(cols) + 2), max(5, 0.22 * len(cols) + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(c, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(cols)), cols, fontsize=6)
    fig.colorbar(im, ax=ax, shrink=0.7)
    ax.set_title("correlation (Pearson)")
    return fig


def _violins(frame: pd.DataFrame, y: np.ndarray, names: tuple[str, str], feats: list[str]) -> Any:
    if not feats:
        return None
    fig = _fig(3 * min(len(feats), 4), 3 * ((len(feats) + 3) // 4))
    for i, c in enumerate(feats):
        ax = fig.add_subplot((len(feats) + 3) // 4, min(len(feats), 4), i + 1)
        x = frame[c].to_numpy(dtype=float)
        parts = [x[(y == k) & np.isfinite(x)] for k in (0, 1)]
        lo, hi = np.nanpercentile(x, [1, 99])
        parts = [np.clip(p, lo, hi) for p in parts]
        if all(len(p) > 1 for p in parts):
            ax.violinplot(parts, showmedians=True)
        ax.set_xticks([1, 2], names, fontsize=7)
        ax.set_title(c, fontsize=8)
    return fig


def _tsne(frame: pd.DataFrame, y: np.ndarray, names: tuple[str, str], n: int, seed: int) -> Any:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if frame.shape[1] < 2 or len(frame) < 20 or n < 20:
        return None
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(frame), min(n, len(frame)), replace=False)
    x = frame.to_numpy(dtype=float)[rows]
    x = np.where(np.isnan(x), np.nanmedian(x, axis=0), x)
    x = np.nan_to_num((x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1))
    x = PCA(n_components=min(20, x.shape[1]), random_state=seed).fit_transform(x)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # OpenMP spin-waits stall on a busy CPU
        emb = TSNE(n_components=2, perplexity=min(30, len(x) // 4), init="pca", random_state=seed,
                   max_iter=500).fit_transform(x)
    fig = _fig(6, 5)
    ax = fig.add_subplot()
    for k in (0, 1):
        sel = y[rows] == k
        ax.scatter(emb[sel, 0], emb[sel, 1], s=4, alpha=0.6, label=names[k])
    ax.legend(markerscale=3)
    ax.set_title(f"t-SNE of {len(rows)} samples (numeric features)")
    return fig


def _top_genes(frame: pd.DataFrame, y: np.ndarray, names: tuple[str, str], genes: list[str]) -> Any:
    if not genes:
        return None
    top = genes[:20]
    share = np.array([[np.nanmean(frame[f"gene_{g}"].to_numpy(dtype=float)[y == k]) for k in (0, 1)] for g in top])
    fig = _fig(8, 4)
    ax = fig.add_subplot()
    xs = np.arange(len(top))
    ax.bar(xs - 0.2, share[:, 0], 0.4, label=names[0])
    ax.bar(xs + 0.2, share[:, 1], 0.4, label=names[1])
    ax.set_xticks(xs, top, rotation=90, fontsize=7)
    ax.set(ylabel="share of samples mutated", title="most often mutated genes by class")
    ax.legend()
    return fig


def _table(rows: list[dict[str, Any]], limit: int = 30) -> str:
    if not rows:
        return "<p>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows[:limit])
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(rep: dict[str, Any]) -> str:
    e = html.escape
    counts = ", ".join(f"{e(k)} {v}" for k, v in rep["label_counts"].items())
    missing = [{"column": c, "missing": v} for c, v in sorted(rep["missing_per_column"].items(), key=lambda kv: -kv[1])]
    figs = "".join(f'<h3>{e(f)}</h3><img src="{e(f)}" style="max-width:100%">' for f in rep.get("figures", []))
    nc = [{"feature": k, "why": v} for k, v in rep["not_computed"].items()]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(rep['study_name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}</style>
</head><body><h1>{e(rep['study_name'])}</h1>
<p>{rep['samples']} samples, {rep['patients']} patients, {rep['mutations']} mutations ({e(rep['layout'])} layout).
Label {e(rep['label_column'])}: {counts}.</p>
<h2>Dropped columns (label leaks)</h2>{_table(rep['dropped_columns'])}
<h2>Features that could not be computed</h2>{_table(nc)}
<h2>Notes</h2><ul>{''.join(f'<li>{e(n)}</li>' for n in rep['notes'] + rep['features']['notes'])}</ul>
<h2>Panels</h2>{_table([{'panel': k, 'samples': v} for k, v in rep['panels'].items()])}
<h2>Missing values per column</h2>{_table(missing, 60)}
<h2>Class differences (Mann-Whitney U, Bonferroni)</h2>{_table(rep.get('tests', []), 40)}
<h2>z-score outliers (|z| &gt; 4)</h2>{_table(rep.get('outliers', []), 30)}
<h2>Figures</h2>{figs}</body></html>
"""
