"""Marker genes of a Siamese run: integrated-gradients saliency of the "same type" score per gene,
and greedy forward selection of a marker set with its 1-NN accuracy curve.

Saliency: for each sample (up to ``per_type`` per type), the Siamese logit that it is of the
same type as its type's mean embedding, integrated gradients from the average profile (0 after
normalisation) to the sample; a gene's saliency is the mean |attribution| (overall and per type).
Greedy selection: starting empty, add the candidate gene (top ``candidates`` by saliency) that
most raises the leave-one-out 1-NN (Euclidean, normalised values) type accuracy; stop after
``max_markers``.

Writes ``markers.csv`` (rank, gene, saliency, saliency_norm, top_type, gene_weight (the learned
weight of the gene in the correlation branch), greedy_step, greedy_nn1_accuracy, saliency_<type>...), ``markers_curve.csv`` (step, gene, nn1_accuracy,
n_genes), ``markers.json`` and ``saliency.png``. Needs torch (the run's checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import ConfigError
from engine.expression.matrix import ExpressionMatrix, align_genes
from engine.expression.preprocess import GenePrep
from engine.fileio import atomic_path, atomic_write_json


def _load_net(run: Path):
    from engine.expression.siamese_model import SiameseModelConfig, SiameseNet
    from engine.train.runfolder import load_checkpoint

    best = run / "checkpoints" / "best.pt"
    if not best.is_file():
        raise ConfigError(f"{run} has no trained Siamese model (checkpoints/best.pt); markers need a finished run")
    ck = load_checkpoint(best)
    net = SiameseNet(SiameseModelConfig.from_dict(ck["model_config"]))
    net.load_state_dict(ck["model"])
    return net.eval()


def integrated_gradients(net, x: np.ndarray, labels: np.ndarray, steps: int = 16) -> np.ndarray:
    """(n, G) attributions of the same-type logit against each sample's type mean embedding."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        emb = net.encoder(xt)
    protos = {t: emb[torch.from_numpy(labels == t)].mean(0) for t in np.unique(labels)}
    target = torch.stack([protos[t] for t in labels])
    grads = torch.zeros_like(xt)
    for a in (np.arange(steps) + 0.5) / steps:
        xi = (xt * float(a)).requires_grad_(True)
        logit = net.head(net.encoder(xi), target).sum()
        (g,) = torch.autograd.grad(logit, xi)
        grads += g
    return (xt * grads / steps).numpy()


def _loo_nn_accuracy(d2: np.ndarray, codes: np.ndarray) -> float:
    d = d2.copy()
    np.fill_diagonal(d, np.inf)
    return float((codes[d.argmin(axis=1)] == codes).mean())


def greedy_selection(x: np.ndarray, codes: np.ndarray, candidates: np.ndarray, max_markers: int
                     ) -> list[tuple[int, float]]:
    """[(gene column, LOO 1-NN accuracy after adding it), ...] in selection order."""
    n = x.shape[0]
    d2 = np.zeros((n, n), dtype=np.float64)
    chosen: list[tuple[int, float]] = []
    left = list(candidates)
    for _ in range(min(max_markers, len(left))):
        best_j, best_acc, best_d = None, -1.0, None
        for j in left:
            col = x[:, j].astype(np.float64)
            dj = d2 + (col[:, None] - col[None, :]) ** 2
            acc = _loo_nn_accuracy(dj, codes)
            if acc > best_acc + 1e-12:
                best_j, best_acc, best_d = j, acc, dj
        chosen.append((int(best_j), best_acc))
        d2 = best_d
        left.remove(best_j)
    return chosen


