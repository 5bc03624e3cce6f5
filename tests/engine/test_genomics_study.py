"""Genomics: reading studies in both layouts, features, label leaks, bad input, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.genomics.features import build_features
from engine.genomics.leaks import detect_leaks, make_label
from engine.genomics.report import study_report
from engine.genomics.study import load_study
from tests.fixtures.genomics import write_datahub, write_web


def _features(folder: Path):
    st = load_study(folder)
    label = make_label(st)
    leaks = detect_leaks(st, label)
    return st, label, leaks, build_features(st, leaks)


@pytest.mark.parametrize("full", [False, True])
def test_both_layouts_give_identical_features(tmp_path: Path, full: bool) -> None:
    a = _features(write_datahub(tmp_path / "hub", full_maf=full))
    b = _features(write_web(tmp_path / "web", full_maf=full))
    assert a[0].layout == "datahub" and b[0].layout == "web"
    fa, fb = a[3].frame, b[3].frame
    assert sorted(fa.columns) == sorted(fb.columns)
    pd.testing.assert_frame_equal(fa.sort_index(axis=1), fb.sort_index(axis=1))
    assert a[1].counts() == b[1].counts()
    assert set(a[2]) == set(b[2])


def test_features_and_leaks(tmp_path: Path) -> None:
    st, label, leaks, ft = _features(write_datahub(tmp_path / "s"))
    assert {"SAMPLE_TYPE", "METASTATIC_SITE", "OS_MONTHS"} <= set(leaks)
    assert not set(leaks) & set(ft.columns)
    assert ft.roles["tumour_type"] == "CANCER_TYPE" and ft.roles["detailed_type"] == "CANCER_TYPE_DETAILED"
    for c in ("maf_mutations", "maf_n_snv", "maf_n_ins", "maf_n_del", "maf_mean_vaf", "maf_sum_span", "gene_TP53",
              "TMB_NONSYNONYMOUS", "FRACTION_GENOME_ALTERED", "AGE_AT_SEQUENCING"):
        assert c in ft.columns, c
    assert "maf_mean_protein_position" in ft.not_computed  # reduced MAF
    m = st.mutations
    sid = m["Tumor_Sample_Barcode"].iloc[0]
    assert ft.frame.loc[sid, "maf_mutations"] == (m["Tumor_Sample_Barcode"] == sid).sum()
    # NF1 / KMT2D only occur on IMPACT468 samples: inferred absent from IMPACT341 -> missing, not wild type
    on341 = [s for s, p in st.panel_of.items() if p == "IMPACT341"]
    nf1 = ft.frame.loc[on341, "gene_NF1"]
    assert nf1.isna().all() or (nf1.fillna(0) == 0).all()


def test_full_maf_features(tmp_path: Path) -> None:
    _, _, _, ft = _features(write_datahub(tmp_path / "s", full_maf=True))
    for c in ("maf_mean_protein_position", "maf_codon_changes", "maf_n_missense_mutation", "maf_n_truncating"):
        assert c in ft.columns and c not in ft.not_computed


def test_user_drop_columns_and_auto_leak(tmp_path: Path) -> None:
    folder = write_datahub(tmp_path / "s")
    st = load_study(folder)
    label = make_label(st)
    st.samples["SECRET"] = np.where(label.y.reindex(st.samples.index) == 1, "yes", "no")
    leaks = detect_leaks(st, label, extra=("TUMOR_PURITY",))
    assert leaks["TUMOR_PURITY"] == "dropped by the user"
    assert "almost determines the label" in leaks["SECRET"]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "study folder not found"),
        ("empty", "no clinical sample table"),
        ("no_patient_col", "no PATIENT_ID column"),
        ("unknown_sample", "does not list"),
        ("one_class", "one class only"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str,
                                         message: str) -> None:
    folder = tmp_path / "s"
    if breakage == "empty":
        folder.mkdir()
    elif breakage != "missing":
        write_datahub(folder, one_class=breakage == "one_class")
        if breakage == "no_patient_col":
            p = folder / "data_clinical_sample.txt"
            p.write_text(p.read_text().replace("\tPATIENT_ID\t", "\tPATIENT\t"))
        elif breakage == "unknown_sample":
            p = folder / "data_mutations.txt"
            p.write_text(p.read_text() + "TP53\t7\t1\t1\tC\tT\tNOT-A-SAMPLE\t10\t5\t5\t0.5\n")
    rc = main(["genomics", "validate", str(folder)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and message in err and "\n" not in err


def test_report_files_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_datahub(tmp_path / "s")
    out = tmp_path / "rep"
    assert main(["genomics", "report", str(folder), "--out", str(out), "--json", "--tsne-samples", "60",
                 "--drop-columns", "TUMOR_PURITY"]) == 0
    printed = json.loads(capsys.readouterr().out)
    rep = json.loads((out / "report.json").read_text())
    assert printed["samples"] == rep["samples"] == 108 and rep["patients"] == 90
    assert set(rep["label_counts"]) == {"Primary", "Metastasis"}
    assert {d["column"] for d in rep["dropped_columns"]} >= {"METASTATIC_SITE", "TUMOR_PURITY", "OS_MONTHS"}
    assert rep["panels"] and "missing_per_column" in rep and rep["not_computed"]
    for f in ("missing.png", "correlation.png", "tsne.png", "top_genes.png", "report.html"):
        assert (out / f).is_file(), f
    assert study_report(folder)["samples"] == 108
