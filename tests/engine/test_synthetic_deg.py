"""Differential expression (``metascope expression deg``) on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.errors import ConfigError, DatasetError
from engine.expression.deg import DegConfig, differential_expression, parse_group, read_gene_list


def _data(n: int = 12, genes: int = 30, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Paired tumour / normal samples; genes g0 (up 3) and g1 (down 2) differ, the rest do not."""
    rng = np.random.default_rng(seed)
    patient_effect = rng.normal(0, 1.0, size=(n, genes))
    normal = 8 + patient_effect + rng.normal(0, 0.15, size=(n, genes))
    tumour = 8 + patient_effect + rng.normal(0, 0.15, size=(n, genes))
    tumour[:, 0] += 3.0
    tumour[:, 1] -= 2.0
    tumour[:, 2] += 0.7  # significant when paired but below the fold threshold
    values = np.vstack([tumour, normal])
    labels = np.array(["tumour"] * n + ["normal"] * n)
    pairs = np.array([f"p{i}" for i in range(n)] * 2)
    return values, [f"g{j}" for j in range(genes)], labels, pairs


def test_intersection_rule_and_fold_change() -> None:
    values, genes, labels, pairs = _data()
    table, summary = differential_expression(values, genes, labels, "tumour", "normal", DegConfig(), pairs=pairs)
    selected = set(table.loc[table["selected"] == 1, "gene"])
    assert selected == {"g0", "g1"}
    assert summary["paired"] and summary["n_pairs"] == 12 and summary["test"] == "Wilcoxon signed-rank"
    row = table.set_index("gene").loc["g0"]
    assert row["log2fc"] == pytest.approx(values[:12, 0].mean() - values[12:, 0].mean())
    assert list(table["gene"][:2]) == ["g0", "g1"]  # ranked by |log2 FC|
    assert table.set_index("gene").loc["g2", "p_corrected"] <= 0.05  # significant but small fold: not selected


def test_tests_match_scipy_and_corrections() -> None:
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    values, genes, labels, _ = _data()
    for test, fn in (("welch", lambda a, b: stats.ttest_ind(a, b, equal_var=False).pvalue),
                     ("wilcoxon", lambda a, b: stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)):
        for corr, method in (("bonferroni", "bonferroni"), ("bh", "fdr_bh")):
            table, summary = differential_expression(values, genes, labels, "tumour", "normal", DegConfig(test, corr))
            assert not summary["paired"]
            t = table.set_index("gene").loc[genes]
            expected = np.array([fn(values[:12, j], values[12:, j]) for j in range(len(genes))])
            np.testing.assert_allclose(t["p_value"], expected, rtol=1e-10)
            np.testing.assert_allclose(t["p_corrected"], multipletests(expected, method=method)[1], rtol=1e-10)


def test_bad_groups_and_settings() -> None:
    values, genes, labels, pairs = _data()
    with pytest.raises(DatasetError, match="'missing' has 0"):
        differential_expression(values, genes, labels, "tumour", "missing", DegConfig())
    with pytest.raises(DatasetError, match="pair"):
        differential_expression(values, genes, labels, "tumour", "normal", DegConfig(), pairs=np.arange(24).astype(str))
    for bad in ("sample_type", "sample_type=a", "=a,b", "c=a,a"):
        with pytest.raises(ConfigError):
            parse_group(bad)
    with pytest.raises(ConfigError):
        DegConfig(fold=0.5)
    with pytest.raises(ConfigError):
        DegConfig(test="ttest")


def _write(tmp_path: Path) -> tuple[Path, Path]:
    values, genes, labels, pairs = _data()
    samples = [f"s{i}" for i in range(len(labels))]
    pd.DataFrame(values, index=pd.Index(samples, name="sample"), columns=genes).to_csv(tmp_path / "m.tsv", sep="\t")
    pd.DataFrame({"sample": samples, "patient": pairs, "sample_type": labels}).to_csv(
        tmp_path / "s.tsv", sep="\t", index=False
    )
    return tmp_path / "m.tsv", tmp_path / "s.tsv"


def test_cli_writes_table_gene_list_volcano(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m, s = _write(tmp_path)
    out = tmp_path / "deg"
    rc = main(["expression", "deg", "--matrix", str(m), "--samples", str(s), "--group", "sample_type=tumour,normal",
               "--paired-by", "patient", "--out", str(out), "--json"])
    assert rc == 0
    assert "2 of 30 genes selected" in capsys.readouterr().out
    table = pd.read_csv(out / "deg.csv")
    assert list(table.columns) == ["gene", "rank", "log2fc", "mean_a", "mean_b", "statistic", "p_value",
                                   "p_corrected", "selected"]
    assert (out / "genes.txt").read_text().split() == ["g0", "g1"]
    assert read_gene_list(out / "genes.txt") == ["g0", "g1"] == read_gene_list(out / "deg.csv")
    assert (out / "volcano.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["n_selected"] == 2


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m, s = _write(tmp_path)
    rc = main(["expression", "deg", "--matrix", str(m), "--samples", str(s), "--group", "nope=a,b", "--out",
               str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    rc = main(["expression", "deg", "--matrix", str(tmp_path / "absent.tsv"), "--group", "a=b,c", "--out",
               str(tmp_path / "o")])
    assert rc == 2
