"""Synthetic expression on the shared TCGA set: DEG of KIRC tumours vs matched normals, a short
WGAN-GP run on the tumours with age / sex / stage, generation from the package."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from engine.cli import main


@pytest.mark.realdata
def test_kirc_deg_train_generate(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.expression import realism

    monkeypatch.setattr(realism, "C2ST_TREES", 10)
    monkeypatch.setattr(realism, "C2ST_REPEATS", 1)
    monkeypatch.setattr("engine.expression.wgan_loop.REALISM_DRAWS", 1)
    d = shared_data / "expression" / "tcga_mrna_11types"
    m, s = str(d / "expression.tsv.gz"), str(d / "samples.tsv")
    deg = tmp_path / "deg"
    assert main(["expression", "deg", "--matrix", m, "--samples", s, "--group", "sample_type=primary_tumour,normal",
                 "--where", "cancer_type=KIRC", "--paired-by", "patient", "--top", "20", "--out", str(deg)]) == 0
    summary = json.loads((deg / "metrics.json").read_text())
    assert summary["n_pairs"] == 72 and summary["n_selected"] > 500
    genes = (deg / "genes.txt").read_text().split()
    assert len(genes) == 20 and "CA9" in genes[:5]  # the classic clear-cell renal carcinoma marker
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({
        "matrix": m, "samples": s, "genes": str(deg / "genes.txt"), "covariates": ["age", "sex", "stage"],
        "where": ["cancer_type=KIRC", "sample_type=primary_tumour"], "epochs": 1, "steps_per_epoch": 20,
        "hidden": [32], "gamma_every": 1,
    }))
    assert main(["train", "wgan", "--config", str(cfg), "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["heldout_samples"] + metrics["train_samples"] == 72 and metrics["gamma"] is not None
    assert metrics["baseline"]["gamma"] > 0.8  # the Gaussian baseline on these genes
    out = tmp_path / "syn.tsv"
    assert main(["expression", "generate", str(run), "--set", "sex=female,stage=stage i", "--n", "10",
                 "--out", str(out)]) == 0
    syn = pd.read_csv(out, sep="\t")
    assert len(syn) == 10 and (syn["sex"] == "female").all() and list(syn.columns[-20:]) == genes
    assert syn[genes].to_numpy().min() >= -2.0  # clipped at the data's floor of -2
