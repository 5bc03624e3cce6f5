"""How real synthetic expression profiles look, always beside a baseline and real-vs-real.

Measures (each computed for the synthetic set, a multivariate Gaussian baseline and, when a
second set of real samples exists, real-vs-real):

- ``gamma``: the seed's measure, the Pearson correlation of the upper triangles of the real and
  the synthetic gene-gene distance matrices; the distance between two genes is the Euclidean
  distance of their values across the samples of a set (root mean square, so sets of different
  sizes compare).
- ``c2st_auc``: classifier two-sample test, the cross-validated ROC AUC (5-fold, stratified,
  repeated 3 times) of a random forest telling the real evaluation samples from the other
  set; 0.5 means indistinguishable (with few samples real-vs-real often lands below 0.5).
- ``mean_corr`` / ``var_corr``: Pearson correlation of the per-gene means / variances;
  ``corr_agreement``: Pearson correlation of the two gene-gene correlation matrices' upper
  triangles (the same as gamma with the correlation distance 1 - r), ``corr_mae`` their mean
  absolute difference.

The real samples used here must not have been used to fit the generator (held-out samples);
the baseline is fitted to the generator's training samples (Ledoit-Wolf shrinkage covariance).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError
from engine.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir

C2ST_FOLDS = 5
C2ST_REPEATS = 2
C2ST_TREES = 100
MIN_SAMPLES = 6


def _upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(m.shape[0], 1)]


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def gene_distances(x: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Gene x gene distances over the samples (rows) of ``x``: RMS Euclidean or 1 - Pearson r."""
    x = np.asarray(x, np.float64)
    if metric == "correlation":
        with np.errstate(all="ignore"):
            r = np.corrcoef(x.T)
        return 1.0 - np.nan_to_num(r)
    sq = (x * x).sum(0)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x.T @ x), 0.0) / x.shape[0]
    return np.sqrt(d2)


def gamma(real: np.ndarray, other: np.ndarray, metric: str = "euclidean") -> float | None:
    """Pearson correlation of the upper triangles of the two gene-gene distance matrices."""
    if real.shape[1] < 3:
        return None
    return _pearson(_upper(gene_distances(real, metric)), _upper(gene_distances(other, metric)))


def c2st_auc(real: np.ndarray, other: np.ndarray, seed: int = 0, n_trees: int | None = None) -> float | None:
    """Cross-validated AUC of a random forest telling ``real`` from ``other`` (0.5: indistinguishable)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    x = np.vstack([real, other]).astype(np.float32)
    y = np.r_[np.zeros(len(real)), np.ones(len(other))]
    folds = min(C2ST_FOLDS, len(real), len(other))
    if folds < 2:
        return None
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=C2ST_REPEATS, random_state=seed)
    aucs = []
    for k, (tr, te) in enumerate(cv.split(x, y)):
        clf = RandomForestClassifier(
            n_estimators=n_trees or C2ST_TREES, min_samples_leaf=2, class_weight="balanced", random_state=seed + k, n_jobs=1
        )
        clf.fit(x[tr], y[tr])
        aucs.append(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))
    return float(np.mean(aucs))


def compare(real: np.ndarray, other: np.ndarray, seed: int = 0, c2st: bool = True) -> dict[str, Any]:
    """All measures of ``other`` against the real evaluation samples ``real`` (samples x genes)."""
    with np.errstate(all="ignore"):
        cr, co = np.corrcoef(real.T), np.corrcoef(other.T)
    ur, uo = _upper(np.nan_to_num(cr)), _upper(np.nan_to_num(co))
    return {
        "n": int(len(other)),
        "gamma": gamma(real, other, "euclidean"),
        "c2st_auc": c2st_auc(real, other, seed) if c2st else None,
        "mean_corr": _pearson(real.mean(0), other.mean(0)),
        "var_corr": _pearson(real.var(0), other.var(0)),
        "corr_agreement": _pearson(ur, uo),
        "corr_mae": float(np.mean(np.abs(ur - uo))) if ur.size else None,
    }


def gaussian_baseline(train: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples from a multivariate Gaussian fitted to ``train`` (Ledoit-Wolf shrinkage)."""
    from sklearn.covariance import LedoitWolf

    train = np.asarray(train, np.float64)
    cov = LedoitWolf().fit(train).covariance_
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(train.mean(0), cov, size=n, method="eigh").astype(np.float32)


