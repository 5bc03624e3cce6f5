"""Tiling at a model's resolution: level choice, tile geometry, tissue filter, bad input."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from engine.errors import ConfigError, MissingMppError, NoTissueError
from engine.slides import (
    ArrayReader,
    SlideInfo,
    SlideReader,
    TilingConfig,
    TissueMask,
    detect_tissue,
    open_slide,
    plan_tiles,
    read_tile,
)
from engine.slides.synthetic import SyntheticSlide
from engine.slides.tiling import MAX_RUN_TILES, read_tiles


def test_config_defaults_validation_and_round_trip() -> None:
    cfg = TilingConfig(96, 0.97)
    assert cfg.stride_px == 96 and cfg.min_tissue_fraction == 0.25 and cfg.max_tiles is None
    assert TilingConfig.from_dict(cfg.to_dict()) == cfg
    cfg2 = TilingConfig(224, 0.5, stride_px=112, min_tissue_fraction=0.5, max_tiles=10)
    assert TilingConfig.from_dict(cfg2.to_dict()) == cfg2
    for bad in (
        dict(tile_size_px=0, mpp=1.0),
        dict(tile_size_px=96.5, mpp=1.0),
        dict(tile_size_px=96, mpp=-1.0),
        dict(tile_size_px=96, mpp=float("inf")),
        dict(tile_size_px=96, mpp=1.0, stride_px=0),
        dict(tile_size_px=96, mpp=1.0, min_tissue_fraction=1.5),
        dict(tile_size_px=96, mpp=1.0, max_tiles=0),
    ):
        with pytest.raises(ConfigError):
            TilingConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown"):
        TilingConfig.from_dict({"tile_size_px": 96, "mpp": 1.0, "colour": "red"})
    with pytest.raises(ConfigError):
        TilingConfig.from_dict({"tile_size_px": 96})


def test_097_mpp_from_05_mpp_slide(synthetic_svs: SyntheticSlide) -> None:
    """PCam-style tiles (96 px at 0.97 um/px) from a 0.5 um/px slide: level 0, ~186 px footprint."""
    with open_slide(synthetic_svs.path) as r:
        tissue = detect_tissue(r, max_size=1024)
        plan = plan_tiles(r, TilingConfig(96, 0.97), tissue)
        assert plan.level == 0  # level 1 is 1.0 um/px: coarser than the model wants
        assert plan.tile_size_level0 == 186 and plan.read_size == 186
        assert plan.stride_level0 == 186
        assert plan.effective_mpp == pytest.approx(0.97, abs=0.01)
        assert plan.grid_shape == (17, 23)  # ceil(3072/186), ceil(4096/186)
        assert plan.level0_xy.dtype == np.int64 and plan.level0_xy.shape == (plan.n_tiles, 2)
        assert plan.grid_rc.shape == (plan.n_tiles, 2)
        assert np.array_equal(plan.level0_xy, plan.grid_rc[:, ::-1] * 186)
        # only tiles on tissue, and most tissue tiles are kept
        truth = synthetic_svs.tissue_mask(8.0)
        centre = (plan.level0_xy + 93) // 8
        assert truth[centre[:, 1], centre[:, 0]].mean() > 0.9
        assert plan.tissue_fraction.min() >= 0.25
        assert 150 < plan.n_tiles < 17 * 23
        d = plan.to_dict()
        assert d["level"] == 0 and d["tile_size_level0"] == 186 and d["grid_shape"] == [17, 23]
        assert d["slide_mpp"] == 0.5 and d["slide_mpp_source"] == "file" and d["mpp"] == 0.97 and d["n_tiles"] == plan.n_tiles
        tile = read_tile(r, plan, plan.level0_xy[0])
        assert tile.shape == (96, 96, 3) and tile.dtype == np.uint8


def test_level_choice_on_a_025_mpp_pyramid() -> None:
    img = np.full((2048, 2048, 3), 200, np.uint8)
    r = ArrayReader(img, mpp=0.25, levels=4)  # levels at 0.25, 0.5, 1.0, 2.0 um/px
    plan = plan_tiles(r, TilingConfig(96, 0.97), None)
    assert plan.level == 1 and plan.level_downsample == 2.0
    assert plan.tile_size_level0 == 372 and plan.read_size == 186
    plan2 = plan_tiles(r, TilingConfig(96, 2.0), None)
    assert plan2.level == 3 and plan2.read_size == 96  # exact level: no resampling
    plan3 = plan_tiles(r, TilingConfig(64, 0.1), None)  # finer than the scan: upsample level 0
    assert plan3.level == 0 and plan3.read_size == 26


def test_read_tile_is_one_resize_of_the_region(array_slide: ArrayReader) -> None:
    plan = plan_tiles(array_slide, TilingConfig(96, 0.97), None)
    xy = plan.level0_xy[40]
    tile = read_tile(array_slide, plan, xy)
    region = array_slide.read_region(tuple(xy), plan.level, (plan.read_size, plan.read_size))
    want = np.asarray(Image.fromarray(region).resize((96, 96), Image.BILINEAR))
    assert np.array_equal(tile, want)


@pytest.mark.parametrize("stride_px", [96, 48, 120])
def test_block_reads_equal_per_tile_reads(synthetic_svs: SyntheticSlide, stride_px: int) -> None:
    """The pipeline's batch read gives the tiles read_tile gives, up to resampling at the edges."""
    with open_slide(synthetic_svs.path) as r:
        plan = plan_tiles(r, TilingConfig(96, 0.97, stride_px=stride_px), None)
        idx = np.r_[0 : 3 * MAX_RUN_TILES + 3, plan.n_tiles - 5 : plan.n_tiles, 40, 7]  # runs, edge, out of order
        got = read_tiles(r, plan, plan.level0_xy[idx])
        want = np.stack([read_tile(r, plan, plan.level0_xy[i]) for i in idx])
    assert got.shape == want.shape == (len(idx), 96, 96, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    # the filter reaches one pixel into the neighbouring tile instead of clamping at the edge;
    # overlapping tiles are resized from a box of the strip (filter weights rounded anew: +-1)
    assert diff[:, :, 1:-1].max() <= (0 if stride_px == 96 else 1)
    assert diff.mean() < 0.2


def test_block_reads_at_a_pyramid_level_and_without_resizing() -> None:
    img = np.random.default_rng(3).integers(0, 256, (1024, 1536, 3), dtype=np.uint8)
    r = ArrayReader(img, mpp=0.25, levels=3)
    for cfg in (TilingConfig(96, 0.97), TilingConfig(64, 1.0), TilingConfig(64, 1.0, stride_px=40)):
        plan = plan_tiles(r, cfg, None)
        out = np.empty((plan.n_tiles, cfg.tile_size_px, cfg.tile_size_px, 3), np.uint8)
        got = read_tiles(r, plan, plan.level0_xy, out=out)
        assert got is out
        want = np.stack([read_tile(r, plan, xy) for xy in plan.level0_xy])
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff[:, :, 1:-1].max() == 0 and diff.mean() < 2.0
        if plan.read_size == cfg.tile_size_px:
            assert np.array_equal(got, want)  # no resampling: exact cuts of the strip
    with pytest.raises(ValueError, match="out buffer"):
        read_tiles(r, plan, plan.level0_xy, out=np.empty((1, 64, 64, 3), np.uint8))


def test_stride_overlap_and_max_tiles(array_slide: ArrayReader) -> None:
    tissue = detect_tissue(array_slide, max_size=512)
    full = plan_tiles(array_slide, TilingConfig(96, 0.97), tissue)
    half = plan_tiles(array_slide, TilingConfig(96, 0.97, stride_px=48), tissue)
    assert half.stride_level0 == 93
    assert half.n_tiles > 3 * full.n_tiles
    capped = plan_tiles(array_slide, TilingConfig(96, 0.97, max_tiles=5), tissue)
    assert capped.n_tiles == 5 and capped.tissue_cells == full.n_tiles
    assert capped.tissue_fraction.min() >= np.sort(full.tissue_fraction)[-5] - 1e-6
    order = capped.grid_rc[:, 0] * 10_000 + capped.grid_rc[:, 1]
    assert np.all(np.diff(order) > 0)  # row-major order kept


def test_missing_mpp_asks_for_mpp(synthetic_tiff_no_mpp: SyntheticSlide) -> None:
    with open_slide(synthetic_tiff_no_mpp.path) as r:
        with pytest.raises(MissingMppError, match="--mpp"):
            plan_tiles(r, TilingConfig(96, 0.97), None)
        plan = plan_tiles(r, TilingConfig(96, 0.97), None, slide_mpp=0.5)
        assert plan.tile_size_level0 == 186 and plan.to_dict()["slide_mpp_source"] == "user"
    with open_slide(synthetic_tiff_no_mpp.path, mpp=0.25) as r:
        assert plan_tiles(r, TilingConfig(96, 0.97), None).tile_size_level0 == 372


def test_blank_slide_has_no_tissue_to_tile(blank_slide: SyntheticSlide) -> None:
    with open_slide(blank_slide.path) as r:
        tissue = detect_tissue(r, max_size=512)
        with pytest.raises(NoTissueError, match="no tissue"):
            plan_tiles(r, TilingConfig(96, 0.97), tissue)


def test_too_little_tissue_for_the_threshold() -> None:
    mask = np.zeros((100, 100), bool)
    mask[50, 50] = True  # one mask pixel = 1/4 of a 2x2-pixel tile at most
    r = ArrayReader(np.full((1000, 1000, 3), 240, np.uint8), mpp=0.5)
    tm = TissueMask(mask, 10.0, 1e-4, "test")
    with pytest.raises(NoTissueError, match="at least 90%"):
        plan_tiles(r, TilingConfig(96, 0.97, min_tissue_fraction=0.9), tm)


class _HugeSlide(SlideReader):
    """A 200,000 x 100,000 px slide that must never be read in planning."""

    def __init__(self) -> None:
        dims = tuple((200_000 // 4**i, 100_000 // 4**i) for i in range(4))
        self.info = SlideInfo("huge.svs", "aperio", dims, tuple(float(4**i) for i in range(4)), mpp=(0.25, 0.25))

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        raise AssertionError("planning must not read pixels")


def test_planning_a_huge_slide_is_bounded() -> None:
    r = _HugeSlide()
    mask = np.zeros((1024, 2048), bool)
    yy, xx = np.ogrid[:1024, :2048]
    mask[((xx - 1024) / 900) ** 2 + ((yy - 512) / 450) ** 2 < 1] = True
    tissue = TissueMask(mask, 200_000 / 2048, float(mask.mean()), "test")
    tracemalloc.start()
    try:
        plan = plan_tiles(r, TilingConfig(96, 0.97), tissue)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.level == 0 and plan.tile_size_level0 == 372
    assert plan.grid_shape == (269, 538)
    assert 0.5 * 269 * 538 < plan.n_tiles < 0.9 * 269 * 538
    assert plan.level0_xy.nbytes < 5_000_000
    assert peak < 150 * 2**20


def test_read_region_resized_is_part_of_the_reader_interface() -> None:
    """The base default equals read_region + bilinear resize; read_tile goes through it."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    r = ArrayReader(img, mpp=0.5)
    got = r.read_region_resized((10, 20), 0, (100, 100), (48, 48))
    want = np.asarray(Image.fromarray(r.read_region((10, 20), 0, (100, 100))).resize((48, 48), Image.BILINEAR))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(r.read_region_resized((0, 0), 0, (30, 20), (30, 20)), img[:20, :30])

    calls: list[tuple[int, int]] = []

    class Counting(ArrayReader):
        def read_region_resized(self, level0_xy, level, size, out_size):  # type: ignore[no-untyped-def]
            calls.append(tuple(out_size))
            return super().read_region_resized(level0_xy, level, size, out_size)

    c = Counting(img, mpp=0.5)
    plan = plan_tiles(c, TilingConfig(32, 1.0), None)
    read_tile(c, plan, plan.level0_xy[0])
    assert calls == [(32, 32)]
