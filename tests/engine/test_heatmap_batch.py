"""``metascope heatmap`` batches: --roi, --skip-existing (resume), per-slide errors and exit status."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.data.geojson import points_in_rings, read_region_rings


def _roi(path: Path, x0: float, y0: float, x1: float, y1: float) -> Path:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"objectType": "annotation", "classification": {"name": "Region*"}}}]}
    path.write_text(json.dumps(doc))
    return path


def _args(slides: list[Path], model: Path, out: Path, *extra: str) -> list[str]:
    return ["heatmap", *map(str, slides), "--model", str(model), "--out", str(out), "--mpp", "0.5",
            "--batch-size", "32", "--workers", "1", *extra]


def test_roi_and_skip_existing_resume(synthetic_tiff_no_mpp, demo_onnx: Path, tmp_path: Path, capsys) -> None:
    roi = _roi(tmp_path / "roi.geojson", 0, 0, 1000, 1536)
    out = tmp_path / "out"
    assert main(_args([synthetic_tiff_no_mpp.path], demo_onnx, out, "--roi", str(roi), "--skip-existing")) == 0
    folder = out / "generic"
    meta = json.loads((folder / "heatmap.json").read_text())
    assert meta["config"]["roi"] == str(roi.resolve())
    tiles = np.loadtxt(folder / "tiles.csv", delimiter=",", skiprows=1, ndmin=2)
    assert len(tiles) > 0
    centres = tiles[:, :2] + tiles[:, 2:4] / 2
    assert points_in_rings(centres, read_region_rings(roi)).all()  # only tiles inside the annotation
    stamp = (folder / "heatmap.json").stat().st_mtime_ns
    capsys.readouterr()

    # same model and settings: not recomputed
    assert main(_args([synthetic_tiff_no_mpp.path], demo_onnx, out, "--roi", str(roi), "--skip-existing")) == 0
    assert "already done" in capsys.readouterr().out
    assert (folder / "heatmap.json").stat().st_mtime_ns == stamp

    # other settings (no ROI): computed again, more tiles
    assert main(_args([synthetic_tiff_no_mpp.path], demo_onnx, out, "--skip-existing")) == 0
    assert "already done" not in capsys.readouterr().out
    assert json.loads((folder / "heatmap.json").read_text())["summary"]["tiles_analysed"] > len(tiles)


def test_roi_without_tissue_and_unreadable_roi_are_bad_input(synthetic_tiff_no_mpp, demo_onnx, tmp_path, capsys) -> None:
    empty = _roi(tmp_path / "glass.geojson", 0, 0, 20, 20)
    assert main(_args([synthetic_tiff_no_mpp.path], demo_onnx, tmp_path / "o1", "--roi", str(empty))) == 2
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    assert main(_args([synthetic_tiff_no_mpp.path], demo_onnx, tmp_path / "o2", "--roi", str(bad))) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and "Traceback" not in "".join(errors)


def test_an_unexpected_failure_never_stops_the_batch(
    synthetic_tiff_no_mpp, blank_slide, demo_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import engine.infer.pipeline as pipeline

    real = pipeline.compute_heatmap
    calls: list[str] = []

    def crashing(reader, *a, **kw):
        calls.append(reader.info.name)
        if len(calls) == 1:
            raise RuntimeError("simulated crash")
        return real(reader, *a, **kw)

    monkeypatch.setattr(pipeline, "compute_heatmap", crashing)
    slides = [synthetic_tiff_no_mpp.path, blank_slide.path, synthetic_tiff_no_mpp.path]
    rc = main(_args(slides, demo_onnx, tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 1  # an unexpected failure outranks bad input
    assert "unexpected failure (RuntimeError: simulated crash)" in err
    assert "3 slide(s): 1 done, 1 bad input, 1 unexpected" in err
    assert len(calls) == 3 and (tmp_path / "out" / "generic-2" / "heatmap.json").is_file()


def test_roi_folder_one_file_per_slide(synthetic_tiff_no_mpp, blank_slide, demo_onnx, tmp_path, capsys) -> None:
    rois = tmp_path / "rois"
    rois.mkdir()
    _roi(rois / "generic.geojson", 0, 0, 700, 700)  # blank.svs has none: that slide fails, the other runs
    rc = main(_args([blank_slide.path, synthetic_tiff_no_mpp.path], demo_onnx, tmp_path / "out", "--roi", str(rois)))
    err = capsys.readouterr().err
    assert rc == 2 and "no region of interest blank.geojson" in err
    meta = json.loads((tmp_path / "out" / "generic" / "heatmap.json").read_text())
    assert meta["config"]["roi"] == str((rois / "generic.geojson").resolve())
