"""``metascope info | heatmap | selftest`` as a user runs them: exit codes, messages, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.slides.synthetic import SyntheticSlide


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _assert_clean(out_dir: Path) -> None:
    """No half-written result: no temporary folders, every result folder complete."""
    if not out_dir.exists():
        return
    for p in out_dir.iterdir():
        assert not p.name.startswith("."), f"leftover {p.name}"
        assert (p / "heatmap.json").is_file() and (p / "tiles.geojson").is_file()


def test_info_text_and_json(synthetic_svs: SyntheticSlide, capsys) -> None:
    assert main(["info", str(synthetic_svs.path)]) == 0
    out = capsys.readouterr().out
    assert "4096 x 3072" in out and "0.5" in out and "label" in out
    assert main(["info", str(synthetic_svs.path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["dimensions"] == [4096, 3072] and d["mpp"] == [0.5, 0.5]


def test_info_of_a_slide_without_mpp(synthetic_tiff_no_mpp: SyntheticSlide, capsys) -> None:
    assert main(["info", str(synthetic_tiff_no_mpp.path)]) == 0
    assert "--mpp" in capsys.readouterr().out
    assert main(["info", str(synthetic_tiff_no_mpp.path), "--mpp", "0.25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mpp"] == [0.25, 0.25]


def test_heatmap_of_several_slides_continues_after_a_failure(
    synthetic_tiff_no_mpp: SyntheticSlide, blank_slide: SyntheticSlide, demo_onnx: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "results"
    rc = main(
        ["heatmap", str(blank_slide.path), str(synthetic_tiff_no_mpp.path), "--model", str(demo_onnx),
         "--out", str(out), "--mpp", "0.5", "--batch-size", "16", "--workers", "1"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    errors = _error_lines(err)
    assert len(errors) == 1 and "blank" in errors[0] and "tissue" in errors[0]
    assert [p.name for p in out.iterdir()] == ["generic"]
    _assert_clean(out)
    grid = np.load(out / "generic" / "heatmap.npy")
    assert np.isfinite(grid).any() and np.isnan(grid).any()
    meta = json.loads((out / "generic" / "heatmap.json").read_text())
    assert meta["slide_mpp"] == 0.5 and meta["slide_mpp_source"] == "user"


@pytest.mark.parametrize(
    "case",
    ["missing", "not_a_slide", "truncated", "no_tissue", "no_mpp", "no_metadata", "wrong_input", "not_onnx",
     "unwritable", "bad_mpp", "cuda_unusable"],
)
def test_bad_input_is_one_error_line_and_exit_2(case: str, request: pytest.FixtureRequest, tmp_path: Path, capsys) -> None:
    fx = request.getfixturevalue
    slide = str(fx("synthetic_svs").path)
    model = str(fx("demo_onnx"))
    out = tmp_path / "out"
    extra: list[str] = []
    if case == "missing":
        slide = str(tmp_path / "nowhere.svs")
    elif case == "not_a_slide":
        slide = str(fx("not_a_slide"))
    elif case == "truncated":
        slide = str(fx("truncated_slide"))
    elif case == "no_tissue":
        slide = str(fx("blank_slide").path)
    elif case == "no_mpp":
        slide = str(fx("synthetic_tiff_no_mpp").path)
    elif case == "no_metadata":
        model = str(fx("onnx_without_metadata"))
    elif case == "wrong_input":
        model = str(fx("onnx_wrong_input_size"))
    elif case == "not_onnx":
        model = str(fx("not_onnx"))
    elif case == "unwritable":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        out = blocker / "out"  # a folder cannot be created inside a file (holds for root too)
    elif case == "bad_mpp":
        extra = ["--mpp", "-3"]
    elif case == "cuda_unusable":
        from engine.infer.session import load_model

        if load_model(model).device == "cuda":
            pytest.skip("a usable GPU is present")
        extra = ["--device", "cuda"]
    rc = main(["heatmap", slide, "--model", model, "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    errors = _error_lines(captured.err)
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err and len(errors[0]) < 400
    if case == "no_mpp":
        assert "--mpp" in errors[0]
    if case in ("missing", "not_a_slide", "truncated"):
        assert Path(slide).name in errors[0]
    if case == "unwritable":
        assert [p.name for p in tmp_path.iterdir()] == ["a-file"]
        return
    _assert_clean(out)
    if out.is_dir():
        assert list(out.iterdir()) == []


def test_info_bad_input(tmp_path: Path, not_a_slide: Path, capsys) -> None:
    assert main(["info", str(tmp_path / "missing.svs")]) == 2
    assert main(["info", str(not_a_slide)]) == 2
    assert len(_error_lines(capsys.readouterr().err)) == 2


def test_selftest_passes_and_reuses_the_demo_assets(monkeypatch, capsys) -> None:
    import engine.demo as demo
    from engine.paths import demo_dir

    monkeypatch.setattr(demo, "DEMO_SLIDE_SIZE", (3072, 2304))  # the real one takes longer to generate
    assert main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "self-test passed" in out and "FAILED" not in out
    files = {p.name: p.stat().st_mtime_ns for p in demo_dir().iterdir()}
    assert len(files) == 2  # slide and model, no temporary leftovers
    slide, model = demo.ensure_demo_assets()
    assert {slide.name, model.name} == set(files)
    assert {p.name: p.stat().st_mtime_ns for p in demo_dir().iterdir()} == files  # reused, not rewritten


@pytest.mark.realdata
def test_heatmap_on_a_real_aperio_slide(shared_data: Path, demo_onnx: Path, tmp_path: Path, capsys) -> None:
    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    rc = main(["heatmap", str(slide), "--model", str(demo_onnx), "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    folder = tmp_path / "CMU-1-Small-Region"
    meta = json.loads((folder / "heatmap.json").read_text())
    assert meta["slide"]["dimensions"] == [2220, 2967]
    assert meta["slide_mpp"] == pytest.approx(0.499, abs=1e-3) and meta["slide_mpp_source"] == "file"
    assert meta["summary"]["tiles_analysed"] > 20 and meta["summary"]["tissue_area_mm2"] > 0.1
    grid = np.load(folder / "heatmap.npy")
    assert grid.shape == tuple(meta["grid_shape"]) and np.isfinite(grid).sum() == meta["summary"]["tiles_analysed"]
    assert "CMU-1-Small-Region" in captured.out
