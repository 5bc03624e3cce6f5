"""Tissue detection: covers the tissue, not the glass; blank slides give an empty mask."""

from __future__ import annotations

import numpy as np
import pytest

from engine.slides import ArrayReader, TissueMask, detect_tissue, open_slide
from engine.slides.synthetic import SyntheticSlide
from engine.slides.tissue import otsu_threshold, tissue_from_rgb


def test_mask_covers_tissue_and_not_glass(synthetic_svs: SyntheticSlide) -> None:
    with open_slide(synthetic_svs.path) as r:
        tm = detect_tissue(r, max_size=512)
    assert tm.shape == (384, 512)
    assert tm.downsample == pytest.approx(8.0)
    truth = synthetic_svs.tissue_mask(tm.shape)
    inter = (tm.mask & truth).sum()
    union = (tm.mask | truth).sum()
    assert inter / union > 0.9
    assert tm.mask[~truth].mean() < 0.03  # glass is not called tissue
    assert tm.tissue_fraction == pytest.approx(truth.mean(), abs=0.05)
    assert not tm.is_empty
    assert tm.method.startswith("otsu-saturation")
    assert tm.area_mm2(0.5) == pytest.approx(tm.mask.sum() * (8 * 0.5) ** 2 / 1e6)


def test_blank_slide_gives_empty_mask(blank_slide: SyntheticSlide) -> None:
    with open_slide(blank_slide.path) as r:
        tm = detect_tissue(r, max_size=512)
    assert tm.is_empty
    assert tm.tissue_fraction == 0.0


def test_noisy_glass_is_not_tissue() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(238, 4, size=(400, 600, 3)), 0, 255).astype(np.uint8)
    tm = detect_tissue(ArrayReader(glass, mpp=0.5))
    assert tm.is_empty


def test_pen_marks_and_black_areas_are_excluded() -> None:
    img = np.full((400, 400, 3), 245, np.uint8)
    img[50:350, 50:200] = (230, 150, 190)  # pink tissue
    img[50:350, 250:280] = (40, 90, 170)  # blue marker ink
    img[50:350, 320:350] = (60, 160, 70)  # green marker ink
    img[0:20, :] = (10, 10, 10)  # slide edge / black pen
    tm = tissue_from_rgb(img, downsample=16.0, mpp=0.5)
    assert tm.mask[60:340, 60:190].mean() > 0.95
    assert tm.mask[:, 240:].sum() == 0
    assert tm.mask[:20].sum() == 0


def test_small_specks_dropped_and_small_holes_filled() -> None:
    img = np.full((500, 500, 3), 245, np.uint8)
    img[100:400, 100:400] = (220, 140, 190)
    img[240:246, 240:246] = 245  # small hole inside tissue
    img[20:23, 20:23] = (220, 140, 190)  # dust speck on glass
    tm = tissue_from_rgb(img, downsample=16.0, mpp=0.5)
    assert tm.mask[240:246, 240:246].all()
    assert not tm.mask[15:30, 15:30].any()


def test_mask_mpp_limits_mask_resolution(synthetic_svs: SyntheticSlide) -> None:
    with open_slide(synthetic_svs.path) as r:
        tm = detect_tissue(r, max_size=2048, mask_mpp=16.0)  # 32 level-0 px per mask px
    assert tm.shape == (96, 128)
    assert tm.downsample == pytest.approx(32.0)


def test_fraction_in_rects_is_area_weighted() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    tm = TissueMask(mask, 10.0, float(mask.mean()), "test")
    x0 = np.array([30.0, 0.0, 35.0, 25.0, 200.0])
    y0 = np.array([20.0, 0.0, 25.0, 15.0, 200.0])
    x1 = np.array([70.0, 10.0, 40.0, 35.0, 300.0])
    y1 = np.array([50.0, 10.0, 30.0, 25.0, 300.0])
    frac = tm.fraction_in_rects(x0, y0, x1, y1)
    # whole block, empty corner, a sub-pixel rectangle inside, a rectangle a quarter on tissue, outside
    assert frac == pytest.approx([1.0, 0.0, 1.0, 0.25, 0.0], abs=1e-6)


def test_otsu_splits_two_modes() -> None:
    vals = np.concatenate([np.full(100, 0.1), np.full(100, 0.6)])
    assert 0.1 < otsu_threshold(vals) < 0.6
    assert otsu_threshold(np.array([])) == 1.0


def test_tissue_mask_validates() -> None:
    with pytest.raises(ValueError):
        TissueMask(np.zeros((4, 4), np.uint8), 1.0, 0.0, "x")
    with pytest.raises(ValueError):
        TissueMask(np.zeros((4, 4), bool), 0.0, 0.0, "x")
