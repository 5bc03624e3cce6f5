"""Lesions from a heatmap: connected tumour regions, their outlines, size and the slide category.

A lesion is a connected region (8-connectivity) of grid cells at or above a low threshold that
holds at least one cell at or above the operating threshold (hysteresis: a seed at the operating
threshold grows into neighbours above ``low_factor * threshold``). Its outline is traced on the
cell mask upsampled ``UPSAMPLE`` times (marching squares via contourpy), so it is a merged
polygon (holes allowed), not a set of squares. Each grid cell stands for a ``stride x stride``
level-0 square centred on its tile's centre.

The slide category follows the size of the largest lesion (largest diameter, as in the
CAMELYON / TNM pN convention): isolated tumour cells (<= 0.2 mm), micrometastasis
(> 0.2 to 2 mm), macrometastasis (> 2 mm).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.infer.pipeline import HeatmapResult

DEFAULT_THRESHOLD = 0.5
LOW_FACTOR = 0.5
UPSAMPLE = 4
ITC_MAX_MM = 0.2
MICRO_MAX_MM = 2.0
CATEGORY_NONE = "no tumour"
CATEGORY_ITC = "isolated tumour cells"
CATEGORY_MICRO = "micrometastasis"
CATEGORY_MACRO = "macrometastasis"
CATEGORY_UNKNOWN = "unknown (no mpp)"
LESION_RGB = (255, 0, 255)
CSV_COLUMNS = (
    "lesion", "area_mm2", "diameter_mm", "max_probability", "mean_probability", "cells",
    "centroid_x", "centroid_y", "peak_x", "peak_y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
)


@dataclass(frozen=True, slots=True, eq=False)
class Lesion:
    """One connected tumour region.

    Attributes:
        polygons: per polygon its rings in level-0 ``(x, y)``, exterior first then holes (a
            region touching itself only at a corner may make more than one polygon).
        cells: number of grid cells.
        area_mm2: cells x stride area (``None`` without a slide resolution).
        diameter_mm: largest distance between two outline points (``None`` without resolution).
        diameter_px: the same in level-0 pixels.
        max_probability, mean_probability: over the region's cells.
        peak_xy: level-0 centre of the cell with the highest probability.
        centroid_xy: level-0 mean of the cell centres.
        bbox: level-0 ``(x0, y0, x1, y1)`` of the outline.
    """

    polygons: tuple[tuple[np.ndarray, ...], ...]
    cells: int
    area_mm2: float | None
    diameter_mm: float | None
    diameter_px: float
    max_probability: float
    mean_probability: float
    peak_xy: tuple[float, float]
    centroid_xy: tuple[float, float]
    bbox: tuple[float, float, float, float]

    def to_dict(self, index: int) -> dict[str, Any]:
        def r(v: float | None, nd: int = 4) -> float | None:
            return None if v is None else round(float(v), nd)

        return {
            "lesion": index,
            "area_mm2": r(self.area_mm2, 6),
            "diameter_mm": r(self.diameter_mm),
            "max_probability": r(self.max_probability, 6),
            "mean_probability": r(self.mean_probability, 6),
            "cells": self.cells,
            "centroid_x": r(self.centroid_xy[0], 1),
            "centroid_y": r(self.centroid_xy[1], 1),
            "peak_x": r(self.peak_xy[0], 1),
            "peak_y": r(self.peak_xy[1], 1),
            "bbox_x0": r(self.bbox[0], 1),
            "bbox_y0": r(self.bbox[1], 1),
            "bbox_x1": r(self.bbox[2], 1),
            "bbox_y1": r(self.bbox[3], 1),
        }


def operating_threshold(metadata: Any, override: float | None = None) -> float:
    """The threshold a heatmap's positives and lesions use: ``override``, else the model
    package's ``extra["operating_threshold"]``, else 0.5."""
    if override is not None:
        return float(override)
    extra = getattr(metadata, "extra", None) or {}
    value = extra.get("operating_threshold") if isinstance(extra, dict) else None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return DEFAULT_THRESHOLD
    return v if math.isfinite(v) and 0.0 <= v <= 1.0 else DEFAULT_THRESHOLD


def categorize(diameter_mm: float | None, has_mpp: bool = True, any_lesion: bool = True) -> str:
    """The pN-style category of the slide's largest lesion diameter."""
    if not any_lesion:
        return CATEGORY_NONE
    if not has_mpp or diameter_mm is None:
        return CATEGORY_UNKNOWN
    if diameter_mm <= ITC_MAX_MM:
        return CATEGORY_ITC
    if diameter_mm <= MICRO_MAX_MM:
        return CATEGORY_MICRO
    return CATEGORY_MACRO


