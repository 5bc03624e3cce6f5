"""The cheaper per-slide steps (issue 15) change nothing a user sees.

Tissue detection and slide QC use the fast morphology of ``engine/slides/morph.py``, one
labelling for small holes, integer summed-area tables and the glass colour tissue detection found; the overlay paints QC
reasons from the flagged pixels only and encodes overlay.png at a faster zlib level. Here the
same generated slide (pen, fold, bubble, holes) goes through the previous implementations (scipy
morphology, scipy's flood fill, a per-image coordinate grid) and the current ones: tissue mask,
QC flags, heatmap and overlay pixels are identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from engine.infer import outputs
from engine.infer.pipeline import InferenceConfig, compute_heatmap
from engine.slides import morph, qc_render, tissue
from engine.slides.artefacts import add_bubble, add_fold, draw_pen
from engine.slides.base import ArrayReader
from engine.slides.qc import REASON_RGB, REASONS, UNREADABLE
from engine.slides.synthetic import make_texture
from tests.engine.test_morph import _fill_small_holes_flood

STRUCTURES = {morph.CROSS: None, morph.SQUARE3: np.ones((3, 3), bool), morph.SQUARE2: np.ones((2, 2), bool)}


@pytest.fixture(scope="module")
def slide_rgb() -> np.ndarray:
    rgb = make_texture(1536, 1536, 0.5, seed=3).render(0, 0, 1536, 1536)
    draw_pen(rgb, [(200, 300), (700, 420), (1300, 260)], width=60, colour="green")
    add_fold(rgb, (500, 500, 1000, 900))
    add_bubble(rgb, (1100, 1000), 180)
    rgb[600:640, 900:950] = 245  # a small hole in the tissue (filled) ...
    rgb[1300:1500, 100:400] = 245  # ... and a large one (kept)
    return rgb


def _reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap in the previous implementations (scipy's morphology and flood fill)."""
    for name in ("binary_dilation", "binary_erosion", "binary_opening", "binary_closing"):
        scipy_op = getattr(ndimage, name)

        def op(mask, element=morph.CROSS, iterations=1, _f=scipy_op):  # type: ignore[no-untyped-def]
            return _f(mask, structure=STRUCTURES[element], iterations=iterations)

        monkeypatch.setattr(morph, name, op)

    monkeypatch.setattr(tissue, "_fill_small_holes", _fill_small_holes_flood)
    monkeypatch.setattr(tissue.TissueMask, "_summed_area_table", _float_summed_area_table)
    monkeypatch.setattr(qc_render, "reason_rgba", _reason_rgba_grid)


def _float_summed_area_table(self: tissue.TissueMask) -> np.ndarray:
    """The previous summed-area table, in float64."""
    h, w = self.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.float64)
    np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.float64), axis=1, out=sat[1:, 1:])
    return sat


def test_tissue_fractions_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    for shape in ((1, 1), (3, 40), (57, 31)):
        mask = tissue.TissueMask(rng.random(shape) < 0.4, 3.7, 0.4, "test")
        x0, y0 = rng.uniform(-20, 220, (2, 500))
        x1, y1 = x0 + rng.uniform(0, 60, 500), y0 + rng.uniform(0, 60, 500)
        got = mask.fraction_in_rects(x0, y0, x1, y1)
        np.testing.assert_array_equal(mask._summed_area_table(), _float_summed_area_table(mask))
        with monkeypatch.context() as m:
            m.setattr(tissue.TissueMask, "_summed_area_table", _float_summed_area_table)
            want = mask.fraction_in_rects(x0, y0, x1, y1)
        np.testing.assert_array_equal(got, want)


def _reason_rgba_grid(codes: np.ndarray, hatch: bool = True) -> np.ndarray:
    """The previous reason layer: stripes from a full-image coordinate grid."""
    codes = np.asarray(codes)
    h, w = codes.shape
    out = np.zeros((h, w, 4), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    stripe = ((xx + yy) % qc_render.HATCH_PERIOD) < qc_render.HATCH_ON if hatch else np.ones((h, w), bool)
    for code in np.unique(codes):
        code = int(code)
        if code <= 0 or code >= len(REASONS):
            continue
        m = codes == code
        out[m, :3] = REASON_RGB[REASONS[code]]
        if code == UNREADABLE:
            out[m, 3] = 230
        elif REASONS[code] == "background":
            out[m, 3] = 60
        else:
            out[m, 3] = np.where(stripe[m], 235, 70)
    return out


def _run(rgb: np.ndarray, model: Path):  # type: ignore[no-untyped-def]
    reader = ArrayReader(rgb, mpp=0.5, levels=3)
    result = compute_heatmap(reader, model, InferenceConfig(batch_size=16))
    thumb = reader.thumbnail(outputs.OVERLAY_MAX_SIZE)
    return result, outputs.render_overlay(thumb, result, reader.info.dimensions)


def test_heatmap_tissue_qc_and_overlay_are_unchanged(
    slide_rgb: np.ndarray, demo_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, new_overlay = _run(slide_rgb, demo_onnx)
    with monkeypatch.context() as m:
        _reference(m)
        old, old_overlay = _run(slide_rgb, demo_onnx)
    counts = new.plan.qc.counts()
    assert counts["pen"] and counts["fold"] and counts["bubble"], counts  # every check had work to do
    np.testing.assert_array_equal(new.plan.tissue.mask, old.plan.tissue.mask)
    np.testing.assert_array_equal(new.plan.qc.code_map, old.plan.qc.code_map)
    np.testing.assert_array_equal(new.plan.qc.rc, old.plan.qc.rc)
    np.testing.assert_array_equal(new.plan.qc.reason, old.plan.qc.reason)
    assert new.plan.qc.stain == old.plan.qc.stain
    assert new.plan.qc.area_fractions == old.plan.qc.area_fractions
    np.testing.assert_array_equal(new.grid, old.grid)  # NaN where not analysed, in both
    np.testing.assert_array_equal(new.probabilities, old.probabilities)
    np.testing.assert_array_equal(new_overlay, old_overlay)


def test_unhatched_reason_layer_is_unchanged() -> None:
    codes = np.random.default_rng(0).integers(-1, len(REASONS) + 1, size=(37, 53))
    for hatch in (True, False):
        np.testing.assert_array_equal(qc_render.reason_rgba(codes, hatch), _reason_rgba_grid(codes, hatch))


def test_overlay_png_holds_the_rendered_pixels(slide_rgb: np.ndarray, demo_onnx: Path, tmp_path: Path) -> None:
    reader = ArrayReader(slide_rgb, mpp=0.5, levels=3)
    result = compute_heatmap(reader, demo_onnx, InferenceConfig(batch_size=16, max_tiles=40))
    folder = outputs.write_heatmap_outputs(result, tmp_path, reader=reader)
    thumb = reader.thumbnail(outputs.OVERLAY_MAX_SIZE)
    with Image.open(folder / "overlay.png") as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), outputs.render_overlay(thumb, result, reader.info.dimensions))
