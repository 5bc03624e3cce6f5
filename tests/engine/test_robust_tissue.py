"""Tissue detection on slides unlike the clean synthetic one: faint stain, tinted glass, marker
ink, black scanner borders, tissue cut off at the edge, huge level 0, a lone patch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.slides import ArrayReader, TilingConfig, detect_tissue, plan_tiles
from engine.slides.synthetic import Ellipse, make_texture

W, H = 1536, 1024


@pytest.fixture(scope="module")
def slide() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic H&E ``(H, W, 3)`` at 0.5 um/px and its tissue mask ``(H, W)``."""
    tex = make_texture(W, H, 0.5, seed=0)
    return tex.render(0, 0, W, H), tex.masks((H, W))[0]


def scores(img: np.ndarray, truth: np.ndarray, mpp: float | None = 0.5, levels: int = 3) -> tuple[float, float]:
    """``(recall of the tissue, share of the mask that is not tissue)`` at a 512 px thumbnail."""
    tm = detect_tissue(ArrayReader(img, mpp=mpp, levels=levels), 512)
    t = np.asarray(Image.fromarray(truth).resize(tm.mask.shape[::-1], Image.NEAREST))
    recall = float((tm.mask & t).sum() / max(t.sum(), 1))
    false_share = float((tm.mask & ~t).sum() / max(tm.mask.sum(), 1))
    return recall, false_share


def test_reference_slide(slide: tuple[np.ndarray, np.ndarray]) -> None:
    recall, false_share = scores(*slide)
    assert recall > 0.97 and false_share < 0.02


@pytest.mark.parametrize(("contrast", "min_recall"), [(0.5, 0.95), (0.3, 0.85)])
def test_faint_stain_is_still_tissue(slide: tuple[np.ndarray, np.ndarray], contrast: float, min_recall: float) -> None:
    """An under-stained or over-exposed scan: every pixel blended towards white."""
    img, truth = slide
    faint = (255 - (255 - img.astype(np.float32)) * contrast + 0.5).astype(np.uint8)
    recall, false_share = scores(faint, truth)
    assert recall > min_recall and false_share < 0.02


@pytest.mark.parametrize("glass", [(235, 228, 210), (215, 215, 222), (200, 205, 200)])
def test_tinted_or_dim_glass_is_not_tissue(slide: tuple[np.ndarray, np.ndarray], glass: tuple[int, int, int]) -> None:
    """Scanners differ in white balance: yellowish, bluish or dim glass is still glass."""
    blank = np.full((H, W, 3), glass, np.uint8)
    assert detect_tissue(ArrayReader(blank, mpp=0.5), 512).is_empty
    img, truth = slide
    tinted = (img.astype(np.float32) * (np.array(glass, np.float32) / 250.0)).clip(0, 255).astype(np.uint8)
    recall, false_share = scores(tinted, truth)
    assert recall > 0.95 and false_share < 0.02


@pytest.mark.parametrize(
    "ink",
    [(35, 35, 45), (70, 70, 80), (40, 60, 150), (30, 40, 90), (40, 140, 80), (200, 40, 50)],
    ids=["black", "grey", "blue", "navy", "green", "red"],
)
def test_marker_ink_is_not_tissue(slide: tuple[np.ndarray, np.ndarray], ink: tuple[int, int, int]) -> None:
    """Pen strokes on the glass (circling the lesion) and across the tissue."""
    img, truth = slide
    marked = img.copy()
    yy, xx = np.mgrid[0:H, 0:W]
    stroke = (np.abs(np.hypot(xx - 560, yy - 520) - 480) < 9) | (np.abs(yy - 60 - 0.1 * xx) < 7)
    marked[stroke] = ink
    tm = detect_tissue(ArrayReader(marked, mpp=0.5, levels=3), 512)
    t = np.asarray(Image.fromarray(truth & ~stroke).resize(tm.mask.shape[::-1], Image.NEAREST))
    s = np.asarray(Image.fromarray(stroke & ~truth).resize(tm.mask.shape[::-1], Image.NEAREST))
    assert tm.mask[s].mean() < 0.05  # ink on glass
    assert (tm.mask & t).sum() / t.sum() > 0.9


def test_black_scanner_borders_are_not_tissue(slide: tuple[np.ndarray, np.ndarray]) -> None:
    img, truth = slide
    framed = img.copy()
    framed[:, :80] = 12
    framed[:50] = (28, 26, 30)
    framed[-40:] = 0
    framed[:, -30:] = (45, 45, 45)  # dark grey edge of the scan area
    tm = detect_tissue(ArrayReader(framed, mpp=0.5, levels=3), 512)
    ds = tm.downsample
    border = np.zeros(tm.shape, bool)
    border[:, : int(80 / ds)] = True
    border[: int(50 / ds)] = True
    border[-int(40 / ds) :] = True
    border[:, -int(30 / ds) :] = True
    assert tm.mask[border].mean() < 0.02
    recall, _ = scores(framed, truth)
    assert recall > 0.9


def test_tissue_touching_the_border_is_kept() -> None:
    tex = make_texture(W, H, 0.5, seed=1, tissue_regions=(Ellipse(0, 500, 520, 420), Ellipse(W, H, 420, 330)))
    img, truth = tex.render(0, 0, W, H), tex.masks((H, W))[0]
    recall, false_share = scores(img, truth)
    assert recall > 0.95 and false_share < 0.02
    tm = detect_tissue(ArrayReader(img, mpp=0.5, levels=3), 512)
    assert tm.mask[:, 0].sum() > 0.5 * np.asarray(Image.fromarray(truth).resize(tm.mask.shape[::-1]))[:, 0].sum()
    plan = plan_tiles(ArrayReader(img, mpp=0.5, levels=3), TilingConfig(96, 0.97), tm)
    assert (plan.level0_xy[:, 0] == 0).any()  # tiles along the left edge are analysed


def test_level_zero_larger_than_the_thumbnail_budget(slide: tuple[np.ndarray, np.ndarray]) -> None:
    """A single-level 6144 px slide: the mask stays at the thumbnail budget and still fits."""
    img, truth = slide
    big = np.asarray(Image.fromarray(img).resize((W * 4, H * 4), Image.NEAREST))
    reader = ArrayReader(big, mpp=0.125, levels=1)
    tm = detect_tissue(reader, 512)
    assert tm.shape == (341, 512) and tm.downsample == pytest.approx(12.0, rel=1e-2)
    t = np.asarray(Image.fromarray(truth).resize(tm.mask.shape[::-1], Image.NEAREST))
    assert (tm.mask & t).sum() / t.sum() > 0.95


def test_a_lone_patch_is_tissue(slide: tuple[np.ndarray, np.ndarray]) -> None:
    """A 96 px patch that is all tissue (a PCam-like image) is not dropped as a speck."""
    img, _ = slide
    patch = img[420:516, 440:536]  # inside the tumour blob
    tm = detect_tissue(ArrayReader(patch.copy(), mpp=0.97), 2048)
    assert tm.tissue_fraction > 0.9
    plan = plan_tiles(ArrayReader(patch.copy(), mpp=0.97), TilingConfig(96, 0.97), tm)
    assert plan.n_tiles == 1
