"""MIL cohort: manifest validation, label schemes, clinical encoding, subgroups, patient splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError, DatasetError
from engine.mil.clinical import ClinicalSpec, parse_clinical_arg
from engine.mil.cohort import BINARY, THREE_CLASS, label_scheme, load_cohort
from engine.mil.splits import kfold_splits, single_split


def _manifest(tmp_path: Path, rows: list[str], header: str = "slide,label,patient,age,er,grade") -> Path:
    for name in ("a.svs", "b.svs", "c.svs", "d.svs", "e.svs"):
        (tmp_path / name).write_bytes(b"x")
    p = tmp_path / "manifest.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return p


def test_validation_reports_missing_slides_unknown_labels_and_missing_values(tmp_path: Path) -> None:
    m = _manifest(
        tmp_path,
        [
            "a.svs,N0,P1,45,positive,2",
            "b.svs,N+(1-2),P2,,negative,3",
            "missing.svs,N0,P3,50,positive,1",
            "c.svs,N7,P4,60,positive,1",
            "d.svs,N+(>2),P5,70,,2",
        ],
    )
    cohort = load_cohort(m, "three_class", categorical=("grade",))
    assert [e.slide_id for e in cohort.entries] == ["a", "b", "d"]
    kinds = {p.kind: p for p in cohort.problems}
    assert set(kinds) == {"missing_slide", "unknown_label"}
    assert "N7" in kinds["unknown_label"].message
    assert cohort.numeric_columns == ("age",)
    assert cohort.categorical_columns == ("er", "grade")
    assert cohort.class_counts() == {"N0": 1, "N+(1-2)": 1, "N+(>2)": 1}
    text = "\n".join(cohort.report_lines())
    assert "age (numeric): 1 missing -> median" in text
    assert "er (categorical)" in text and "category 'missing'" in text and "unknown" in text
    assert "slide file not found" in text
    assert cohort.entries[1].clinical["age"] is None


def test_binary_scheme_maps_all_positive_grades_and_custom_mapping(tmp_path: Path) -> None:
    assert BINARY.index_of("N+(>2)") == 1 and BINARY.index_of("n0") == 0 and BINARY.index_of("2") == 1
    assert THREE_CLASS.index_of("N+(1-2)") == 1 and THREE_CLASS.index_of(2.0) == 2
    custom = label_scheme("neg=N0,pos=N+,pos2=N+")
    assert custom.class_names == ("N0", "N+") and custom.index_of("pos2") == 1
    with pytest.raises(ConfigError):
        label_scheme("nonsense")


def test_manifest_without_required_column_or_usable_rows_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="lacks column"):
        load_cohort(_manifest(tmp_path, ["a.svs,N0"], header="slide,label"))
    with pytest.raises(DatasetError, match="no usable slide"):
        load_cohort(_manifest(tmp_path, ["gone.svs,N0,P1,1,a,1"]))
    with pytest.raises(DatasetError, match="not found"):
        load_cohort(tmp_path / "nope.csv")


def test_clinical_encoding_imputes_missing_and_buckets_unseen_categories() -> None:
    train = [{"age": 40.0, "er": "positive"}, {"age": 60.0, "er": "negative"}, {"age": None, "er": None}]
    spec = ClinicalSpec.fit(train, ["age"], ["er"])
    assert spec.numeric_dim == 2 and spec.cardinalities == (4,)
    num, codes, notes = spec.encode([{"age": 50}, {"er": "equivocal"}, {"age": "", "er": "negative"}])
    assert num.shape == (3, 2) and codes.shape == (3, 1)
    assert num[0, 1] == 0.0  # present -> indicator 0
    assert num[1, 1] == 1.0 and num[1, 0] == pytest.approx((50.0 - 50.0) / 10.0)  # median 50 imputed
    assert codes[1, 0] == 0  # unseen -> unknown
    assert codes[2, 0] == 2 + spec.categorical[0].categories.index("negative")
    assert codes[0, 0] == 1  # absent -> missing
    assert any("not seen in training" in n for n in notes) and any("imputed" in n for n in notes)
    again = ClinicalSpec.from_dict(spec.to_dict())
    assert again == spec
    with pytest.raises(DatasetError, match="not a number"):
        spec.encode([{"age": "old"}])
    assert parse_clinical_arg("age=45, er=positive,pr=") == {"age": "45", "er": "positive", "pr": ""}
    with pytest.raises(ConfigError):
        parse_clinical_arg("age45")


def test_subgroups_split_on_a_clinical_condition() -> None:
    from engine.mil.clinical import Subgroup

    rows = [{"age": 45.0}, {"age": 55.0}, {"age": None}, {"age": 49.0}]
    inside, known = Subgroup.parse("age < 50").mask(rows)
    assert inside.tolist() == [True, False, False, True] and known.tolist() == [True, True, False, True]
    inside, _ = Subgroup.parse("er=Positive").mask([{"er": "positive"}, {"er": "negative"}])
    assert inside.tolist() == [True, False]
    with pytest.raises(ConfigError):
        Subgroup.parse("age")
    with pytest.raises(ConfigError):
        Subgroup.parse("age<old").mask(rows)


def test_splits_keep_patients_together(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        name = f"s{i}.svs"
        (tmp_path / name).write_bytes(b"x")
        rows.append(f"{name},{'N0' if i % 2 else 'N+'},P{i // 2}")  # two slides per patient
    m = tmp_path / "m.csv"
    m.write_text("slide,label,patient\n" + "\n".join(rows) + "\n", encoding="utf-8")
    cohort = load_cohort(m)
    patient = {e.slide_id: e.patient_id for e in cohort.entries}

    def patients(ids: tuple[str, ...]) -> set[str]:
        return {patient[s] for s in ids}

    fold = single_split(cohort.entries, 0.2, 0.2, seed=1)
    assert not patients(fold.train) & patients(fold.val) and not patients(fold.train) & patients(fold.test)
    assert len(fold.train) + len(fold.val) + len(fold.test) == 30
    folds = kfold_splits(cohort.entries, 3, 0.2, seed=1)
    tested = [s for f in folds for s in f.test]
    assert sorted(tested) == sorted(patient)  # every slide tested exactly once
    for f in folds:
        assert not patients(f.train) & (patients(f.val) | patients(f.test))
    with pytest.raises(DatasetError):
        kfold_splits(cohort.entries, 40, 0.2, seed=1)
