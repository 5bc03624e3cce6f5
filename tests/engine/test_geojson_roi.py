"""Regions of interest: each polygon on its own (holes cut out), union across features, bounded memory."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

from engine.data.geojson import points_in_polygons, points_in_rings, read_region_polygons, read_region_rings


def _square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


def _feature(*rings: list[list[float]]) -> dict:
    return {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": list(rings)}}


def _write(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_overlapping_annotations_stay_inside(tmp_path: Path) -> None:
    roi = _write(tmp_path / "roi.geojson", [_feature(_square(0, 0, 100)), _feature(_square(50, 50, 100))])
    pts = np.array([[75.0, 75.0], [25.0, 25.0], [125.0, 125.0], [125.0, 25.0], [300.0, 300.0]])
    # (75, 75) lies in both squares: a merged even-odd test called it outside
    assert points_in_rings(pts, read_region_rings(roi)).tolist() == [True, True, True, False, False]
    assert points_in_polygons(pts, read_region_polygons(roi)).tolist() == [True, True, True, False, False]


def test_holes_subtract_and_islands_in_holes_count(tmp_path: Path) -> None:
    donut = _feature(_square(0, 0, 100), _square(25, 25, 50))
    island = _feature(_square(40, 40, 20))  # a separate annotation inside the donut's hole
    roi = _write(tmp_path / "roi.geojson", [donut, island])
    pts = np.array([[10.0, 10.0], [30.0, 30.0], [50.0, 50.0], [150.0, 50.0]])
    assert points_in_rings(pts, read_region_rings(roi)).tolist() == [True, False, True, False]
    multi = {"type": "MultiPolygon", "coordinates": [[_square(0, 0, 10)], [_square(5, 5, 10)]]}
    (tmp_path / "multi.geojson").write_text(json.dumps(multi))
    region = read_region_rings(tmp_path / "multi.geojson")
    assert len(region) == 2  # still a list of rings for callers that iterate them
    assert points_in_rings(np.array([[7.0, 7.0], [12.0, 12.0], [12.0, 2.0]]), region).tolist() == [True, True, False]


def test_plain_ring_list_keeps_even_odd_rule() -> None:
    rings = [np.array(_square(0, 0, 100), float), np.array(_square(25, 25, 50), float)]
    assert points_in_rings(np.array([[10.0, 10.0], [50.0, 50.0]]), rings).tolist() == [True, False]


def test_big_outline_and_many_points_in_bounded_memory() -> None:
    # a QuPath-like 20k-vertex outline and 100k tile centres: a dense array would need 16 GB
    t = np.linspace(0, 2 * np.pi, 20_000, endpoint=False)
    r = 1000 + 200 * np.sin(37 * t)
    ring = np.stack([5000 + r * np.cos(t), 5000 + r * np.sin(t)], 1)
    pts = np.random.default_rng(0).uniform(3500, 6500, (100_000, 2))
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        inside = points_in_polygons(pts, [(ring,)])
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20 and elapsed < 20
    # against the exact answer for this star-shaped outline: radius at the point's angle
    d = pts - 5000
    ang = np.arctan2(d[:, 1], d[:, 0]) % (2 * np.pi)
    clear = np.abs(np.hypot(d[:, 0], d[:, 1]) - (1000 + 200 * np.sin(37 * ang))) > 5  # not on the edge
    assert (inside[clear] == (np.hypot(d[:, 0], d[:, 1]) < 1000 + 200 * np.sin(37 * ang))[clear]).all()
    assert 0.2 < inside.mean() < 0.6
