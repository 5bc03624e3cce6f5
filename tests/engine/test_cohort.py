"""Cohorts (engine/cohort): ``--ray`` argument errors, no ray import without ``--ray``, shared per-slide steps.

The Ray cluster itself is exercised in tests/engine/test_cohort_ray.py (slow).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parents[2]


def _commands(slide: Path, model: Path, tmp: Path) -> dict[str, list[str]]:
    manifest = tmp / "manifest.csv"
    manifest.write_text(f"slide,label,patient\n{slide},N0,p1\n")
    return {
        "heatmap": ["heatmap", str(slide), "--model", str(model), "--out", str(tmp / "h"), "--mpp", "0.5"],
        "mil features": ["mil", "features", str(manifest), "--out", str(tmp / "f")],
        "evaluate-slides": ["evaluate-slides", "--model", str(model), "--slides", str(slide), "--out", str(tmp / "e")],
    }


@pytest.mark.parametrize("command", ["heatmap", "mil features", "evaluate-slides"])
def test_ray_missing_is_one_error_line_naming_the_extra(
    command: str, synthetic_tiff_no_mpp, demo_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    argv = _commands(synthetic_tiff_no_mpp.path, demo_onnx, tmp_path)[command]
    assert main([*argv, "--ray", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "pip install -e '.[distributed]'" in err[-1]
    assert not (tmp_path / "h").exists() and not (tmp_path / "e").exists()  # failed before any work


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray", " "], "--ray needs 'auto' or a head node address"),
        (["--ray", "auto", "--ray-cpus", "0"], "--ray-cpus must be a positive number"),
        (["--ray", "auto", "--ray-retries", "-1"], "--ray-retries must be >= 0"),
    ],
)
def test_bad_ray_options_exit_2(extra, message, synthetic_tiff_no_mpp, demo_onnx, tmp_path: Path, capsys) -> None:
    argv = _commands(synthetic_tiff_no_mpp.path, demo_onnx, tmp_path)["heatmap"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err


def test_without_ray_nothing_imports_ray(synthetic_tiff_no_mpp, demo_onnx: Path, tmp_path: Path) -> None:
    # a fresh interpreter: every CLI module imported (the parser), then a two-slide heatmap batch
    code = textwrap.dedent(
        f"""
        import sys
        from engine.cli import build_parser, main
        import engine.cli.evaluate_slides, engine.cli.mil, engine.cli.mil_extras, engine.cli.slides
        import engine.cohort.tasks
        build_parser()
        slide = {str(synthetic_tiff_no_mpp.path)!r}
        rc = main(["heatmap", slide, slide, "--model", {str(demo_onnx)!r}, "--out", {str(tmp_path / "out")!r},
                   "--mpp", "0.5", "--workers", "1", "--skip-existing"])
        assert rc == 0, rc
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        assert not loaded, loaded
        print("no ray")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no ray" in proc.stdout
    assert (tmp_path / "out" / "generic" / "heatmap.json").is_file() and (tmp_path / "out" / "generic-2").is_dir()


def test_result_names_are_decided_before_any_slide_runs() -> None:
    from engine.cohort.tasks import named_slides

    items = named_slides(["a/x.svs", "b/x.tif", "c/y.ndpi", "d/x.svs"])
    assert [i.name for i in items] == ["x", "x-2", "y", "x-3"]
    assert [i.slide for i in items] == ["a/x.svs", "b/x.tif", "c/y.ndpi", "d/x.svs"]


def test_extraction_outcomes_fill_the_report_as_the_loop_does() -> None:
    from engine.mil.features import ExtractionReport, SlideExtraction

    rep = ExtractionReport()
    for r in (
        SlideExtraction("a", "done", tiles=12, recomputed="mpp"),
        SlideExtraction("b", "skipped"),
        SlideExtraction("c", "no_tissue", "c: no tissue"),
        SlideExtraction("d", "failed", "unexpected failure (worker died)"),
    ):
        r.add_to(rep)
    assert rep.done == ["a"] and rep.tiles == 12 and rep.recomputed == {"a": "mpp"}
    assert rep.skipped == ["b"] and rep.no_tissue == {"c": "c: no tissue"}
    assert rep.failed == {"d": "unexpected failure (worker died)"}
