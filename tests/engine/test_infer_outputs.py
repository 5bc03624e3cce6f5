"""Result files: present, well-formed, reloadable, and written atomically."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engine.infer import outputs
from engine.infer.outputs import (
    FILES,
    HeatmapFileError,
    heatmap_to_thumbnail,
    load_heatmap_result,
    render_overlay,
    write_heatmap_outputs,
)
from engine.infer.pipeline import HeatmapResult, InferenceConfig, compute_heatmap
from engine.slides.base import ArrayReader


@pytest.fixture(scope="module")
def result_and_reader(array_slide_with_truth, demo_onnx: Path) -> tuple[HeatmapResult, ArrayReader]:
    reader, _ = array_slide_with_truth
    return compute_heatmap(reader, demo_onnx, InferenceConfig(threshold=0.5)), reader


def test_all_files_are_written_and_well_formed(result_and_reader, tmp_path: Path) -> None:
    result, reader = result_and_reader
    folder = write_heatmap_outputs(result, tmp_path / "out", reader=reader, folder_name="case 1/a")
    assert folder == tmp_path / "out" / "case_1_a"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["case_1_a"]  # no temporary leftovers

    grid = np.load(folder / "heatmap.npy")
    assert grid.dtype == np.float32 and grid.shape == result.grid.shape
    assert np.isnan(grid[0, 0])  # glass corner
    assert np.isfinite(grid).sum() == len(result.level0_xy)

    meta = json.loads((folder / "heatmap.json").read_text())
    for key in ("slide", "model", "tile_size_level0", "stride_level0", "grid_origin_level0", "mpp",
                "slide_mpp", "slide_mpp_source", "class_names", "runtime_s", "summary"):
        assert key in meta, key
    assert meta["slide"]["dimensions"] == [1536, 1024]
    assert len(meta["model"]["sha256"]) == 64 and meta["model"]["name"] == "Demo model (synthetic tissue)"
    assert meta["class_names"] == ["normal", "tumour"] and meta["slide_mpp"] == 0.5
    assert meta["mpp"] == result.model["mpp"]  # the analysis resolution
    summary = meta["summary"]
    for key in ("max_probability", "tissue_area_mm2", "fraction_above_threshold", "top_tiles"):
        assert key in summary, key
    assert summary["top_tiles"][0]["probability"] == pytest.approx(summary["max_probability"])

    with open(folder / "tiles.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["x", "y", "width", "height", "prob_normal", "prob_tumour"]
    assert len(rows) == len(result.level0_xy)
    assert all(int(r["width"]) == result.tile_size_level0 for r in rows)
    assert all(abs(float(r["prob_normal"]) + float(r["prob_tumour"]) - 1) < 1e-4 for r in rows)

    gj = json.loads((folder / "tiles.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    n_pos = int((result.positive_probabilities >= 0.5).sum())
    assert n_pos > 0 and len(gj["features"]) == n_pos
    for f in gj["features"]:
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
        props = f["properties"]
        assert props["objectType"] in ("annotation", "detection")
        assert props["classification"]["name"] == "tumour" and len(props["classification"]["color"]) == 3
        assert props["measurements"]["prob_tumour"] >= 0.5

    from PIL import Image

    with Image.open(folder / "overlay.png") as im:
        assert im.mode == "RGB" and max(im.size) == 1536


def test_overlay_colours_only_analysed_areas(result_and_reader) -> None:
    result, reader = result_and_reader
    thumb = reader.thumbnail(512)
    over = render_overlay(thumb, result, (1536, 1024))
    heat = heatmap_to_thumbnail(result, (thumb.shape[1], thumb.shape[0]), (1536, 1024))
    off = ~np.isfinite(heat)
    np.testing.assert_array_equal(over[off], thumb[off])  # glass untouched
    assert (over[~off] != thumb[~off]).any()


def test_reload_round_trips(result_and_reader, tmp_path: Path) -> None:
    result, reader = result_and_reader
    folder = write_heatmap_outputs(result, tmp_path, reader=reader)
    back = load_heatmap_result(folder)
    np.testing.assert_array_equal(np.isnan(back.grid), np.isnan(result.grid))
    np.testing.assert_allclose(np.nan_to_num(back.grid), np.nan_to_num(result.grid))
    np.testing.assert_array_equal(back.grid_rc, result.grid_rc)
    np.testing.assert_array_equal(back.level0_xy, result.level0_xy)
    np.testing.assert_allclose(back.probabilities, result.probabilities, atol=1e-6)
    assert back.summary == json.loads(json.dumps(result.summary))
    assert back.plan is None and back.class_names == result.class_names


def test_reload_of_an_incomplete_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "heatmap.json").write_text("{}")
    with pytest.raises(HeatmapFileError, match="missing"):
        load_heatmap_result(tmp_path)


def test_failure_mid_write_leaves_no_half_folder(result_and_reader, tmp_path: Path, monkeypatch) -> None:
    result, reader = result_and_reader
    out = tmp_path / "out"

    def boom(path: Path, res: HeatmapResult) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "write_geojson", boom)
    with pytest.raises(OSError, match="disk full"):
        write_heatmap_outputs(result, out, reader=reader)
    assert list(out.iterdir()) == []

    # with an earlier complete result present, a failed rewrite keeps it intact
    monkeypatch.undo()
    folder = write_heatmap_outputs(result, out, reader=reader)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(outputs, "write_geojson", boom)
    with pytest.raises(OSError):
        write_heatmap_outputs(result, out, reader=reader)
    assert [p.name for p in out.iterdir()] == [folder.name]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
