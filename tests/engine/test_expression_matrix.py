"""Expression matrices: orientation, scale, gene ids, sample tables, missing values, bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.errors import ConfigError, DatasetError
from engine.expression.matrix import align_genes, read_matrix, write_matrix


def _profiles(n_types=3, per_type=6, n_genes=30, seed=0, counts=False):
    rng = np.random.default_rng(seed)
    base = rng.normal(8, 2, n_genes)
    rows, labels = [], []
    for t in range(n_types):
        sig = base.copy()
        sig[t * 5:(t + 1) * 5] += 4
        for _ in range(per_type):
            rows.append(sig + rng.normal(0, 0.5, n_genes))
            labels.append(f"T{t}")
    x = np.array(rows)
    if counts:
        x = np.round(2 ** x).astype(int)
    samples = [f"TCGA-AA-{i:04d}-01A" for i in range(len(rows))]
    return x, samples, labels


def test_samples_x_genes_tsv_with_table(tmp_path):
    x, samples, labels = _profiles()
    genes = [f"G{j}" for j in range(x.shape[1])]
    pd.DataFrame(x, index=pd.Index(samples, name="id"), columns=genes).to_csv(tmp_path / "m.tsv", sep="\t")
    pd.DataFrame({"barcode": samples[::-1], "type": labels[::-1], "age": range(len(samples))}).to_csv(
        tmp_path / "s.tsv", sep="\t", index=False)
    m = read_matrix(tmp_path / "m.tsv", tmp_path / "s.tsv")
    assert m.shape == (18, 30) and m.values.dtype == np.float32
    assert m.report["orientation"]["value"] == "samples_x_genes"
    assert m.report["scale"].startswith("log")
    assert list(m.labels("type")) == labels  # aligned to the matrix order, not the table's
    with pytest.raises(ConfigError, match="available: type, age"):
        m.labels("cancer")
    sub = m.subset(samples=samples[:4], genes=genes[:3])
    assert sub.shape == (4, 3) and list(sub.labels("type")) == labels[:4]


def test_genes_x_samples_counts_ensembl_csv_gz(tmp_path):
    x, samples, _ = _profiles(counts=True)
    genes = [f"ENSG{j:011d}.{j % 4 + 1}" for j in range(x.shape[1])]
    genes[1] = "ENSG00000000000.7"  # same gene as row 0 after the version is stripped
    df = pd.DataFrame(x.T, index=pd.Index(genes, name="gene_id"), columns=[f"S{i}" for i in range(len(samples))])
    df.to_csv(tmp_path / "m.csv.gz")
    m = read_matrix(tmp_path / "m.csv.gz")
    assert m.report["orientation"]["value"] == "genes_x_samples"
    assert m.report["scale"].startswith("counts")
    assert m.report["gene_id_type"] == "ensembl" and m.report["duplicate_genes_averaged"] == 1
    assert m.shape == (18, 29) and m.genes[0] == "ENSG00000000000"
    assert 5 < float(m.values.mean()) < 15  # log2(x+1) applied
    forced = read_matrix(tmp_path / "m.csv.gz", orientation="samples_x_genes", log="no")
    assert forced.shape == (30, 18)


def test_mirna_and_microarray_shapes(tmp_path):
    x, samples, _ = _profiles(n_genes=12)
    mir = [f"hsa-miR-{100 + j}-5p" for j in range(12)]
    pd.DataFrame(x.T, index=mir, columns=[f"GSM{100 + i}" for i in range(len(samples))]).to_csv(
        tmp_path / "mir.txt", sep="\t")
    m = read_matrix(tmp_path / "mir.txt")
    assert m.report["gene_id_type"] == "mirna" and m.shape == (18, 12)
    # microarray: probe symbols with SYMBOL|ENTREZ ids, semicolon-separated, negative log ratios
    genes = [f"GENE{j}|{1000 + j}" for j in range(12)]
    pd.DataFrame(x - 8, index=[f"array{i}" for i in range(18)], columns=genes).to_csv(
        tmp_path / "arr.csv", sep=";")
    a = read_matrix(tmp_path / "arr.csv")
    assert a.shape == (18, 12) and a.genes[0] == "GENE0" and a.report["scale"].startswith("log")


def test_missing_values_and_duplicates(tmp_path):
    x, samples, _ = _profiles(n_genes=10)
    df = pd.DataFrame(x, index=samples, columns=[f"G{j}" for j in range(10)]).astype(object)
    df.iloc[:, 0] = "NA"  # all missing: dropped
    df.iloc[2, 3] = ""  # one missing: filled with the gene mean
    df.iloc[5, :] = "NA"  # whole sample missing: dropped
    df.to_csv(tmp_path / "m.tsv", sep="\t")
    m = read_matrix(tmp_path / "m.tsv")
    rep = m.report
    assert rep["dropped_genes"]["count"] == 1 and rep["dropped_samples"]["count"] == 1
    assert m.shape == (17, 9) and np.isfinite(m.values).all()
    assert "filled with the gene mean" in rep["missing_values"]["handling"]


def test_align_and_write_roundtrip(tmp_path):
    x, samples, _ = _profiles(n_genes=8)
    genes = [f"G{j}" for j in range(8)]
    write_matrix(tmp_path / "out.tsv.gz", x, samples, genes,
                 extra_columns=pd.DataFrame({"type": ["a"] * len(samples)}, index=samples))
    with gzip.open(tmp_path / "out.tsv.gz", "rt") as fh:
        assert fh.readline().split("\t")[:3] == ["sample", "type", "G0"]
    m = read_matrix(tmp_path / "out.tsv.gz")
    assert m.shape == (18, 8) and list(m.sample_table.columns) == ["type"]
    vals, rep = align_genes(m, ["g1", "G7", "MISSING"], fill=np.array([0, 0, 42.0]))
    assert rep["matched"] == 2 and rep["missing_examples"] == ["MISSING"]
    np.testing.assert_allclose(vals[:, 0], m.values[:, 1], rtol=1e-5)
    assert (vals[:, 2] == 42).all()
    with pytest.raises(DatasetError, match="none of the"):
        align_genes(m, ["X1", "X2"])


@pytest.mark.parametrize("content,match", [
    (None, "not found"),
    ("", "empty"),
    ("a\tb\nx\ty\nz\tw\n", "no numeric"),
])
def test_bad_matrices(tmp_path, content, match):
    p = tmp_path / "bad.tsv"
    if content is not None:
        p.write_text(content)
    with pytest.raises(DatasetError, match=match):
        read_matrix(p)


def test_bad_sample_table_and_options(tmp_path, capsys):
    x, samples, _ = _profiles(n_genes=6)
    pd.DataFrame(x, index=samples, columns=[f"G{j}" for j in range(6)]).to_csv(tmp_path / "m.tsv", sep="\t")
    pd.DataFrame({"id": ["other1", "other2"], "t": ["a", "b"]}).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    with pytest.raises(DatasetError, match="no sample id"):
        read_matrix(tmp_path / "m.tsv", tmp_path / "s.tsv")
    with pytest.raises(ConfigError, match="sample id column 'nope'"):
        read_matrix(tmp_path / "m.tsv", tmp_path / "s.tsv", sample_id_column="nope")
    with pytest.raises(ConfigError):
        read_matrix(tmp_path / "m.tsv", orientation="sideways")
    assert main(["expression", "info", str(tmp_path / "missing.tsv")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["expression", "info", str(tmp_path / "m.tsv"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_samples"] == 18 and rep["n_genes"] == 6
