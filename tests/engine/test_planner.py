"""The one tile planner (engine.slides.tiling.plan_slide): tissue, ROI, cap, and its three users."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError, NoTissueError
from engine.slides import ArrayReader
from engine.slides.tiling import (
    TISSUE_MASK_PX_PER_TILE,
    TilingConfig,
    TissueSettings,
    plan_slide,
    plan_tiles,
    slide_tissue,
)


def _blob_slide() -> ArrayReader:
    """1,024 x 768 px at 0.5 um/px: glass with a pink disc whose pinker core holds more tissue."""
    yy, xx = np.mgrid[0:768, 0:1024]
    img = np.full((768, 1024, 3), 242, np.uint8)
    disc = (xx - 500) ** 2 + (yy - 380) ** 2 < 330**2
    img[disc] = (200, 120, 170)
    return ArrayReader(img, mpp=0.5, levels=3, name="blob")


def _roi(path: Path, x0: float, y0: float, x1: float, y1: float) -> Path:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    geo = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}]}
    path.write_text(json.dumps(geo))
    return path


def test_plan_slide_is_tissue_mask_plus_grid() -> None:
    r = _blob_slide()
    plan = plan_slide(r, 32, 1.0)
    mask = slide_tissue(r, 32, 1.0)
    # the mask resolution is one rule: TISSUE_MASK_PX_PER_TILE mask pixels per tile side
    assert plan.tissue is not None and plan.tissue.downsample == pytest.approx(64 / TISSUE_MASK_PX_PER_TILE, rel=0.05)
    assert mask.downsample == plan.tissue.downsample
    same = plan_tiles(r, TilingConfig(32, 1.0), mask)
    np.testing.assert_array_equal(plan.level0_xy, same.level0_xy)
    assert plan.config.mpp == 1.0 and plan.slide_mpp == 0.5  # analysis vs file resolution
    # no tissue settings: every grid cell
    every = plan_slide(r, 32, 1.0, None)
    assert every.tissue is None and every.n_tiles == every.grid_shape[0] * every.grid_shape[1]


def test_roi_filters_before_the_tile_cap(tmp_path: Path) -> None:
    r = _blob_slide()
    roi = _roi(tmp_path / "roi.geojson", 300, 200, 700, 560)
    full = plan_slide(r, 32, 1.0)
    inside = plan_slide(r, 32, 1.0, roi=roi)
    centres = inside.level0_xy + inside.tile_size_level0 / 2
    assert 0 < inside.n_tiles < full.n_tiles
    assert np.all((centres[:, 0] > 300) & (centres[:, 0] < 700) & (centres[:, 1] > 200) & (centres[:, 1] < 560))
    assert inside.tissue_cells == inside.n_tiles
    # the cap keeps N tiles inside the ROI (capping first would leave fewer, or none)
    capped = plan_slide(r, 32, 1.0, roi=roi, max_tiles=5)
    assert capped.n_tiles == 5 and capped.tissue_cells == inside.n_tiles
    assert set(map(tuple, capped.level0_xy.tolist())) <= set(map(tuple, inside.level0_xy.tolist()))
    # a ROI on glass only
    with pytest.raises(NoTissueError, match="region of interest"):
        plan_slide(r, 32, 1.0, roi=_roi(tmp_path / "glass.geojson", 0, 0, 60, 60))


def test_tissue_settings_validation() -> None:
    assert TissueSettings().to_dict() == {"min_fraction": 0.25, "mask_px_per_tile": TISSUE_MASK_PX_PER_TILE}
    for bad in ({"min_fraction": 1.5}, {"min_fraction": "x"}, {"mask_px_per_tile": 0}):
        with pytest.raises(ConfigError):
            TissueSettings(**bad)  # type: ignore[arg-type]


def test_heatmap_and_mil_features_plan_alike() -> None:
    """MIL features and the heatmap tile a slide with the same planner and mask."""
    from engine.mil.features import FeatureConfig
    from engine.mil.features import plan_slide as mil_plan

    r = _blob_slide()
    mil = mil_plan(r, 32, 1.0, FeatureConfig(min_tissue_fraction=0.5, max_tiles=7))
    direct = plan_slide(r, 32, 1.0, TissueSettings(min_fraction=0.5), max_tiles=7)
    np.testing.assert_array_equal(mil.level0_xy, direct.level0_xy)
    np.testing.assert_array_equal(mil.tissue_fraction, direct.tissue_fraction)