def find_lesions(
    result: HeatmapResult, threshold: float | None = None, low_factor: float = LOW_FACTOR
) -> list[Lesion]:
    """The lesions of a heatmap, largest diameter first.

    Args:
        result: the heatmap (its ``grid``, geometry and ``slide_mpp``).
        threshold: operating threshold (default: the heatmap's own).
        low_factor: the region grows into cells ``>= low_factor * threshold``.
    """
    from scipy import ndimage

    t = result.threshold if threshold is None else float(threshold)
    grid = np.asarray(result.grid, dtype=np.float32)
    finite = np.isfinite(grid)
    vals = np.where(finite, grid, -1.0)
    grow = vals >= t * low_factor
    seed = vals >= t
    labels, n = ndimage.label(grow, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    seeded = np.unique(labels[seed])
    seeded = seeded[seeded > 0]
    mpp = float(result.slide_mpp) if result.slide_mpp and result.slide_mpp > 0 else None
    stride = float(result.stride_level0)
    off_x = result.origin_level0[0] + result.tile_size_level0 / 2.0
    off_y = result.origin_level0[1] + result.tile_size_level0 / 2.0
    objects = ndimage.find_objects(labels)
    out = []
    for lab in seeded:
        sl = objects[lab - 1]
        mask = labels[sl] == lab
        sub = vals[sl]
        r0, c0 = sl[0].start, sl[1].start
        rr, cc = np.nonzero(mask)
        p = sub[mask]
        k = int(np.argmax(p))
        polys = _outline(mask, r0, c0, stride, off_x, off_y)
        pts = np.concatenate([poly[0] for poly in polys]) if polys else np.zeros((1, 2))
        diameter_px = _max_distance(pts)
        out.append(
            Lesion(
                polygons=polys,
                cells=int(mask.sum()),
                area_mm2=None if mpp is None else float(mask.sum()) * (stride * mpp / 1000.0) ** 2,
                diameter_mm=None if mpp is None else diameter_px * mpp / 1000.0,
                diameter_px=diameter_px,
                max_probability=float(p.max()),
                mean_probability=float(p.mean()),
                peak_xy=(off_x + (c0 + cc[k]) * stride, off_y + (r0 + rr[k]) * stride),
                centroid_xy=(off_x + (c0 + cc.mean()) * stride, off_y + (r0 + rr.mean()) * stride),
                bbox=(float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())),
            )
        )
    out.sort(key=lambda les: (-les.diameter_px, -les.cells, -les.max_probability))
    return out


def _outline(
    mask: np.ndarray, r0: int, c0: int, stride: float, off_x: float, off_y: float
) -> tuple[tuple[np.ndarray, ...], ...]:
    """Merged outline polygons (exterior, holes...) of a cell mask in level-0 coordinates."""
    from contourpy import FillType, contour_generator

    up = np.kron(mask.astype(np.float64), np.ones((UPSAMPLE, UPSAMPLE)))
    up = np.pad(up, 1)
    gen = contour_generator(z=up, fill_type=FillType.OuterOffset)
    points, offsets = gen.filled(0.5, 2.0)
    polys = []
    for pts, offs in zip(points, offsets, strict=True):
        rings = []
        for a, b in zip(offs[:-1], offs[1:], strict=True):
            ring = np.asarray(pts[a:b], dtype=np.float64)
            # upsampled index i (after the 1-pixel pad) is the centre of sub-cell i - 1
            x = off_x + (c0 - 0.5 + (ring[:, 0] - 1 + 0.5) / UPSAMPLE) * stride
            y = off_y + (r0 - 0.5 + (ring[:, 1] - 1 + 0.5) / UPSAMPLE) * stride
            rings.append(np.stack([x, y], axis=1))
        if rings:
            polys.append(tuple(rings))
    return tuple(polys)


def _max_distance(points: np.ndarray) -> float:
    """Largest distance between two of ``points`` (on their convex hull)."""
    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(pts) < 2:
        return 0.0
    if len(pts) > 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]
        except (QhullError, ValueError):
            pass  # collinear: every point is kept
    d = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((d**2).sum(-1)).max())


def lesion_summary(result: HeatmapResult, lesions: list[Lesion], threshold: float | None = None) -> dict[str, Any]:
    """The ``"lesions"`` entry of ``heatmap.json``."""
    t = result.threshold if threshold is None else float(threshold)
    has_mpp = bool(result.slide_mpp and result.slide_mpp > 0)
    largest = lesions[0] if lesions else None
    category = categorize(largest.diameter_mm if largest else None, has_mpp, bool(lesions))
    return {
        "threshold": t,
        "low_threshold": round(t * LOW_FACTOR, 6),
        "count": len(lesions),
        "largest_diameter_mm": None if largest is None or largest.diameter_mm is None else round(largest.diameter_mm, 4),
        "largest_area_mm2": None if largest is None or largest.area_mm2 is None else round(largest.area_mm2, 6),
        "total_area_mm2": round(sum(les.area_mm2 or 0.0 for les in lesions), 6) if has_mpp else None,
        "category": category,
        "files": {"geojson": "lesions.geojson", "csv": "lesions.csv"},
        "lesions": [les.to_dict(i + 1) for i, les in enumerate(lesions)],
    }


def lesions_geojson(lesions: list[Lesion]) -> dict[str, Any]:
    """A QuPath FeatureCollection: one annotation per lesion, measurements in properties."""
    feats = []
    for i, les in enumerate(lesions, start=1):
        coords = [[[[round(float(x), 2), round(float(y), 2)] for x, y in ring] for ring in poly] for poly in les.polygons]
        geometry = (
            {"type": "Polygon", "coordinates": coords[0]}
            if len(coords) == 1
            else {"type": "MultiPolygon", "coordinates": coords}
        )
        row = les.to_dict(i)
        feats.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "objectType": "annotation",
                    "name": f"Lesion {i}",
                    "classification": {"name": "Tumor", "color": list(LESION_RGB)},
                    "measurements": {k: v for k, v in row.items() if k != "lesion" and v is not None},
                    "isLocked": False,
                },
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def lesions_csv(lesions: list[Lesion]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for i, les in enumerate(lesions, start=1):
        w.writerow({k: ("" if v is None else v) for k, v in les.to_dict(i).items()})
    return buf.getvalue()


def write_lesion_files(folder: Path, lesions: list[Lesion]) -> None:
    """``lesions.geojson`` and ``lesions.csv`` into ``folder`` (a temporary result folder)."""
    with open(folder / "lesions.geojson", "w", encoding="utf-8") as fh:
        json.dump(lesions_geojson(lesions), fh, separators=(",", ":"))
    (folder / "lesions.csv").write_text(lesions_csv(lesions), encoding="utf-8")
