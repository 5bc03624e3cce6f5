"""Genomics on the real shared cBioPortal studies (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.genomics.report import study_report
from engine.genomics.train import GenomicsTrainConfig, train_genomics


@pytest.mark.realdata
def test_msk_met_report_and_gbm_subsample(shared_data: Path, tmp_path: Path) -> None:
    study = shared_data / "cbioportal" / "msk_met_2021"
    rep = study_report(study)
    assert rep["samples"] == 12622 and rep["label_counts"] == {"Primary": 7657, "Metastasis": 4965}
    dropped = {d["column"] for d in rep["dropped_columns"]}
    assert {"METASTATIC_SITE", "MET_COUNT", "MET_SITE_COUNT", "OS_MONTHS", "OS_STATUS"} <= dropped
    assert "maf_mean_protein_position" in rep["not_computed"]  # reduced MAF
    cfg = GenomicsTrainConfig(study=str(study), model="gbm", max_samples=800, epochs=1, n_boot=50,
                              explain_top=5, cpu_threads=1)
    res = train_genomics(cfg, tmp_path / "run")
    assert res.metrics["n"] == 160 and res.metrics["auc"] > 0.55
    assert (tmp_path / "run" / "model.onnx").is_file()


@pytest.mark.realdata
def test_msk_impact_clinical_tables(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = shared_data / "cbioportal" / "msk_impact_2017"
    assert main(["genomics", "validate", str(study), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["samples"] == 10945 and rep["mutations"] == 0
    assert {"METASTATIC_SITE", "SAMPLE_CLASS"} <= {d["column"] for d in rep["dropped_columns"]}
    # no MAF: mutation features are reported as not computable, mutations-only training is refused
    assert any("maf" in k for k in rep["not_computed"])
    assert main(["train", "genomics", "--study", str(study), "--out", str(tmp_path / "m"), "--features", "mutations"]) == 2
    cfg = GenomicsTrainConfig(study=str(study), model="gbm", features="clinical", max_samples=800, epochs=1,
                              n_boot=50, explain_top=5, cpu_threads=1)
    res = train_genomics(cfg, tmp_path / "run")
    assert res.metrics["auc"] > 0.55
