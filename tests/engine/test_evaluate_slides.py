"""``metascope evaluate-slides`` and the FROC: generated slides with known tumours scored against their annotations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.infer.froc import Detections, froc, local_maxima, match_detections
from engine.slides.synthetic import Ellipse, write_synthetic_slide


def _ellipse_feature(e: Ellipse, cls: str = "Tumor") -> dict:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    ring = [[e.cx + e.rx * math.cos(a), e.cy + e.ry * math.sin(a)] for a in t]
    ring.append(ring[0])
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": cls}}}


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], Ellipse]:
    root = tmp_path_factory.mktemp("eval-slides")
    tumour = Ellipse(1100.0, 800.0, 380.0, 320.0)
    pos = write_synthetic_slide(root / "pos.svs", 2048, 1536, seed=3, tumour_regions=(tumour,), levels=2,
                                with_label=False).path
    neg = write_synthetic_slide(root / "neg.svs", 2048, 1536, seed=4, tumour_regions=(), levels=2,
                                with_label=False).path
    ann = root / "ann"
    ann.mkdir()
    doc = {"type": "FeatureCollection",
           "features": [_ellipse_feature(tumour), _ellipse_feature(Ellipse(300, 300, 80, 80), "Stroma")]}
    (ann / "pos.geojson").write_text(json.dumps(doc))
    return ann, [pos, neg], tumour


def test_froc_matches_the_camelyon_definition() -> None:
    # 4 lesions: found at 0.9, 0.8, 0.3; one missed. 2 slides; false detections at 0.85, 0.5, 0.2, 0.1
    curve = froc(np.array([0.9, 0.8, 0.3, np.nan]), np.array([0.85, 0.5, 0.2, 0.1]), n_slides=2)
    assert curve["thresholds"][:3] == [0.9, 0.85, 0.8]
    # descending thresholds: (FP per slide, sensitivity) from (0, 1/4) on
    fp, sens = curve["fp_per_slide"], curve["sensitivity"]
    assert list(zip(fp, sens, strict=True))[:4] == [(0.0, 0.25), (0.5, 0.25), (0.5, 0.5), (1.0, 0.5)]
    assert curve["sensitivity_at"]["0.25"] == pytest.approx(0.25)
    assert curve["sensitivity_at"]["2"] == pytest.approx(0.75) and curve["sensitivity_at"]["8"] == pytest.approx(0.75)
    # at exactly 1 FP per slide: the best sensitivity reached with that many (as np.interp in the
    # CAMELYON16 evaluation code, which takes the last of equal FP rates)
    assert curve["sensitivity_at"]["0.5"] == 0.5 and curve["sensitivity_at"]["1"] == 0.75
    assert curve["score"] == pytest.approx(np.mean([0.25, 0.5, 0.75, 0.75, 0.75, 0.75]))
    assert froc(np.zeros(0), np.array([0.5]), 1)["score"] is None


def test_local_maxima_one_per_plateau_and_matching() -> None:
    g = np.full((6, 6), 0.1, dtype=np.float32)
    g[1:3, 1:3] = 0.9  # a plateau: one detection
    g[4, 4] = 0.6
    g[0, 5] = np.nan
    det = local_maxima(g, (0, 0), 100, 100, floor=0.2)
    assert det.probability.tolist() == pytest.approx([0.9, 0.6])
    assert det.xy[0].tolist() == [150.0, 150.0] and det.xy[1].tolist() == [450.0, 450.0]
    square = (np.array([[100.0, 100.0], [300, 100], [300, 300], [100, 300], [100, 100]]),)
    score, fp, hit = match_detections(det, [square], np.array([False]))
    assert score.tolist() == pytest.approx([0.9]) and fp.tolist() == pytest.approx([0.6]) and hit.tolist() == [0, -1]
    empty = match_detections(Detections(np.zeros((0, 2)), np.zeros(0)), [square], np.array([False]))
    assert np.isnan(empty[0][0])


def test_evaluate_slides_end_to_end(annotated, demo_onnx: Path, tmp_path: Path, capsys) -> None:
    ann, slides, tumour = annotated
    out = tmp_path / "eval"
    rc = main(["evaluate-slides", "--model", str(demo_onnx), "--slides", *map(str, slides), "--annotations", str(ann),
               "--out", str(out), "--batch-size", "32", "--workers", "1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["slides"] == 2 and m["positive_slides"] == 1 and m["lesions"] == 1
    assert m["tumour_tiles"] > 0 and m["tile_auc"] > 0.9  # the demo model finds the synthetic tumour
    assert m["slide_auc"] == 1.0
    assert m["froc_sensitivity_at"]["8"] == 1.0 and 0 < m["froc_score"] <= 1
    assert "tile AUC" in printed and "FROC" in printed
    for f in ("froc.png", "roc_tiles.png", "roc_slides.png", "slides.csv", "detections.csv", "froc.csv"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "heatmaps" / "pos" / "lesions.geojson").is_file()
    rows = (out / "slides.csv").read_text().splitlines()
    assert rows[0].startswith("slide,path,annotation,positive,score") and len(rows) == 3

    # a second run reuses the heatmaps; a manifest gives the same numbers
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,annotation\n{slides[0]},{ann / 'pos.geojson'}\n{slides[1]},\n")
    assert main(["evaluate-slides", "--model", str(demo_onnx), "--manifest", str(manifest), "--out", str(out),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["tile_auc"] == m["tile_auc"] and again["froc_score"] == m["froc_score"]
    assert all(r["heatmap_reused"] == 1 for r in again["per_slide"])


@pytest.mark.parametrize("extra", [["--annotations", "nope.geojson"], ["--manifest", "missing.csv"]])
def test_bad_input_is_one_error_line(extra, annotated, demo_onnx: Path, tmp_path: Path, capsys) -> None:
    _, slides, _ = annotated
    args = ["evaluate-slides", "--model", str(demo_onnx), "--out", str(tmp_path / "o")]
    args += (["--slides", str(slides[0])] if extra[0] == "--annotations" else []) + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_small_lesions_are_ignored_like_camelyon16_isolated_tumour_cells() -> None:
    from engine.infer.pipeline import HeatmapResult
    from engine.infer.slide_eval import score_slide

    g = np.full((10, 10), 0.005, dtype=np.float32)  # below the detection floor
    g[2, 2] = 0.9  # inside the small lesion: neither true nor false positive
    g[7, 7] = 0.8  # inside the large one
    rc = np.argwhere(np.isfinite(g)).astype(np.int32)
    p = g[rc[:, 0], rc[:, 1]]
    result = HeatmapResult(
        grid=g, probabilities=np.stack([1 - p, p], 1), level0_xy=rc[:, ::-1].astype(np.int64) * 100, grid_rc=rc,
        class_names=("normal", "tumour"), positive_class=1, tile_size_level0=100, stride_level0=100,
        origin_level0=(0, 0), slide_mpp=1.0, slide_mpp_source="file", slide={"name": "s"}, model={}, summary={},
        timing={}, config={"threshold": 0.5})

    def square(x0: float, y0: float, side: float) -> tuple[np.ndarray, ...]:
        return (np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]),)

    s = score_slide(result, [square(200, 200, 150), square(600, 600, 300)])  # 0.21 mm and 0.42 mm across
    assert s["lesions"] == 1 and s["ignored_lesions"] == 1
    assert s["lesion_scores"].tolist() == pytest.approx([0.8])
    assert s["fp_probs"].size == 0 and s["in_ignored"].sum() == 1
