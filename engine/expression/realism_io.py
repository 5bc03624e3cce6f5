"""``expression realism`` on files: real matrix + synthetic TSV -> metrics.json and report.

Which real samples are compared:

- with ``run`` (the WGAN run that made the synthetic set): its held-out samples (never used in
  training); the Gaussian baseline and the real-vs-real reference use its training samples;
- otherwise the real set is split in two seeded halves: the baseline is fitted on one half
  (the reference) and everything is compared on the other half. With fewer than
  ``2 * MIN_SAMPLES`` real samples the whole set is used and there is no real-vs-real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DatasetError


def _columns(m: Any, genes: list[str], what: str) -> np.ndarray:
    from engine.expression.wgan_train import match_genes

    cols, absent = match_genes(m.genes, genes)
    if absent:
        raise DatasetError(f"{len(absent)} gene(s) are not in the {what} set (e.g. {', '.join(absent[:5])})")
    return m.values[:, cols].astype(np.float64)


def same_scale(x_real: np.ndarray, x_syn: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The synthetic values on the real set's log scale: profiles generated from a counts / TPM
    matrix are written on that linear scale, while the real matrix is read on a log scale
    (log2(x+1), :mod:`engine.expression.matrix`). log2(x+1) is applied to the synthetic values
    when they are non-negative and their per-gene medians then match the real ones better."""
    if not np.isfinite(x_syn).all() or x_syn.min() < 0:
        return x_syn, None
    logged = np.log2(x_syn + 1.0)
    med = np.median(x_real, axis=0)
    as_is = float(np.median(np.abs(np.median(x_syn, axis=0) - med)))
    as_log = float(np.median(np.abs(np.median(logged, axis=0) - med)))
    if as_log < as_is:
        return logged, "synthetic values are on a linear scale (counts / TPM): log2(x+1) applied, as to the real matrix"
    return x_syn, None


def realism_from_files(
    real: str | os.PathLike[str],
    synthetic: str | os.PathLike[str],
    out: str | os.PathLike[str],
    genes: str | os.PathLike[str] | None = None,
    samples: str | os.PathLike[str] | None = None,
    where: tuple[str, ...] = (),
    run: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute and write the realism report (see the module docstring); returns the metrics.

    Raises:
        DatasetError / ConfigError: unreadable inputs, no shared genes, too few samples.
    """
    from engine.expression.deg import read_gene_list
    from engine.expression.matrix import read_matrix
    from engine.expression.realism import MIN_SAMPLES, evaluate_realism, split_real, write_report
    from engine.expression.wgan_train import parse_where

    rm = read_matrix(real, samples)
    sm = read_matrix(synthetic, log="no")  # put on the real set's scale by same_scale below
    split: dict[str, Any] | None = None
    if run:
        p = Path(run) / "split.json"
        if not p.is_file():
            raise ConfigError(f"{run} is not a finished or started WGAN run (no split.json)")
        split = json.loads(p.read_text(encoding="utf-8"))
    if genes:
        gene_list = read_gene_list(genes)
    elif split is not None:
        gene_list = list(split["genes"])
    else:
        from engine.expression.wgan_train import match_genes

        absent = set(match_genes(rm.genes, list(sm.genes))[1])
        gene_list = [g for g in sm.genes if g not in absent]
        if len(gene_list) < 3:
            raise DatasetError("the real and synthetic sets share fewer than 3 genes")
    keep = np.ones(len(rm.samples), dtype=bool)
    for w in where:
        col, values = parse_where(w)
        keep &= np.isin(rm.labels(col), values)
    x_real = _columns(rm, gene_list, "real")
    x_syn = _columns(sm, gene_list, "synthetic")
    x_syn, scale_note = same_scale(x_real, x_syn)
    pos = {s: i for i, s in enumerate(rm.samples)}
    notes: list[str] = [scale_note] if scale_note else []
    if split is not None:
        held = [pos[s] for s in split["heldout"] if s in pos]
        train = [pos[s] for s in split["train"] if s in pos]
        if not held:
            raise DatasetError("none of the run's held-out samples is in the real matrix")
        real_eval, real_train = x_real[held], x_real[train] if train else None
        notes.append(f"compared on the run's {len(held)} held-out samples")
    else:
        x = x_real[keep]
        if len(x) >= 2 * MIN_SAMPLES:
            ref, ev = split_real(len(x), seed)
            real_eval, real_train = x[ev], x[ref]
            notes.append(
                f"real set split in halves: {len(ev)} evaluation samples, {len(ref)} reference samples "
                "(baseline fitted on the reference half)"
            )
        else:
            real_eval, real_train = x, None
            notes.append("few real samples: baseline fitted on the evaluation samples, no real-vs-real")
    # a big synthetic file is cut into draws as large as the real reference (at most 5): the
    # C2ST of one small draw is noisy, and sets of equal size compare fairly with real-vs-real
    size = len(real_train) if real_train is not None else len(real_eval)
    k = int(min(5, len(x_syn) // max(size, 1)))
    draws = [x_syn[i * size:(i + 1) * size] for i in range(k)] if k >= 2 else [x_syn]
    metrics, sets = evaluate_realism(real_eval, draws, real_train, seed=seed)
    metrics["notes"] = notes
    metrics["genes"] = gene_list
    write_report(metrics, sets, gene_list, out)
    return metrics