def split_real(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(reference, evaluation)``: a seeded half split of ``n`` real samples."""
    perm = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


def compare_draws(real: np.ndarray, draws: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """:func:`compare` averaged over several independent generated sets of the same size (the
    C2ST of one small draw varies by +-0.1); ``c2st_auc_draws`` keeps each draw's AUC."""
    results = [compare(real, d, seed + k) for k, d in enumerate(draws)]
    out: dict[str, Any] = {"n": results[0]["n"], "draws": len(results)}
    for key in results[0]:
        if key == "n":
            continue
        vals = [r[key] for r in results if r[key] is not None]
        out[key] = float(np.mean(vals)) if vals else None
    out["c2st_auc_draws"] = [r["c2st_auc"] for r in results]
    return out


def evaluate_realism(
    real_eval: np.ndarray,
    synthetic: np.ndarray | list[np.ndarray],
    real_train: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Realism of ``synthetic`` against held-out real samples, beside the baselines.

    Args:
        real_eval: real samples x genes not used to train the generator.
        synthetic: synthetic samples x the same genes, or several independent draws of them
            (measures averaged over the draws; the baseline gets as many draws).
        real_train: the generator's training samples (fit the Gaussian baseline, and the
            real-vs-real reference). ``None``: fit the baseline on ``real_eval`` itself (then
            flagged ``baseline_fitted_on_evaluation``) and no real-vs-real.

    Returns:
        ``(metrics, sets)``: metrics with ``gamma``, ``c2st_auc``, ... of the synthetic set at the
        top level and the same under ``baseline`` and ``real_vs_real``; ``sets`` the arrays
        (``real``, ``synthetic``, ``baseline``, ``reference``) for the plots (first draw).

    Raises:
        DatasetError: too few samples or mismatched genes.
    """
    real_eval = np.asarray(real_eval, np.float64)
    draws = [np.asarray(d, np.float64) for d in (synthetic if isinstance(synthetic, list) else [synthetic])]
    for arr in draws:
        if real_eval.ndim != 2 or arr.ndim != 2 or real_eval.shape[1] != arr.shape[1]:
            raise DatasetError("real and synthetic sets must have the same genes")
    for name, arr in (("real", real_eval), ("synthetic", draws[0])):
        if len(arr) < MIN_SAMPLES:
            raise DatasetError(f"the {name} set has {len(arr)} samples; realism needs at least {MIN_SAMPLES}")
    for name, arr in (("real", real_eval), *(("synthetic", d) for d in draws)):
        if not np.isfinite(arr).all():
            raise DatasetError(f"the {name} set has missing values in the compared genes")
    fit_on = real_train if real_train is not None and len(real_train) >= MIN_SAMPLES else real_eval
    baselines = [gaussian_baseline(fit_on, len(draws[0]), seed + 1 + k) for k in range(len(draws))]
    metrics: dict[str, Any] = compare_draws(real_eval, draws, seed)
    metrics["n_real"] = int(len(real_eval))
    metrics["n_genes"] = int(real_eval.shape[1])
    metrics["baseline"] = {"name": "multivariate Gaussian (Ledoit-Wolf)", **compare_draws(real_eval, baselines, seed)}
    metrics["baseline_fitted_on_evaluation"] = fit_on is real_eval
    sets = {"real": real_eval, "synthetic": draws[0], "baseline": baselines[0]}
    if real_train is not None and len(real_train) >= MIN_SAMPLES:
        reference = np.asarray(real_train, np.float64)
        metrics["real_vs_real"] = {"name": "held-out real vs training real", **compare(real_eval, reference, seed)}
        sets["reference"] = reference
    else:
        metrics["real_vs_real"] = None
    metrics["distance"] = "Euclidean (RMS) between genes across samples"
    metrics["c2st"] = f"random forest ({C2ST_TREES} trees), {C2ST_FOLDS}-fold x {C2ST_REPEATS} stratified CV, ROC AUC"
    return metrics, sets


def summary_line(m: dict[str, Any]) -> str:
    """``gamma 0.96 c2st 0.65 | Gaussian 0.95 / 0.79 | real vs real 0.97 / 0.60``."""

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    text = f"gamma {f(m.get('gamma'))}, C2ST AUC {f(m.get('c2st_auc'))}"
    b = m.get("baseline") or {}
    text += f" | Gaussian baseline {f(b.get('gamma'))} / {f(b.get('c2st_auc'))}"
    r = m.get("real_vs_real")
    if r:
        text += f" | real vs real {f(r.get('gamma'))} / {f(r.get('c2st_auc'))}"
    return text


# -- plots and report ------------------------------------------------------------------------------

_COLORS = {"real": "#333333", "synthetic": "#c0392b", "baseline": "#2c6fbb", "reference": "#7f8c8d"}
_LABELS = {"real": "real (held out)", "synthetic": "synthetic", "baseline": "Gaussian baseline", "reference": "real (training)"}


def _figure(w: float, h: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def plot_overlays(sets: dict[str, np.ndarray], genes: list[str], path: Path, top: int = 8) -> None:
    """Histograms of the ``top`` most variable real genes: real vs synthetic vs baseline."""
    from engine.train.metrics import save_figure

    real = sets["real"]
    order = np.argsort(-real.var(0))[: min(top, real.shape[1])]
    cols = 4
    rows = int(np.ceil(len(order) / cols))
    fig = _figure(3.0 * cols, 2.3 * rows)
    for k, j in enumerate(order):
        ax = fig.add_subplot(rows, cols, k + 1)
        lo = min(float(s[:, j].min()) for s in sets.values())
        hi = max(float(s[:, j].max()) for s in sets.values())
        bins = np.linspace(lo, hi + 1e-9, 25)
        for key in ("real", "synthetic", "baseline"):
            ax.hist(sets[key][:, j], bins=bins, density=True, histtype="step", color=_COLORS[key], label=_LABELS[key])
        ax.set_title(genes[j], fontsize=9)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def plot_moments(sets: dict[str, np.ndarray], path: Path) -> None:
    """Per-gene mean and variance: synthetic (and baseline) against real."""
    from engine.train.metrics import save_figure

    fig = _figure(9, 4)
    real = sets["real"]
    for k, (fn, name) in enumerate(((np.mean, "mean"), (np.var, "variance"))):
        ax = fig.add_subplot(1, 2, k + 1)
        r = fn(real, axis=0)
        for key in ("baseline", "synthetic"):
            ax.scatter(r, fn(sets[key], axis=0), s=8, alpha=0.7, c=_COLORS[key], label=_LABELS[key])
        lim = [float(min(r.min(), 0)), float(r.max()) * 1.05 + 1e-9]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel(f"real per-gene {name}")
        ax.set_ylabel(f"generated per-gene {name}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_pca(sets: dict[str, np.ndarray], path: Path) -> None:
    """PCA fitted on the real samples; all sets projected."""
    from sklearn.decomposition import PCA

    from engine.train.metrics import save_figure

    fit = np.vstack([sets["real"], sets.get("reference", sets["real"])])
    pca = PCA(n_components=2, random_state=0).fit(fit)
    fig = _figure(6, 5)
    ax = fig.add_subplot(111)
    for key in ("reference", "baseline", "synthetic", "real"):
        if key in sets:
            p = pca.transform(sets[key])
            ax.scatter(p[:, 0], p[:, 1], s=10, alpha=0.6, c=_COLORS[key], label=_LABELS[key])
    ev = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ev[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ev[1]:.0%})")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_dendrograms(sets: dict[str, np.ndarray], genes: list[str], path: Path) -> None:
    """Gene dendrograms (average linkage on the correlation distance) of real and synthetic."""
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    from engine.train.metrics import save_figure

    fig = _figure(12, 4.5)
    show = len(genes) <= 80
    for k, key in enumerate(("real", "synthetic")):
        d = gene_distances(sets[key], "correlation")
        np.fill_diagonal(d, 0.0)
        z = linkage(squareform(np.clip((d + d.T) / 2, 0, None), checks=False), method="average")
        ax = fig.add_subplot(1, 2, k + 1)
        dendrogram(z, ax=ax, labels=list(genes) if show else None, no_labels=not show, leaf_font_size=5, color_threshold=0)
        ax.set_title(f"{_LABELS[key]}: gene dendrogram (1 - Pearson r, average linkage)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_correlations(sets: dict[str, np.ndarray], path: Path) -> None:
    """Gene-gene correlation matrices of real and synthetic, genes in the real clustering order."""
    from engine.train.metrics import save_figure

    real = sets["real"]
    with np.errstate(all="ignore"):
        cr = np.nan_to_num(np.corrcoef(real.T))
        cs = np.nan_to_num(np.corrcoef(sets["synthetic"].T))
    order = np.argsort(np.linalg.eigh(cr)[1][:, -1])
    fig = _figure(10, 4.5)
    for k, (m, title) in enumerate(((cr, "real (held out)"), (cs, "synthetic"))):
        ax = fig.add_subplot(1, 2, k + 1)
        im = ax.imshow(m[np.ix_(order, order)], vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{title}: gene-gene correlation", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=ax, shrink=0.8)
    save_figure(fig, path)


def write_report(
    metrics: dict[str, Any], sets: dict[str, np.ndarray], genes: list[str], out_dir: str | os.PathLike[str]
) -> Path:
    """``metrics.json``, the plots and ``report.html`` into ``out_dir``."""
    out = ensure_writable_dir(out_dir)
    atomic_write_json(out / "metrics.json", metrics)
    plot_overlays(sets, genes, out / "overlays.png")
    plot_moments(sets, out / "moments.png")
    plot_pca(sets, out / "pca.png")
    plot_dendrograms(sets, genes, out / "dendrograms.png")
    plot_correlations(sets, out / "correlations.png")
    atomic_write_text(out / "report.html", _html(metrics))
    return out


def _html(m: dict[str, Any]) -> str:
    keys = ("gamma", "c2st_auc", "mean_corr", "var_corr", "corr_agreement", "corr_mae", "n")
    cols = [("synthetic", m), ("Gaussian baseline", m.get("baseline") or {})]
    if m.get("real_vs_real"):
        cols.append(("real vs real", m["real_vs_real"]))

    def cell(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)))

    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in cols)
    rows = "".join(f"<tr><td>{k}</td>" + "".join(f"<td>{cell(c.get(k))}</td>" for _, c in cols) + "</tr>" for k in keys)
    imgs = "".join(
        f'<h2>{html.escape(t)}</h2><img src="{f}" style="max-width:100%">'
        for f, t in (
            ("overlays.png", "Distributions of the most variable genes"),
            ("moments.png", "Per-gene mean and variance"),
            ("pca.png", "PCA (fitted on real samples)"),
            ("dendrograms.png", "Gene dendrograms"),
            ("correlations.png", "Gene-gene correlations"),
        )
    )
    note = (
        "<p><b>Note:</b> the baseline was fitted on the evaluation samples themselves (no training set given).</p>"
        if m.get("baseline_fitted_on_evaluation")
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>MetaScope realism report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
        f"</head><body><h1>Realism of synthetic expression</h1><p>{html.escape(summary_line(m))}</p>"
        f"<p>{m.get('n_real')} real evaluation samples, {m.get('n_genes')} genes. gamma: {html.escape(str(m.get('distance')))}; "
        f"C2ST: {html.escape(str(m.get('c2st')))} (0.5 = indistinguishable).</p>{note}"
        f"<table><tr><th>measure</th>{head}</tr>{rows}</table>{imgs}</body></html>"
    )
