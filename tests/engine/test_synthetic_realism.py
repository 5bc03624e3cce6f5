"""Realism measures (gamma, C2ST, moments) and ``metascope expression realism``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.errors import DatasetError
from engine.expression import realism
from engine.expression.realism import c2st_auc, evaluate_realism, gamma, gaussian_baseline, gene_distances


@pytest.fixture(autouse=True)
def _small_c2st(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realism, "C2ST_TREES", 20)
    monkeypatch.setattr(realism, "C2ST_REPEATS", 1)


def _real(n: int = 60, genes: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 5 + rng.normal(size=(n, 2)) @ rng.normal(size=(2, genes)) + 0.5 * rng.normal(size=(n, genes))
    return x + np.arange(genes)  # genes at different levels


def test_gamma_and_distances() -> None:
    x = _real()
    d = gene_distances(x)
    j, k = 1, 4
    assert d[j, k] == pytest.approx(np.sqrt(np.mean((x[:, j] - x[:, k]) ** 2)))
    assert gamma(x, x) == pytest.approx(1.0)
    assert gamma(x, x[:30]) > 0.9  # sets of different sizes compare
    shuffled = x[:, np.random.default_rng(1).permutation(x.shape[1])]
    assert gamma(x, shuffled) < 0.9


def test_c2st_separates_shifted_sets_only() -> None:
    a, b = _real(seed=1), _real(seed=2)
    assert c2st_auc(a, a + 3.0) > 0.95
    # same generating process (same loadings: seed of the loadings is the first draw) -> near 0.5
    rng = np.random.default_rng(5)
    same = rng.permutation(np.vstack([a, b]))
    assert 0.25 < c2st_auc(same[:60], same[60:]) < 0.75


def test_evaluate_realism_reports_baseline_and_real_vs_real() -> None:
    x = _real(n=80)
    train, held = x[:60], x[60:]
    synthetic = gaussian_baseline(train, 60, seed=3)
    metrics, sets = evaluate_realism(held, synthetic, train)
    for block in (metrics, metrics["baseline"], metrics["real_vs_real"]):
        assert {"gamma", "c2st_auc", "mean_corr", "var_corr", "corr_agreement"} <= set(block)
    assert metrics["mean_corr"] > 0.95 and not metrics["baseline_fitted_on_evaluation"]
    assert set(sets) == {"real", "synthetic", "baseline", "reference"}
    two, _ = evaluate_realism(held, [synthetic, gaussian_baseline(train, 60, seed=4)], train)
    assert two["draws"] == 2 and len(two["c2st_auc_draws"]) == 2 and two["baseline"]["draws"] == 2
    assert two["c2st_auc"] == pytest.approx(np.mean(two["c2st_auc_draws"]))
    with pytest.raises(DatasetError, match="same genes"):
        evaluate_realism(held, synthetic[:, :5], train)
    with pytest.raises(DatasetError, match="at least"):
        evaluate_realism(held[:3], synthetic, train)


def test_cli_realism_splits_real_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = _real(n=40)
    genes = [f"g{i}" for i in range(10)]
    pd.DataFrame(x, index=pd.Index([f"r{i}" for i in range(40)], name="sample"), columns=genes).to_csv(
        tmp_path / "real.tsv", sep="\t"
    )
    syn = pd.DataFrame(gaussian_baseline(x, 30, 1), columns=genes)
    syn.insert(0, "sex", ["female", "male"] * 15)
    syn.insert(0, "age", np.arange(30) + 40)  # a numeric covariate column must not count as a gene
    syn.insert(0, "sample", [f"synthetic_{i}" for i in range(30)])
    syn.to_csv(tmp_path / "syn.tsv", sep="\t", index=False)
    (tmp_path / "genes.txt").write_text("g0\ng1\ng2\ng3\ng4\n")
    out = tmp_path / "rep"
    rc = main(["expression", "realism", "--real", str(tmp_path / "real.tsv"), "--synthetic", str(tmp_path / "syn.tsv"),
               "--out", str(out)])
    assert rc == 0 and "gamma" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_genes"] == 10 and m["n_real"] == 20 and m["real_vs_real"]["n"] == 20 and "halves" in m["notes"][0]
    for f in ("report.html", "overlays.png", "pca.png", "dendrograms.png", "moments.png", "correlations.png"):
        assert (out / f).stat().st_size > 100
    rc = main(["expression", "realism", "--real", str(tmp_path / "real.tsv"), "--synthetic", str(tmp_path / "syn.tsv"),
               "--genes", str(tmp_path / "genes.txt"), "--out", str(out), "--json"])
    assert rc == 0 and json.loads((out / "metrics.json").read_text())["n_genes"] == 5
    (tmp_path / "bad.txt").write_text("g0\nnope\n")
    rc = main(["expression", "realism", "--real", str(tmp_path / "real.tsv"), "--synthetic", str(tmp_path / "syn.tsv"),
               "--genes", str(tmp_path / "bad.txt"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "not in the real set" in err
