"""Using a Siamese package with onnxruntime only (no torch): the N-way one-shot test on a labelled
matrix, and classifying one query sample against a support set (one or more samples per type).

``classify`` writes ``similarity.csv`` (support_sample, type, similarity, pearson, rank),
``classification.json`` (query, predicted type, per-type scores, gene alignment reports) and
``similarity.png``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DatasetError
from engine.expression.matrix import ExpressionMatrix, _open_text
from engine.expression.oneshot import evaluate_oneshot, pearson_score, write_oneshot
from engine.expression.siamese_export import load_package, package_scorers
from engine.fileio import atomic_path, atomic_write_json


def oneshot_test(model, matrix: ExpressionMatrix, label_column: str, types: list[str] | None, ways: list[int],
                 trials: int, seed: int, out_dir) -> dict:
    """N-way one-shot accuracy of the package vs 1-NN on ``matrix``; writes the files of
    :func:`engine.expression.oneshot.write_oneshot` to ``out_dir`` and returns the metrics."""
    pkg = load_package(model)
    labels = matrix.labels(label_column)
    present = sorted(set(labels) - {""})
    trained = set(pkg.meta.training_data.get("train_types") or []) | set(pkg.meta.training_data.get("val_types") or [])
    note = None
    if types:
        missing = [t for t in types if t not in present]
        if missing:
            raise ConfigError(f"type(s) not in column '{label_column}': {', '.join(missing)}; "
                              f"available: {', '.join(present)}")
    else:
        types = [t for t in present if t not in trained]
        note = "types not seen in training (nor used for validation)" if types else None
        if len(types) < 2:
            types, note = present, "all types of the matrix (fewer than 2 are unseen in training)"
    seen = sorted(set(types) & trained)
    keep = np.isin(labels, types)
    sub = matrix.subset(samples=keep)
    scorers, align = package_scorers(pkg, sub)
    metrics, preds = evaluate_oneshot(labels[keep], sub.samples, scorers, list(types), ways, trials, seed)
    metrics.update({"model": str(pkg.path), "model_name": pkg.meta.name, "gene_alignment": align,
                    "types_seen_in_training": seen, "type_selection": note or "given by the user",
                    "matrix_report": matrix.report})
    write_oneshot(Path(out_dir), metrics, preds, title=f"one-shot, {len(metrics['test_types'])} types")
    return metrics


def read_support(path) -> pd.DataFrame:
    """SUPPORT.tsv: sample id + type per row (header optional) -> frame with columns sample, type."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"support table not found: {p}")
    with _open_text(p) as fh:
        text = fh.read()
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters="\t,;")
        sep = dialect.delimiter
    except csv.Error:
        sep = "\t" if "\t" in text else ","
    rows = [r for r in csv.reader(text.splitlines(), delimiter=sep) if r and any(c.strip() for c in r)]
    if rows and (rows[0][0].strip().lower() in {"sample", "sample_id", "id", "barcode"}
                 or (len(rows[0]) > 1 and rows[0][1].strip().lower() in {"type", "label", "cancer_type", "class"})):
        rows = rows[1:]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 2 or not r[0].strip() or not r[1].strip()]
    if bad:
        raise DatasetError(f"support table {p.name}: row {bad[0]} needs a sample id and a type")
    if len(rows) < 2:
        raise DatasetError(f"support table {p.name} needs >= 2 rows (one sample per candidate type)")
    df = pd.DataFrame({"sample": [r[0].strip() for r in rows], "type": [r[1].strip() for r in rows]})
    if df["type"].nunique() < 2:
        raise DatasetError(f"support table {p.name} has a single type; give one sample per candidate type")
    return df


def classify_query(model, matrix: ExpressionMatrix, query: str, support: pd.DataFrame,
                   support_matrix: ExpressionMatrix | None = None) -> dict:
    """Similarity of ``query`` (a sample of ``matrix``) to every support sample; the predicted type
    is the type of the most similar support sample."""
    pkg = load_package(model)
    if query not in set(matrix.samples):
        raise ConfigError(f"query sample '{query}' is not in the matrix (e.g. {matrix.samples[0]})")
    smat = support_matrix or matrix
    have = set(smat.samples)
    missing = [s for s in support["sample"] if s not in have]
    if missing:
        raise ConfigError(f"{len(missing)} support sample(s) not in the support matrix, e.g. {missing[0]}")
    xq, align_q = pkg.prepare(matrix.subset(samples=[query]))
    xs, align_s = pkg.prepare(smat.subset(samples=list(support["sample"])))
    eq, es = pkg.embed(xq), pkg.embed(xs)
    sim = pkg.similarity(np.repeat(eq, len(es), axis=0), es)
    both = np.vstack([xq, xs])
    pear = pearson_score(both)(np.zeros(len(xs), int), np.arange(1, len(xs) + 1))
    table = support.copy()
    table["similarity"] = np.round(sim.astype(float), 6)
    table["pearson"] = np.round(pear, 6)
    table = table.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    per_type = table.groupby("type", sort=False)["similarity"].max().sort_values(ascending=False)
    nn1 = table.sort_values("pearson", ascending=False, kind="stable").iloc[0]["type"]
    return {"query": query, "predicted": str(per_type.index[0]), "score": float(per_type.iloc[0]),
            "per_type": {str(k): float(v) for k, v in per_type.items()}, "nn1_predicted": str(nn1),
            "support": table.rename(columns={"sample": "support_sample"}).to_dict(orient="records"),
            "model": str(pkg.path), "gene_alignment": {"query": align_q, "support": align_s}}


def write_classification(result: dict, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(result["support"])
    with atomic_path(out / "similarity.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_json(out / "classification.json", result)
    _plot_similarity(table, result, out / "similarity.png")
    return out


def _plot_similarity(table: pd.DataFrame, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.train.metrics import save_figure

    fig, ax = plt.subplots(figsize=(6, 0.35 * len(table) + 1.5), dpi=100)
    names = [f"{r.type} ({r.support_sample})" for r in table.itertuples()]
    colors = ["#c0392b" if t == result["predicted"] else "#7f8c8d" for t in table["type"]]
    ax.barh(range(len(table))[::-1], table["similarity"], color=colors)
    ax.set_yticks(range(len(table))[::-1])
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("similarity (same type)")
    ax.set_title(f"{result['query']}: {result['predicted']}", fontsize=9)
    save_figure(fig, path)
    plt.close(fig)

