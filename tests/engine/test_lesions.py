"""Lesions from a heatmap: hysteresis regions, merged outlines, sizes, the slide category, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.data.geojson import points_in_rings, read_region_rings
from engine.infer.lesions import (
    CATEGORY_ITC,
    CATEGORY_MACRO,
    CATEGORY_MICRO,
    CATEGORY_NONE,
    CATEGORY_UNKNOWN,
    categorize,
    find_lesions,
    lesion_summary,
    operating_threshold,
    write_lesion_files,
)
from engine.infer.pipeline import HeatmapResult


def _result(grid: np.ndarray, stride: int = 100, mpp: float = 1.0, threshold: float = 0.5) -> HeatmapResult:
    rc = np.argwhere(np.isfinite(grid)).astype(np.int32)
    xy = rc[:, ::-1].astype(np.int64) * stride
    p = grid[rc[:, 0], rc[:, 1]].astype(np.float32)
    return HeatmapResult(
        grid=grid.astype(np.float32), probabilities=np.stack([1 - p, p], 1), level0_xy=xy, grid_rc=rc,
        class_names=("normal", "tumour"), positive_class=1, tile_size_level0=stride, stride_level0=stride,
        origin_level0=(0, 0), slide_mpp=mpp, slide_mpp_source="file", slide={"name": "s"}, model={},
        summary={}, timing={}, config={"threshold": threshold},
    )


def test_hysteresis_regions_outline_and_size() -> None:
    g = np.full((12, 14), 0.05, dtype=np.float32)
    g[0, :] = np.nan  # glass
    g[2:8, 2:9] = 0.9  # a 6 x 7 cell lesion (600 x 700 um at 100 px cells and 1 um/px)
    g[4:6, 4:6] = 0.05  # with a hole
    g[2:8, 9] = 0.3  # grows into cells >= 0.25 next to it
    g[10, 12] = 0.6  # a single-cell lesion
    g[10, 1] = 0.4  # below the threshold and not next to a seed: no lesion
    lesions = find_lesions(_result(g))
    assert len(lesions) == 2
    big, small = lesions
    assert big.cells == 6 * 8 - 4 and small.cells == 1
    assert big.area_mm2 == pytest.approx(44 * 0.01)
    # the diagonal of the 800 x 600 px region, a little less (corners are cut)
    assert 900 < big.diameter_px <= 1000 and big.diameter_mm == pytest.approx(big.diameter_px / 1000)
    assert big.max_probability == pytest.approx(0.9)
    assert big.mean_probability == pytest.approx((36 * 0.9 + 6 * 0.3 + 2 * 0.9) / 44, rel=1e-5)
    (poly,) = big.polygons
    assert len(poly) == 2  # exterior + the hole: a merged outline, not squares
    ext = poly[0]
    assert ext[:, 0].min() == pytest.approx(200, abs=15) and ext[:, 0].max() == pytest.approx(1000, abs=15)
    assert ext[:, 1].min() == pytest.approx(200, abs=15) and ext[:, 1].max() == pytest.approx(800, abs=15)
    inside = points_in_rings(np.array([[250.0, 250.0], [500.0, 500.0], [1100.0, 500.0]]), list(poly))
    assert inside.tolist() == [True, False, False]  # in, in the hole, outside
    assert small.peak_xy == (1250.0, 1050.0)
    assert categorize(big.diameter_mm) == CATEGORY_MICRO


@pytest.mark.parametrize(
    ("diameter", "has_mpp", "any_lesion", "expected"),
    [(0.2, True, True, CATEGORY_ITC), (0.21, True, True, CATEGORY_MICRO), (2.0, True, True, CATEGORY_MICRO),
     (2.01, True, True, CATEGORY_MACRO), (None, False, True, CATEGORY_UNKNOWN), (None, True, False, CATEGORY_NONE)],
)
def test_categories(diameter, has_mpp, any_lesion, expected) -> None:
    assert categorize(diameter, has_mpp, any_lesion) == expected


def test_without_mpp_the_category_is_unknown() -> None:
    g = np.zeros((5, 5), dtype=np.float32)
    g[2, 2] = 0.9
    r = _result(g, mpp=0.0)
    les = find_lesions(r)
    assert les[0].diameter_mm is None and les[0].area_mm2 is None
    assert lesion_summary(r, les)["category"] == "unknown (no mpp)"


def test_operating_threshold_from_the_package() -> None:
    assert operating_threshold(SimpleNamespace(extra={"operating_threshold": 0.83})) == 0.83
    assert operating_threshold(SimpleNamespace(extra={})) == 0.5
    assert operating_threshold(SimpleNamespace(extra={"operating_threshold": "x"})) == 0.5
    assert operating_threshold(SimpleNamespace(extra={"operating_threshold": 0.83}), 0.3) == 0.3


def test_files_qupath_geojson_and_csv(tmp_path: Path) -> None:
    g = np.zeros((30, 30), dtype=np.float32)
    g[3:28, 3:28] = 0.95  # 2.5 mm across: macrometastasis
    g[0, 29] = g[1, 28] = 0.7  # touching diagonally: one lesion
    r = _result(g)
    les = find_lesions(r)
    summary = lesion_summary(r, les)
    assert summary["count"] == 2 and summary["category"] == CATEGORY_MACRO
    assert summary["lesions"][0]["diameter_mm"] > summary["lesions"][1]["diameter_mm"]
    write_lesion_files(tmp_path, les)
    doc = json.loads((tmp_path / "lesions.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    f0 = doc["features"][0]
    assert f0["properties"]["objectType"] == "annotation" and f0["properties"]["classification"]["name"] == "Tumor"
    assert f0["properties"]["measurements"]["diameter_mm"] == summary["lesions"][0]["diameter_mm"]
    rings = read_region_rings(tmp_path / "lesions.geojson")  # the project's own GeoJSON reader opens it
    assert len(rings) >= 2
    with open(tmp_path / "lesions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(x["lesion"]) for x in rows] == [1, 2] and float(rows[0]["area_mm2"]) == pytest.approx(6.25)


def test_heatmap_cli_writes_lesions_and_prints_the_category(synthetic_svs, demo_onnx: Path, tmp_path: Path, capsys) -> None:
    from engine.cli import main

    out = tmp_path / "res"
    rc = main(["heatmap", str(synthetic_svs.path), "--model", str(demo_onnx), "--out", str(out),
               "--batch-size", "32", "--workers", "1"])
    printed = capsys.readouterr().out
    assert rc == 0
    folder = out / "synthetic"
    meta = json.loads((folder / "heatmap.json").read_text())
    les = meta["lesions"]
    assert les["count"] >= 1 and meta["category"] == les["category"]
    assert les["category"] in (CATEGORY_ITC, CATEGORY_MICRO, CATEGORY_MACRO)
    assert les["threshold"] == 0.5 == meta["threshold"]  # the demo package has no operating threshold
    assert f": {les['category']}" in printed
    feats = json.loads((folder / "lesions.geojson").read_text())["features"]
    assert len(feats) == les["count"]
    # the largest lesion lies over the known tumour
    x, y = les["lesions"][0]["peak_x"], les["lesions"][0]["peak_y"]
    (ell,) = synthetic_svs.tumour_regions
    assert ell.radial(np.array([x]), np.array([y]))[0, 0] <= 1.3
