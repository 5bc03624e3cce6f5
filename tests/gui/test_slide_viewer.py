"""SlideViewer and its helpers: pyramid levels, tile cache, zoom/pan, stale tiles, overview, overlay."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from engine.slides.base import ArrayReader, SlideInfo
from gui.widgets.heatmap_overlay import GridGeometry, HeatmapOverlay, colormap_lut
from gui.widgets.overview_map import OverviewMap
from gui.widgets.slide_viewer import SlideViewer
from gui.widgets.tiles import TILE_SIZE, TileCache, display_levels, level_for_downsample, read_tile, rgb_to_qimage
from gui.widgets.viewer_paint import format_magnification, magnification, nice_scale_length_um


class SlowReader(ArrayReader):
    """An ArrayReader whose reads hang until the test lets them go (a stalled network drive)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()
        self.entered = 0  # reads started (and held until ``release`` is set)
        self._lock = threading.Lock()

    def read_region(self, level0_xy, level, size):  # type: ignore[no-untyped-def]
        with self._lock:
            self.entered += 1
        self.release.wait(30)
        return super().read_region(level0_xy, level, size)


def _gradient_slide(w: int = 3000, h: int = 2000, levels: int = 3, mpp: float | None = 0.5) -> ArrayReader:
    """Pixels encode their position, so a wrong tile placement changes the image."""
    xx = np.arange(w, dtype=np.int32)[None, :]
    yy = np.arange(h, dtype=np.int32)[:, None]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = xx * 255 // w
    img[..., 1] = yy * 255 // h
    img[..., 2] = ((xx // 64 + yy // 64) % 2) * 200 + 30
    return ArrayReader(img, mpp=mpp, levels=levels)


@pytest.fixture()
def viewer(qtbot):  # type: ignore[no-untyped-def]
    v = SlideViewer()
    v.resize(800, 600)
    qtbot.addWidget(v)
    v.show()
    qtbot.waitExposed(v)
    yield v
    v.set_slide(None)
    v.scheduler.shutdown()


def _wait_drawn(qtbot, viewer: SlideViewer, timeout: int = 30_000) -> None:  # type: ignore[no-untyped-def]
    viewer.repaint()  # paint now so ``missing_tiles`` describes the current view
    qtbot.waitUntil(lambda: viewer.thumbnail is not None and viewer.missing_tiles == 0 and viewer.scheduler.idle,
                    timeout=timeout)


# -- pure helpers ----------------------------------------------------------------------------
def test_display_levels_add_virtual_levels_for_a_flat_image() -> None:
    info = SlideInfo(path="", vendor="image", level_dimensions=((5000, 4000),), level_downsamples=(1.0,))
    levels = display_levels(info)
    ds = [lv.downsample for lv in levels]
    assert ds[0] == 1.0 and ds == sorted(ds)
    assert ds[-1] * TILE_SIZE >= 5000 / 2  # the coarsest level holds the slide in a few tiles
    assert all(lv.source_level == 0 for lv in levels)
    assert level_for_downsample(levels, 3.0) == ds.index(2.0)
    assert level_for_downsample(levels, 0.25) == 0


def test_read_tile_of_a_virtual_level_matches_the_image() -> None:
    reader = _gradient_slide(1024, 1024, levels=1)
    lv = next(lv for lv in display_levels(reader.info) if lv.downsample == 4.0)
    tile = read_tile(reader, lv, 0, 0)
    assert tile.shape == (256, 256, 3)
    # left-to-right red ramp survives the 4x reduction
    assert tile[10, 250, 0] > tile[10, 5, 0] + 200
    edge = read_tile(reader, next(lv for lv in display_levels(reader.info) if lv.downsample == 1.0), 3, 3)
    assert edge.shape == (256, 256, 3)


def test_tile_cache_is_bounded_in_bytes_and_least_recently_used() -> None:
    img = rgb_to_qimage(np.zeros((256, 256, 3), np.uint8))
    cache = TileCache(max_bytes=img.sizeInBytes() * 3)
    for i in range(3):
        cache.put((0, i, 0), img)
    cache.get((0, 0, 0))  # most recent now
    cache.put((0, 9, 9), img)
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert (0, 0, 0) in cache and (0, 1, 0) not in cache


def test_scale_bar_lengths_are_round_numbers() -> None:
    for um_per_px in (0.05, 0.25, 0.5, 2.0, 13.0, 80.0):
        um, px = nice_scale_length_um(um_per_px)
        mantissa = um / 10 ** math.floor(math.log10(um))
        assert round(mantissa, 6) in (1.0, 2.0, 5.0)
        assert 70 <= px <= 180
    assert format_magnification(magnification(0.5)) == "20x"
    assert format_magnification(magnification(0.25)) == "40x"


def test_overlay_hides_cells_below_threshold_and_reports_values() -> None:
    grid = np.array([[0.1, 0.9], [np.nan, 0.6]], np.float32)
    ov = HeatmapOverlay(grid, GridGeometry((100.0, 200.0), 50.0, 50.0))
    ov.threshold = 0.5
    img = ov.image()
    assert (img.width(), img.height()) == (2, 2)
    assert img.pixelColor(0, 0).alpha() == 0  # 0.1 < threshold
    assert img.pixelColor(1, 0).alpha() == 255
    assert img.pixelColor(0, 1).alpha() == 0  # not analysed
    top = colormap_lut("heat")[int(0.9 * 255 + 0.5)]
    assert tuple(img.pixelColor(1, 0).getRgb()[:3]) == tuple(int(v) for v in top)
    assert ov.value_at(160, 210) == (pytest.approx(0.9), (150, 200, 50, 50))
    assert ov.value_at(110, 260) is None and ov.value_at(0, 0) is None
    assert [r[1:] for r in ov.top_regions(5, min_separation=1)] == [(0, 1), (1, 1), (0, 0)]


# -- the widget --------------------------------------------------------------------------------
def test_zoom_and_pan_change_the_view_and_load_tiles(qtbot, viewer: SlideViewer) -> None:  # type: ignore[no-untyped-def]
    reader = _gradient_slide()
    viewer.set_slide(reader)
    _wait_drawn(qtbot, viewer)
    assert viewer.first_paint_s is not None and viewer.fully_drawn_s is not None
    fit_rect = viewer.visible_rect_level0()
    fit_level = viewer.current_level()
    before = viewer.grab().toImage()

    anchor = QPointF(200, 150)
    point = viewer.to_level0(anchor)
    viewer.zoom_by(4.0, anchor)
    after = viewer.to_level0(anchor)
    assert after == pytest.approx(point, abs=1e-6)  # the point under the cursor stays put
    rect = viewer.visible_rect_level0()
    assert rect[2] == pytest.approx(fit_rect[2] / 4)
    assert viewer.current_level() < fit_level  # a sharper pyramid level
    _wait_drawn(qtbot, viewer)
    assert any(key[0] == viewer.current_level() for key in viewer.scheduler.cache._items)

    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_Right)
    moved = viewer.visible_rect_level0()
    assert moved[0] > rect[0] and moved[1] == pytest.approx(rect[1])
    qtbot.mousePress(viewer, Qt.MouseButton.LeftButton, pos=QPointF(400, 300).toPoint())
    qtbot.mouseMove(viewer, QPointF(300, 250).toPoint())
    qtbot.mouseRelease(viewer, Qt.MouseButton.LeftButton, pos=QPointF(300, 250).toPoint())
    dragged = viewer.visible_rect_level0()
    assert dragged[0] > moved[0] and dragged[1] > moved[1]  # content follows the mouse
    _wait_drawn(qtbot, viewer)
    assert viewer.grab().toImage() != before

    viewer.one_to_one()
    assert viewer.downsample == 1.0 and viewer.magnification_text().startswith("20x")
    viewer.fit()
    assert viewer.visible_rect_level0()[2] == pytest.approx(fit_rect[2])


def test_wheel_zoom_is_anchored_at_the_cursor(qtbot, viewer: SlideViewer) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QWheelEvent

    viewer.set_slide(_gradient_slide())
    pos = QPointF(600, 400)
    point = viewer.to_level0(pos)
    ds = viewer.downsample
    ev = QWheelEvent(pos, viewer.mapToGlobal(pos), QPoint(0, 0), QPoint(0, 240), Qt.MouseButton.NoButton,
                     Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    viewer.wheelEvent(ev)
    assert viewer.downsample == pytest.approx(ds / 1.25**2)
    assert viewer.to_level0(pos) == pytest.approx(point, abs=1e-6)


def test_tiles_of_a_closed_slide_are_dropped(qtbot, viewer: SlideViewer) -> None:  # type: ignore[no-untyped-def]
    slow = SlowReader(np.full((2048, 2048, 3), 90, np.uint8), mpp=0.5, levels=1)
    viewer.set_slide(slow)
    viewer.repaint()  # requests tiles of the slow slide
    # both reader threads hang in the slow slide: its thumbnail and at least one tile
    qtbot.waitUntil(lambda: slow.entered >= 2, timeout=30_000)
    fast = _gradient_slide()
    viewer.set_slide(fast)
    slow.release.set()  # the old slide's reads end only now, after the switch
    _wait_drawn(qtbot, viewer, timeout=30_000)
    qtbot.waitUntil(lambda: viewer.scheduler.stale_dropped > 0, timeout=30_000)
    # every cached tile comes from the new slide: its pixels are the gradient, not flat grey
    for key, img in viewer.scheduler.cache._items.items():
        assert img.pixelColor(img.width() // 2, img.height() // 2).getRgb()[:3] != (90, 90, 90), key


def test_overview_click_moves_the_view(qtbot, viewer: SlideViewer) -> None:  # type: ignore[no-untyped-def]
    viewer.set_slide(_gradient_slide())
    viewer.zoom_by(6.0)
    ov = OverviewMap(viewer)
    ov.resize(300, 200)
    qtbot.addWidget(ov)
    ov.show()
    qtbot.waitExposed(ov)
    r = ov._image_rect()
    assert r is not None
    target = QPointF(r.x() + r.width() * 0.8, r.y() + r.height() * 0.25)
    qtbot.mouseClick(ov, Qt.MouseButton.LeftButton, pos=target.toPoint())
    cx, cy = viewer.center
    assert cx == pytest.approx(3000 * 0.8, abs=3000 / r.width() * 2)
    assert cy == pytest.approx(2000 * 0.25, abs=2000 / r.height() * 2)


def test_slide_without_mpp_shows_zoom_instead_of_magnification(qtbot, viewer: SlideViewer) -> None:  # type: ignore[no-untyped-def]
    viewer.set_slide(_gradient_slide(mpp=None))
    viewer.one_to_one()
    assert viewer.um_per_screen_px() is None
    assert viewer.magnification_text().startswith("zoom 100%")
