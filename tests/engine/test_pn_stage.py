"""Patient-level pN category (CAMELYON17) from a heatmap folder: the rule, grouping, kappa, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import DatasetError
from engine.infer.lesions import CATEGORY_ITC, CATEGORY_MACRO, CATEGORY_MICRO, CATEGORY_NONE, CATEGORY_UNKNOWN
from engine.infer.pn_stage import (
    NO_RESULT,
    PNX,
    agreement,
    parse_stage,
    read_reference,
    stage_of,
    stage_patients,
)

NONE, ITC, MICRO, MACRO, UNKNOWN = CATEGORY_NONE, CATEGORY_ITC, CATEGORY_MICRO, CATEGORY_MACRO, CATEGORY_UNKNOWN
SIZE = {NONE: None, ITC: 0.15, MICRO: 1.2, MACRO: 3.4, UNKNOWN: None}


def _slide(root: Path, name: str, category: str, largest: float | None = None) -> Path:
    """A result folder with just the heatmap.json fields pn-stage reads."""
    d = root / name
    d.mkdir(parents=True)
    largest = SIZE[category] if largest is None else largest
    meta = {
        "slide": {"path": f"/scans/{name}.tif", "name": name},
        "category": category,
        "lesions": {"category": category, "largest_diameter_mm": largest, "count": 0 if largest is None else 1},
    }
    (d / "heatmap.json").write_text(json.dumps(meta))
    return d


# -- the rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("categories", "stage", "metastatic"),
    [
        ([NONE] * 5, "pN0", 0),
        ([NONE, ITC, NONE, ITC, NONE], "pN0(i+)", 0),
        ([NONE, ITC, MICRO, NONE, NONE], "pN1mi", 1),
        ([MICRO] * 5, "pN1mi", 5),  # no macrometastasis: pN1mi whatever the count
        ([MACRO, NONE, NONE, NONE, NONE], "pN1", 1),
        ([MACRO, MICRO, MICRO, ITC, ITC], "pN1", 3),  # ITC nodes do not count
        ([MACRO, MICRO, MICRO, ITC, ITC, ITC, ITC, ITC, ITC, ITC], "pN1", 3),
        ([MACRO, MICRO, MICRO, MICRO, NONE], "pN2", 4),  # the boundary: 4 nodes
        ([MACRO] * 9 + [NONE], "pN2", 9),
        ([MACRO] * 5 + [MICRO] * 5, "pN3", 10),
    ],
)
def test_rule_table(categories: list[str], stage: str, metastatic: int) -> None:
    got, n, note = stage_of(categories)
    assert (got, n, note) == (stage, metastatic, "")


def test_unknown_nodes_make_pnx_unless_known_nodes_already_give_pn1() -> None:
    assert stage_of([NONE, UNKNOWN, MICRO]) == (PNX, 1, "1 node unknown (no mpp)")
    assert stage_of([NONE, NO_RESULT, UNKNOWN, UNKNOWN]) == (PNX, 0, "3 nodes unknown (2 no mpp, 1 no result)")
    assert stage_of([])[0] == PNX
    stage, n, note = stage_of([MACRO, MICRO, UNKNOWN, NO_RESULT, NONE])
    assert (stage, n) == ("pN1", 2) and "lower bound" in note
    stage, n, note = stage_of([MACRO, MICRO, MICRO, MICRO, NO_RESULT])
    assert (stage, n) == ("pN2", 4) and "lower bound" in note


def test_parse_stage_spellings() -> None:
    assert parse_stage("pN0 (i+)") == "pN0(i+)"
    assert parse_stage("PN1MI") == "pN1mi"
    assert parse_stage("pnx") == PNX
    with pytest.raises(Exception, match="unknown pN stage"):
        parse_stage("N1")


# -- folders and patients -----------------------------------------------------------------------


def _camelyon_folder(root: Path) -> Path:
    for i, cat in enumerate([MACRO, MICRO, ITC, NONE, NONE]):
        _slide(root, f"patient_010_node_{i}", cat)
    for i, cat in enumerate([ITC, NONE, NONE, NONE, NONE]):
        _slide(root, f"patient_002_node_{i}", cat)
    for i, cat in enumerate([NONE, UNKNOWN, NONE, NONE, NONE]):
        _slide(root, f"patient_003_node_{i}", cat)
    (root / "patient_003_node_5").mkdir()  # a slide that failed: no heatmap.json
    (root / ".patient_003_node_0.x.part").mkdir()  # an unfinished write: passed over
    return root


def test_folder_with_camelyon17_names(tmp_path: Path) -> None:
    staging = stage_patients(_camelyon_folder(tmp_path / "hm"))
    got = {p.patient: p for p in staging.patients}
    assert [p.patient for p in staging.patients] == ["patient_002", "patient_003", "patient_010"]
    assert got["patient_002"].stage == "pN0(i+)"
    p10 = got["patient_010"]
    assert (p10.stage, len(p10.nodes), p10.nodes_with_metastasis, p10.largest_lesion_mm) == ("pN1", 5, 2, 3.4)
    assert p10.node_categories.startswith("patient_010_node_0: macrometastasis; patient_010_node_1: micrometastasis")
    p3 = got["patient_003"]
    assert p3.stage == PNX and len(p3.nodes) == 6
    assert p3.note == "2 nodes unknown (1 no mpp, 1 no result): patient_003_node_1, patient_003_node_5"
    assert any("patient_003_node_5" in n and "no heatmap.json" in n for n in staging.notes)


def test_names_not_camelyon17_without_csv_is_a_clear_error(tmp_path: Path) -> None:
    _slide(tmp_path, "lymph_node_a", NONE)
    with pytest.raises(DatasetError, match="CAMELYON17.*patients CSV"):
        stage_patients(tmp_path)


def test_folder_with_a_patients_csv(tmp_path: Path) -> None:
    hm = tmp_path / "hm"
    for name, cat in [("A1", MACRO), ("A2", MICRO), ("A3", MICRO), ("A4", MICRO), ("B1", ITC), ("extra", NONE)]:
        _slide(hm, name, cat)
    csv_path = tmp_path / "patients.csv"
    # matched by folder name, file name with a path, file name and stem
    csv_path.write_text("Patient,Slide\nanna,A1\nanna,/data/A2.tif\nanna,A3.tif\nanna,A4\nbob,B1.svs\n")
    staging = stage_patients(hm, csv_path)
    got = {p.patient: p for p in staging.patients}
    assert got["anna"].stage == "pN2" and got["anna"].nodes_with_metastasis == 4
    assert got["bob"].stage == "pN0(i+)"
    assert any("extra" in n and "not in the patients CSV" in n for n in staging.notes)

    csv_path.write_text("slide,patient\nB1,bob\nB2.tif,bob\nB1,bob\n")  # B2 failed: no folder; a row twice
    bob = stage_patients(hm, csv_path).patients[0]
    assert bob.stage == PNX and "B2.tif: no result" in bob.node_categories


def test_patients_csv_errors(tmp_path: Path) -> None:
    _slide(tmp_path / "hm", "A1", NONE)
    bad = tmp_path / "p.csv"
    bad.write_text("file,case\nA1,anna\n")
    with pytest.raises(DatasetError, match="needs the columns slide, patient"):
        stage_patients(tmp_path / "hm", bad)
    bad.write_text("slide,patient\nA1,anna\nA1,bob\n")
    with pytest.raises(DatasetError, match="'A1' given to patients 'anna' and 'bob'"):
        stage_patients(tmp_path / "hm", bad)
    bad.write_text("slide,patient\nY8,yves\nZ9,zoe\n")  # not one slide has a result: wrong folder or CSV
    with pytest.raises(DatasetError, match="no slide of the patients CSV has a result"):
        stage_patients(tmp_path / "hm", bad)
    with pytest.raises(DatasetError, match="not found"):
        stage_patients(tmp_path / "nowhere")


# -- reference and kappa ------------------------------------------------------------------------


def test_kappa_against_a_reference(tmp_path: Path) -> None:
    staging = stage_patients(_camelyon_folder(tmp_path / "hm"))
    ref = tmp_path / "ref.csv"
    # CAMELYON17's stage_labels.csv layout: patient rows (.zip) and node rows (.tif) mixed
    ref.write_text(
        "patient,stage\npatient_002.zip,pN0(i+)\npatient_002_node_0.tif,itc\npatient_010.zip,pN1\n"
        "patient_003.zip,pN0\n"
    )
    reference = read_reference(ref)
    assert reference == {"patient_002": "pN0(i+)", "patient_010": "pN1", "patient_003": "pN0"}
    a = agreement(staging.patients, reference)
    assert a.kappa == pytest.approx(1.0) and a.compared == 2 and a.left_out_pnx == 1
    assert a.confusion[1][1] == 1 and a.confusion[3][3] == 1

    # one patient off by one stage: below 1, still positive (quadratic weights)
    reference["patient_010"] = "pN2"
    reference["patient_011"] = "pN0"  # not in the folder
    a = agreement(staging.patients, reference)
    assert 0 < a.kappa < 1 and a.missing == ("patient_011",) and a.confusion[4][3] == 1
    assert "quadratic weighted kappa" in a.lines()[0]


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_lines_csv_and_kappa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hm = _camelyon_folder(tmp_path / "hm")
    ref = tmp_path / "ref.csv"
    ref.write_text("patient,stage\npatient_002,pN0(i+)\npatient_010,pN1\npatient_003,pN0\n")
    out = tmp_path / "stages.csv"
    assert main(["pn-stage", str(hm), "--reference", str(ref), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "patient_002: pN0(i+) (0 of 5 nodes with metastasis, largest lesion 0.15 mm)"
    assert lines[1].startswith("patient_003: pNX (0 of 6 nodes")
    assert lines[2] == "patient_010: pN1 (2 of 5 nodes with metastasis, largest lesion 3.40 mm)"
    assert lines[3].startswith("quadratic weighted kappa 1.000 over 2 patients (1 pNX left out")
    assert "warning: patient_003_node_5" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert [r["pn_stage"] for r in rows] == ["pN0(i+)", PNX, "pN1"]
    assert (rows[2]["nodes"], rows[2]["nodes_with_metastasis"], rows[2]["largest_lesion_mm"]) == ("5", "2", "3.400")
    assert rows[2]["reference_stage"] == "pN1"
    # default output: inside the heatmap folder (a file, not read as a slide the next time)
    assert main(["pn-stage", str(hm)]) == 0
    assert (hm / "pn_stages.csv").is_file()
    assert main(["pn-stage", str(hm)]) == 0


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hm = tmp_path / "hm"
    _slide(hm, "patient_001_node_0", MICRO)
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("name,who\nx,y\n")
    bad_stage = tmp_path / "stage.csv"
    bad_stage.write_text("patient,stage\npatient_001,N1mi\n")
    no_slide = tmp_path / "noslide.csv"
    no_slide.write_text("slide,patient\nmissing_node,p2\n")
    cases = [
        ["pn-stage", str(tmp_path / "nowhere")],
        ["pn-stage", str(hm), "--patients", str(bad_cols)],
        ["pn-stage", str(hm), "--reference", str(bad_stage)],
        ["pn-stage", str(hm), "--patients", str(no_slide)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
    err = capsys.readouterr().err.splitlines()
    errors = [ln for ln in err if ln.startswith("error:")]
    assert len(errors) == 4 and not any("Traceback" in ln for ln in err)
    assert "not found" in errors[0] and "needs the columns slide, patient" in errors[1]
    assert "unknown pN stage 'N1mi'" in errors[2] and "no slide of the patients CSV has a result" in errors[3]


def test_a_patient_whose_slides_all_failed_is_pnx_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hm = tmp_path / "hm"
    _slide(hm, "patient_001_node_0", MICRO)
    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("slide,patient\npatient_001_node_0,p1\nmissing_node,p2\n")
    assert main(["pn-stage", str(hm), "--patients", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "p1: pN1mi" in out and "p2: pNX" in out and "missing_node" in out


# -- end to end: the real heatmap command, then pn-stage ---------------------------------------


def test_real_heatmap_folder_then_pn_stage(demo_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.slides.synthetic import Ellipse, write_synthetic_slide

    slides = []
    tissue = (Ellipse(768.0, 512.0, 700.0, 460.0, 0.0),)
    # node 0: a tumour about 1 mm across (0.5 um/px), a micrometastasis; node 1: no tumour
    for i, tumour in enumerate([(Ellipse(768.0, 512.0, 520.0, 340.0, 0.0),), ()]):
        s = write_synthetic_slide(
            tmp_path / f"patient_007_node_{i}.tif", 1536, 1024, mpp=0.5, flavour="aperio", levels=2,
            seed=i, tumour_regions=tumour, tissue_regions=tissue, with_label=False,
        )
        slides.append(str(s.path))
    out = tmp_path / "heatmaps"
    argv = ["heatmap", *slides, "--model", str(demo_onnx), "--out", str(out), "--batch-size", "32", "--workers", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    cats = [json.loads((out / f"patient_007_node_{i}" / "heatmap.json").read_text())["category"] for i in range(2)]
    assert cats == [MICRO, NONE]
    assert main(["pn-stage", str(out), "--out", str(tmp_path / "pn.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("patient_007: pN1mi (1 of 2 nodes with metastasis")
