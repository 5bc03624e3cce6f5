"""N-way one-shot evaluation (numpy): seeded random trials, each a query sample and one support
sample per candidate type; the model's similarity and the 1-nearest-neighbour baselines (Pearson
correlation, Euclidean distance, on the same genes) answer the same trials.

``metrics.json``::

    {"ways": {"6": {"siamese": 0.90, "nn1": 0.85, "nn1_euclidean": 0.80, "trials": 2000,
                    "ci": {"siamese": [lo, hi], "nn1": [...], "nn1_euclidean": [...]},
                    "diff_vs_nn1": 0.05, "diff_vs_nn1_ci": [lo, hi]}, ...},
     "skipped_ways": {"10": "only 5 test types"}, "test_types": [...], ...}

``predictions.csv``: one row per trial and N: ``sample,truth,predicted,score,group,correct,ways,
trial,nn1_predicted,nn1_correct,nn1_euclidean_predicted,nn1_euclidean_correct,candidates``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DatasetError
from engine.fileio import atomic_path, atomic_write_json

# similarity(i, j) -> scores for the sample pairs (i[k], j[k]); higher = more alike
PairScore = Callable[[np.ndarray, np.ndarray], np.ndarray]
METHODS = ("siamese", "nn1", "nn1_euclidean")


@dataclass
class Trials:
    ways: int
    query: np.ndarray  # (T,) sample index
    support: np.ndarray  # (T, N) sample index, one per candidate type
    types: np.ndarray  # (T, N) type of each support sample (str)
    truth: np.ndarray  # (T,) column of the query's type in support


def usable_types(labels: np.ndarray, types: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Types with >= 2 samples (a query and a different support sample); the rest with why."""
    labels = np.asarray(labels).astype(str)
    cand = sorted(set(labels) - {""}) if types is None else list(types)
    skipped = {}
    ok = []
    for t in cand:
        n = int((labels == t).sum())
        if n >= 2:
            ok.append(str(t))
        else:
            skipped[str(t)] = f"{n} sample(s), need >= 2"
    return ok, skipped


def make_trials(labels: np.ndarray, types: list[str], ways: int, n_trials: int, seed: int) -> Trials:
    """``n_trials`` random N-way one-shot trials over ``types`` (seeded, reproducible)."""
    labels = np.asarray(labels).astype(str)
    if ways > len(types):
        raise ConfigError(f"{ways}-way needs {ways} types, only {len(types)} available")
    rng = np.random.default_rng([seed, ways])
    members = {t: np.flatnonzero(labels == t) for t in types}
    tarr = np.array(types, dtype=object)
    q = np.empty(n_trials, dtype=int)
    sup = np.empty((n_trials, ways), dtype=int)
    typ = np.empty((n_trials, ways), dtype=object)
    truth = rng.integers(0, ways, size=n_trials)
    for t in range(n_trials):
        chosen = tarr[rng.choice(len(tarr), ways, replace=False)]
        typ[t] = chosen
        for k, ty in enumerate(chosen):
            m = members[ty]
            if k == truth[t]:
                pick = rng.choice(m, 2, replace=False)
                q[t], sup[t, k] = pick[0], pick[1]
            else:
                sup[t, k] = m[rng.integers(len(m))]
    return Trials(ways, q, sup, typ.astype(str), truth)


def answer(trials: Trials, score: PairScore) -> tuple[np.ndarray, np.ndarray]:
    """(predicted column, its score) per trial."""
    qi = np.repeat(trials.query, trials.ways)
    sj = trials.support.ravel()
    s = np.asarray(score(qi, sj), dtype=np.float64).reshape(-1, trials.ways)
    s = np.where(np.isfinite(s), s, -np.inf)
    pred = s.argmax(axis=1)
    return pred, s[np.arange(len(pred)), pred]


