"""Slide QC from the command line and in MIL features / annotated-slide datasets (issue 16)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.errors import DatasetError
from engine.slides.artefacts import corrupt_tiles, draw_pen, tile_grid, to_greyscale, write_tiled_tiff
from engine.slides.synthetic import make_texture

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources" / "models" / "pcam-starter.onnx"
W = 1536


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qc-cli")
    he = make_texture(W, W, 0.5, seed=3).render(0, 0, W, W)
    clean = write_tiled_tiff(d / "clean.tif", he, tile=128, levels=1)
    _rows, cols, _ = tile_grid(clean)
    damaged = d / "damaged.tif"
    shutil.copy(clean, damaged)
    corrupt_tiles(damaged, range(cols * 6 + 3, cols * 6 + 6))
    pen = he.copy()
    draw_pen(pen, [(300, 300), (900, 500), (1200, 1200)], width=70, colour="green")
    return {
        "clean": clean,
        "damaged": damaged,
        "pen": write_tiled_tiff(d / "pen.tif", pen, tile=128, levels=1),
        "grey": write_tiled_tiff(d / "grey.tif", to_greyscale(he), tile=128, levels=1),
        "dir": d,
    }


def test_heatmap_cli_reports_unreadable_and_qc(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "heatmap",
            str(files["damaged"]),
            str(files["pen"]),
            "--model",
            str(MODEL),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--max-unreadable",
            "0.3",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert "unreadable tile" in lines[0] and "left out" in lines[0]
    assert "left out by QC" in lines[1] and "pen" in lines[1]
    meta = json.loads((tmp_path / "damaged" / "heatmap.json").read_text())
    assert meta["summary"]["unreadable_tiles"] >= 1 and meta["config"]["max_unreadable"] == 0.3


def test_heatmap_cli_fails_above_the_limit_with_one_line(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "heatmap",
            str(files["damaged"]),
            "--model",
            str(MODEL),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--max-unreadable",
            "0.01",
        ]
    )
    _out, err = capsys.readouterr()
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot be decoded" in errors[0] and "Traceback" not in err
    assert (
        main(["heatmap", str(files["clean"]), "--model", str(MODEL), "--out", str(tmp_path), "--max-unreadable", "2"])
        == 2
    )
    assert "--max-unreadable" in capsys.readouterr().err


def test_heatmap_cli_warns_on_greyscale(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["heatmap", str(files["grey"]), "--model", str(MODEL), "--out", str(tmp_path), "--device", "cpu"])
    _out, err = capsys.readouterr()
    assert rc == 0 and "warning:" in err and "greyscale" in err


def test_qc_command_writes_reports_and_cohort_table(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.svs"
    slides = [str(files[k]) for k in ("clean", "damaged", "pen", "grey")] + [str(missing)]
    rc = main(["qc", *slides, "--out", str(tmp_path / "qc"), "--model", str(MODEL), "--blur-sample", "400"])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("error:") == 1  # the missing file; the others are reported
    with open(tmp_path / "qc" / "qc_results.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by = {r["slide"]: r for r in rows}
    assert set(by) == {"clean", "damaged", "pen", "grey", "missing"}
    assert by["missing"]["status"] == "error"
    assert by["clean"]["stain"] == "he" and float(by["clean"]["pen_fraction"]) == 0
    assert float(by["pen"]["pen_fraction"]) > 0
    assert by["grey"]["stain"] == "greyscale"
    assert int(by["damaged"]["unreadable_tiles"]) >= 1
    for name in ("clean", "damaged", "pen", "grey"):
        folder = tmp_path / "qc" / name
        assert {"qc.json", "thumbnail.png", "qc_mask.png"} <= {p.name for p in folder.iterdir()}
    data = json.loads((tmp_path / "qc" / "pen" / "qc.json").read_text())
    assert data["tile_counts"]["pen"] > 0 and data["stain"]["kind"] == "he" and data["blur"]["sampled"] > 0
    assert "pen" in out and "->" in out


def test_qc_command_json(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["qc", str(files["clean"]), "--out", str(tmp_path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["slides"][0]["status"] == "ok" and Path(doc["cohort"]).is_file()


def test_mil_features_leave_out_damaged_tiles(files: dict[str, Path], tmp_path: Path) -> None:
    from engine.mil.extractor import build_stats_extractor
    from engine.mil.features import FeatureConfig, extract_slide, load_extractor
    from engine.slides.open import open_slide

    ex = load_extractor(build_stats_extractor(tmp_path / "stats.onnx", input_size=64, input_mpp=1.458), "cpu")
    with open_slide(files["clean"]) as r:
        clean = extract_slide(r, ex, FeatureConfig(device="cpu", read_workers=1))
    with open_slide(files["damaged"]) as r:
        bag = extract_slide(r, ex, FeatureConfig(device="cpu", read_workers=1, max_unreadable=0.3))
    assert bag.attrs["unreadable_tiles"] >= 1
    assert bag.n < clean.n and np.isfinite(bag.features).all()
    with open_slide(files["damaged"]) as r, pytest.raises(Exception, match="cannot be decoded"):
        extract_slide(r, ex, FeatureConfig(device="cpu", read_workers=1, max_unreadable=0.01))


def _annotate(slide: Path) -> None:
    square = [[100, 100], [1400, 100], [1400, 1400], [100, 1400], [100, 100]]
    feat = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [square]},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
    }
    slide.with_suffix(".geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feat]}))


def test_annotated_dataset_leaves_out_damaged_patches(files: dict[str, Path], tmp_path: Path) -> None:
    from engine.data.slides import open_annotated_slides

    for name in ("clean", "damaged"):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(files[name], d / f"{name}.tif")
        _annotate(d / f"{name}.tif")
    clean = open_annotated_slides(tmp_path / "clean", size=64, mpp=1.458)
    ds = open_annotated_slides(tmp_path / "damaged", size=64, mpp=1.458, max_unreadable=0.3)
    assert 0 < len(ds) < len(clean)
    assert any("cannot be decoded" in w for w in ds.open_warnings)
    for i in range(len(ds)):  # every patch left in decodes
        assert ds.read(i).shape == (64, 64, 3)
    with pytest.raises(DatasetError, match="cannot be decoded"):
        open_annotated_slides(tmp_path / "damaged", size=64, mpp=1.458, max_unreadable=0.0)
