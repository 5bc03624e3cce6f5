"""Gene filter and input normalisation for the one-shot model (numpy only).

:func:`fit_gene_filter` picks the genes the model reads (drops lowly expressed and near-constant
genes, keeps the top-k by variance, orders them so correlated genes sit next to each other for the
1D convolutions) and the normalisation: each profile is centred and scaled across its genes (the
same invariance Pearson correlation has: library size and platform offsets drop out), then each
gene is standardised with training statistics. The fitted :class:`GenePrep` travels in the
model package, so a new matrix is aligned and normalised exactly like the training one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import DatasetError


@dataclass
class GenePrep:
    """Genes in model input order, fill values (training log means) and normalisation."""

    genes: list[str]
    fill: np.ndarray  # training mean of each gene on the log scale (for genes a matrix lacks)
    center: np.ndarray  # per-gene mean after per-sample normalisation
    scale: np.ndarray  # per-gene std after per-sample normalisation
    sample_norm: bool = True

    def transform(self, x: np.ndarray) -> np.ndarray:
        """float32 model input from log values already in ``genes`` order."""
        x = np.asarray(x, dtype=np.float32)
        if self.sample_norm:
            x = sample_normalise(x)
        return ((x - self.center) / self.scale).astype(np.float32)

    def to_dict(self) -> dict:
        return {"genes": list(self.genes), "fill": self.fill.round(5).tolist(),
                "center": self.center.round(6).tolist(), "scale": self.scale.round(6).tolist(),
                "sample_norm": bool(self.sample_norm)}

    @classmethod
    def from_dict(cls, d: dict) -> GenePrep:
        return cls([str(g) for g in d["genes"]], np.asarray(d["fill"], np.float32),
                   np.asarray(d["center"], np.float32), np.asarray(d["scale"], np.float32),
                   bool(d.get("sample_norm", True)))


def sample_normalise(x: np.ndarray) -> np.ndarray:
    """Centre and scale each row (profile) across its genes."""
    x = np.asarray(x, dtype=np.float32)
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return (x - mu) / np.maximum(sd, 1e-6)


def _cluster_order(x: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage clustering of genes on 1 - correlation."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if x.shape[1] < 3:
        return np.arange(x.shape[1])
    sub = x[:: max(1, x.shape[0] // 2000)]
    corr = np.corrcoef(sub, rowvar=False)
    corr = np.nan_to_num(corr, nan=0.0)
    dist = np.clip(1.0 - corr, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    dist = (dist + dist.T) / 2.0
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def fit_gene_filter(values: np.ndarray, genes: list[str], top_k: int = 1000, min_mean_quantile: float = 0.1,
                    min_var: float = 1e-4, order: str = "cluster", sample_norm: bool = True
                    ) -> tuple[GenePrep, dict]:
    """Choose the model genes on training samples ``values`` (samples x genes, log scale).

    Returns:
        ``(GenePrep, report)``; report counts the genes dropped by each rule.

    Raises:
        DatasetError: fewer than 8 genes survive the filter.
    """
    x = np.asarray(values, dtype=np.float64)
    mean, var = x.mean(axis=0), x.var(axis=0)
    low_mean = mean < np.quantile(mean, min_mean_quantile) if min_mean_quantile > 0 else np.zeros_like(mean, bool)
    low_var = var < min_var
    keep = ~(low_mean | low_var)
    idx = np.flatnonzero(keep)
    if idx.size > top_k > 0:
        idx = idx[np.argsort(-var[idx], kind="stable")[:top_k]]
    if idx.size < 8:
        raise DatasetError(f"only {idx.size} genes pass the gene filter (need >= 8); the matrix is too small")
    idx = np.sort(idx)
    if order == "cluster":
        idx = idx[_cluster_order(x[:, idx])]
    elif order != "input":
        raise ValueError(f"unknown gene order {order!r}")
    sel = x[:, idx].astype(np.float32)
    normed = sample_normalise(sel) if sample_norm else sel
    center, scale = normed.mean(axis=0), normed.std(axis=0)
    prep = GenePrep([genes[i] for i in idx], sel.mean(axis=0).astype(np.float32), center.astype(np.float32),
                    np.maximum(scale, 1e-3).astype(np.float32), sample_norm)
    report = {"genes_in": len(genes), "dropped_low_mean": int(low_mean.sum()), "dropped_low_variance": int(
        (low_var & ~low_mean).sum()), "kept": len(prep.genes), "top_k": top_k, "order": order,
        "sample_normalisation": sample_norm}
    return prep, report