def pearson_score(x: np.ndarray) -> PairScore:
    z = x - x.mean(axis=1, keepdims=True)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-9)

    def f(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", z[i], z[j])

    return f


def euclidean_score(x: np.ndarray) -> PairScore:
    sq = (x.astype(np.float64) ** 2).sum(axis=1)

    def f(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        d2 = sq[i] + sq[j] - 2.0 * np.einsum("ij,ij->i", x[i].astype(np.float64), x[j])
        return -np.sqrt(np.maximum(d2, 0.0))

    return f


def wilson_ci(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(max(0.0, mid - half), 5), round(min(1.0, mid + half), 5)]


def evaluate_oneshot(labels: np.ndarray, samples: list[str], scorers: dict[str, PairScore], types: list[str],
                     ways: list[int], n_trials: int, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Accuracy of every scorer (``{"siamese": f, "nn1": g, ...}``) on the same trials per N.

    Returns:
        ``(metrics dict as in the module docstring, predictions frame)``.
    """
    types, skipped_types = usable_types(labels, types)
    if len(types) < 2:
        raise DatasetError(f"one-shot evaluation needs >= 2 types with >= 2 samples each, got {len(types)}")
    out: dict = {"ways": {}, "skipped_ways": {}, "test_types": types, "skipped_types": skipped_types,
                 "n_test_samples": int(np.isin(np.asarray(labels).astype(str), types).sum()),
                 "trials_per_way": n_trials, "seed": seed, "methods": list(scorers)}
    rows = []
    main = next(iter(scorers))
    for n in ways:
        if n > len(types) or n < 2:
            out["skipped_ways"][str(n)] = f"only {len(types)} test types" if n > len(types) else "N must be >= 2"
            continue
        tr = make_trials(labels, types, n, n_trials, seed)
        entry: dict = {"trials": n_trials, "ci": {}}
        preds = {}
        for name, f in scorers.items():
            pred, sc = answer(tr, f)
            ok = pred == tr.truth
            preds[name] = (pred, sc, ok)
            entry[name] = round(float(ok.mean()), 5)
            entry["ci"][name] = wilson_ci(int(ok.sum()), n_trials)
        if "nn1" in preds and main != "nn1":
            d = preds[main][2].astype(float) - preds["nn1"][2].astype(float)
            half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            entry["diff_vs_nn1"] = round(float(d.mean()), 5)
            entry["diff_vs_nn1_ci"] = [round(float(d.mean() - half), 5), round(float(d.mean() + half), 5)]
        out["ways"][str(n)] = entry
        rows.append(_rows(tr, preds, samples, main))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["sample", "truth", "predicted"])
    return out, frame


def _rows(tr: Trials, preds: dict, samples: list[str], main: str) -> pd.DataFrame:
    idx = np.arange(len(tr.query))
    truth = tr.types[idx, tr.truth]
    pred, sc, ok = preds[main]
    df = pd.DataFrame({
        "sample": [samples[i] for i in tr.query], "truth": truth, "predicted": tr.types[idx, pred],
        "score": np.round(sc, 6), "group": truth, "correct": ok.astype(int), "ways": tr.ways, "trial": idx + 1,
    })
    for name, (p, _, k) in preds.items():
        if name != main:
            df[f"{name}_predicted"] = tr.types[idx, p]
            df[f"{name}_correct"] = k.astype(int)
    df["support"] = [";".join(samples[j] for j in row) for row in tr.support]
    df["candidates"] = [";".join(row) for row in tr.types]
    return df


def write_oneshot(out_dir: Path, metrics: dict, predictions: pd.DataFrame, title: str = "N-way one-shot") -> None:
    """metrics.json, predictions.csv (errors first) and accuracy_vs_n.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "metrics.json", metrics)
    if len(predictions):
        predictions = predictions.sort_values(["correct", "ways", "trial"], kind="stable")
    with atomic_path(out_dir / "predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    plot_accuracy(metrics, out_dir / "accuracy_vs_n.png", title)


def plot_accuracy(metrics: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.train.metrics import save_figure

    ways = sorted(int(k) for k in metrics["ways"])
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
    labels = {"siamese": "Siamese", "nn1": "1-NN (Pearson)", "nn1_euclidean": "1-NN (Euclidean)"}
    for k, name in enumerate(metrics.get("methods", METHODS)):
        acc = [metrics["ways"][str(n)].get(name) for n in ways]
        if not ways or acc[0] is None:
            continue
        ci = [metrics["ways"][str(n)]["ci"][name] for n in ways]
        err = np.array([[a - c[0] for a, c in zip(acc, ci, strict=True)], [c[1] - a for a, c in zip(acc, ci, strict=True)]])
        ax.errorbar(np.array(ways) + (k - 1) * 0.06, acc, yerr=err, marker="o", capsize=3, label=labels.get(name, name))
    ax.plot(ways, [1.0 / n for n in ways], ls=":", color="grey", label="chance")
    ax.set_xlabel("N (types per trial)")
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(ways)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def summary_line(metrics: dict) -> str:
    parts = []
    for n, e in sorted(metrics["ways"].items(), key=lambda kv: int(kv[0])):
        s = f"{n}-way siamese {e.get('siamese', float('nan')):.3f}" if "siamese" in e else f"{n}-way"
        parts.append(f"{s} vs 1-NN {e.get('nn1', float('nan')):.3f}")
    skipped = metrics.get("skipped_ways") or {}
    if skipped:
        parts.append("skipped " + ", ".join(f"{k}-way ({v})" for k, v in skipped.items()))
    return "; ".join(parts)
