"""Genomics features added by issue 11's feature screen: allele states from VAF / purity and
numbers standardised within the tumour type (statistics of the training samples, carried in the
preprocessing so a package rebuilds them on new samples)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from engine.genomics.encode import WITHIN_MIN_COUNT, Preprocessor, within_name
from engine.genomics.features import KEY_GENES, LOH_RATIO, SUBCLONAL_RATIO, build_features
from engine.genomics.leaks import detect_leaks, make_label
from engine.genomics.predict import study_features
from engine.genomics.study import load_study
from tests.fixtures.genomics import write_datahub, write_web


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_datahub(tmp_path_factory.mktemp("gf2") / "hub", n_patients=120)


def _table(folder: Path, which: str = "all"):
    st = load_study(folder)
    leaks = detect_leaks(st, make_label(st))
    return st, build_features(st, leaks, which, min_gene_freq=0.02)


def test_allele_states_follow_vaf_over_purity(hub: Path) -> None:
    st, ft = _table(hub)
    m = st.mutations
    purity = pd.to_numeric(st.samples["TUMOR_PURITY"]) / 100.0  # the fixture writes percentages
    ratio = m["VAF"].astype(float) / m["Tumor_Sample_Barcode"].map(purity)
    per = pd.DataFrame({"bc": m["Tumor_Sample_Barcode"], "r": ratio, "gene": m["Hugo_Symbol"]})
    checked = 0
    for sid, rows in per.groupby("bc"):
        f = ft.frame.loc[sid]
        assert f["maf_frac_loh"] == pytest.approx((rows["r"] > LOH_RATIO).mean())
        assert f["maf_frac_subclonal"] == pytest.approx((rows["r"] < SUBCLONAL_RATIO).mean())
        assert f["maf_frac_heterozygous"] == pytest.approx(1 - f["maf_frac_loh"] - f["maf_frac_subclonal"])
        assert f["maf_max_vaf_purity"] == pytest.approx(rows["r"].max())
        assert f["maf_n_loh"] == (rows["r"] > LOH_RATIO).sum()
        tp53 = rows.loc[rows["gene"] == "TP53", "r"]
        if len(tp53):
            assert f["maf_vaf_purity_TP53"] == pytest.approx(tp53.max())
        else:
            assert f["maf_vaf_purity_TP53"] == 0.0  # not mutated: no mutant allele
        checked += 1
    assert checked > 50
    unmutated = ft.frame.index.difference(per["bc"].unique())
    assert len(unmutated) and (ft.frame.loc[unmutated, "maf_n_loh"] == 0).all()
    assert ft.frame.loc[unmutated, "maf_frac_loh"].isna().all()
    assert {f"maf_vaf_purity_{g}" for g in KEY_GENES} <= set(ft.numeric)
    assert all(ft.groups[c] == "mutations" for c in ("maf_frac_loh", "maf_vaf_purity_KRAS"))
    assert any(n.startswith("allele states from VAF / tumour purity") for n in ft.notes)  # the study report lists them


def test_allele_states_not_computed_without_purity(tmp_path: Path) -> None:
    folder = write_datahub(tmp_path / "s", n_patients=40)
    path = folder / "data_clinical_sample.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    cut = lines[4].split("\t").index("TUMOR_PURITY")
    path.write_text("\n".join("\t".join(v for j, v in enumerate(ln.split("\t")) if j != cut) for ln in lines) + "\n",
                    encoding="utf-8")
    _, ft = _table(folder)
    assert "maf_frac_loh" in ft.not_computed and "maf_frac_loh" not in ft.columns
    assert within_name("TUMOR_PURITY", "CANCER_TYPE") not in ft.columns


def test_within_type_columns_listed_and_selected(hub: Path) -> None:
    _, ft = _table(hub)
    names = [within_name(s, "CANCER_TYPE") for s in
             ("TMB_NONSYNONYMOUS", "FRACTION_GENOME_ALTERED", "maf_mutations", "TUMOR_PURITY", "AGE_AT_SEQUENCING")]
    assert all(n in ft.numeric for n in names)
    assert any("standardised within the tumour type" in n for n in ft.notes)
    clinical = ft.select("clinical")
    assert within_name("FRACTION_GENOME_ALTERED", "CANCER_TYPE") in clinical.columns
    assert within_name("maf_mutations", "CANCER_TYPE") not in clinical.columns  # source not clinical
    assert not [c for c in ft.select("mutations").columns if "__z_in__" in c]  # no tumour-type feature there
    # whole-study values in the frame: mean 0 / std 1 within each type
    z = ft.frame[within_name("FRACTION_GENOME_ALTERED", "CANCER_TYPE")].groupby(ft.frame["CANCER_TYPE"])
    assert np.allclose(z.mean(), 0, atol=1e-9) and np.allclose(z.std(), 1)


def test_within_statistics_come_from_training_rows_only(hub: Path) -> None:
    _, ft = _table(hub)
    col = within_name("FRACTION_GENOME_ALTERED", "CANCER_TYPE")
    cut = len(ft.frame) * 3 // 4
    train = ft.frame.iloc[:cut]
    pre = Preprocessor.fit(train, ft.numeric, ft.categorical, None)
    other = ft.frame.iloc[cut:].copy()
    other["FRACTION_GENOME_ALTERED"] += 1.0  # new samples' values must not move the statistics
    num, _ = pre.transform(other)
    j = ft.numeric.index(col)
    src = train["FRACTION_GENOME_ALTERED"]
    grp = src.groupby(train["CANCER_TYPE"])
    big = grp.count() >= WITHIN_MIN_COUNT
    assert big.sum() >= 2
    # a type with too few training samples (or one never seen) takes the statistics of all training samples
    mean = other["CANCER_TYPE"].map(grp.mean()[big]).fillna(src.mean())
    std = other["CANCER_TYPE"].map(grp.std()[big]).fillna(src.std())
    expect = ((other["FRACTION_GENOME_ALTERED"] - mean) / std).to_numpy()
    assert np.allclose(num[:, j], expect, atol=1e-5)
    # the statistics travel in the spec (model package metadata) and give the same columns
    again = Preprocessor.from_dict(pre.to_dict())
    assert np.array_equal(again.transform(other)[0], num, equal_nan=True)
    test = other.copy()
    test.iloc[0, test.columns.get_loc("CANCER_TYPE")] = "Never Seen Cancer"
    first = pre.transform(test)[0][0, j]
    assert first == pytest.approx((test["FRACTION_GENOME_ALTERED"].iloc[0] - src.mean()) / src.std(), abs=1e-5)
    test.iloc[1, test.columns.get_loc("FRACTION_GENOME_ALTERED")] = np.nan
    assert np.isnan(pre.transform(test)[0][1, j])  # a missing source stays missing


def test_prediction_rebuilds_new_features_from_a_study(hub: Path, tmp_path: Path) -> None:
    """What ``genomics predict`` feeds the package equals what training fed the model, for the
    new columns too (web layout download of the same samples)."""
    st, ft = _table(hub)
    pre = Preprocessor.fit(ft.frame.iloc[:100], ft.numeric, ft.categorical, None)
    clf = SimpleNamespace(pre=pre, settings={"genes": ft.genes})
    want = pre.transform(ft.frame)
    for folder in (hub, write_web(tmp_path / "web", n_patients=120)):
        frame = study_features(clf, folder).loc[ft.frame.index]
        got = pre.transform(frame)
        assert np.allclose(got[0], want[0], equal_nan=True, atol=1e-6)
        assert np.array_equal(got[1], want[1])