def compute_markers(run_dir, out_dir, m: ExpressionMatrix | None = None, labels: np.ndarray | None = None,
                    per_type: int = 20, candidates: int = 40, max_markers: int = 15, max_samples: int = 400,
                    seed: int = 0) -> dict:
    """Saliency + greedy marker selection for a Siamese run; see the module docstring."""
    from engine.expression.siamese_train import load_data, load_siamese_config

    run, out = Path(run_dir), Path(out_dir)
    cfg = load_siamese_config(run)
    prep = GenePrep.from_dict(json.loads((run / "genes.json").read_text(encoding="utf-8")))
    if m is None or labels is None:
        m, labels = load_data(cfg)
    net = _load_net(run)
    raw, _ = align_genes(m, prep.genes, fill=prep.fill)
    x = prep.transform(raw)
    rng = np.random.default_rng(seed)
    types = sorted(set(labels))
    pick = np.concatenate([rng.permutation(np.flatnonzero(labels == t))[:per_type] for t in types])
    attr = np.abs(integrated_gradients(net, x[pick], labels[pick]))
    sal = attr.mean(axis=0)
    per = {t: attr[labels[pick] == t].mean(axis=0) for t in types}
    order = np.argsort(-sal, kind="stable")
    sub = np.concatenate([rng.permutation(np.flatnonzero(labels == t))[: max(2, max_samples // len(types))]
                          for t in types])
    codes = np.unique(labels[sub], return_inverse=True)[1]
    chosen = greedy_selection(x[sub], codes, order[:candidates], max_markers)
    step_of = {j: (k + 1, acc) for k, (j, acc) in enumerate(chosen)}
    per_mat = np.stack([per[t] for t in types], axis=1)
    table = pd.DataFrame({
        "rank": np.arange(1, len(order) + 1), "gene": [prep.genes[j] for j in order],
        "saliency": np.round(sal[order], 6), "saliency_norm": np.round(sal[order] / max(sal.max(), 1e-12), 4),
        "top_type": [types[int(per_mat[j].argmax())] for j in order],
        "greedy_step": [step_of[j][0] if j in step_of else "" for j in order],
        "greedy_nn1_accuracy": [round(step_of[j][1], 4) if j in step_of else "" for j in order],
    })
    if getattr(net.encoder, "cfg", None) is not None and net.encoder.cfg.corr_skip:
        import torch

        with torch.no_grad():  # the learned weight of each gene in the correlation branch
            table.insert(5, "gene_weight", np.round(net.encoder.weights().numpy()[order], 4))
    for t in types:
        table[f"saliency_{t}"] = np.round(per[t][order], 6)
    curve = pd.DataFrame({"step": np.arange(1, len(chosen) + 1), "gene": [prep.genes[j] for j, _ in chosen],
                          "nn1_accuracy": [round(a, 4) for _, a in chosen]})
    xs = x[sub].astype(np.float64)
    sq = (xs**2).sum(axis=1)
    all_acc = _loo_nn_accuracy(sq[:, None] + sq[None, :] - 2.0 * xs @ xs.T, codes)
    summary = {"markers": curve["gene"].tolist(), "curve": curve["nn1_accuracy"].tolist(),
               "nn1_accuracy_all_genes": all_acc, "n_genes": len(prep.genes), "types": types,
               "samples_saliency": int(len(pick)), "samples_greedy": int(len(sub)),
               "method": "integrated gradients (16 steps) of the same-type logit vs the type mean embedding; "
                         "greedy forward selection by leave-one-out 1-NN (Euclidean) accuracy"}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "markers.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "markers_curve.csv") as tmp:
        curve.to_csv(tmp, index=False)
    atomic_write_json(out / "markers.json", summary)
    plot_markers(table, curve, all_acc, out / "saliency.png")
    return summary


def plot_markers(table: pd.DataFrame, curve: pd.DataFrame, all_acc: float | None, path: Path, top: int = 30) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.train.metrics import save_figure

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    t = table.head(top)
    a1.bar(range(len(t)), t["saliency_norm"], color="#3b6ea5")
    a1.set_xticks(range(len(t)))
    a1.set_xticklabels(t["gene"], rotation=90, fontsize=7)
    a1.set_ylabel("saliency (relative)")
    a1.set_title(f"top {len(t)} genes by integrated-gradients saliency")
    a2.plot(curve["step"], curve["nn1_accuracy"], marker="o")
    if all_acc is not None:
        a2.axhline(all_acc, ls=":", color="grey", label=f"all genes {all_acc:.3f}")
        a2.legend(fontsize=8)
    a2.set_xlabel("markers selected")
    a2.set_ylabel("1-NN accuracy (leave-one-out)")
    a2.set_title("greedy forward selection")
    a2.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)
