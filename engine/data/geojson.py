"""QuPath GeoJSON annotations: parsing and rasterising class masks.

QuPath exports a FeatureCollection (or a plain list of features); each annotation has a
Polygon or MultiPolygon geometry in level-0 pixels and ``properties.classification.name``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError

Ring = np.ndarray  # float64 (K, 2) level-0 (x, y)
Polygon = tuple[Ring, ...]  # exterior ring first, then its holes
# Rasterised class masks are capped at this many pixels each (memory stays bounded on huge slides)
MAX_MASK_PIXELS = 16_000_000


@dataclass(frozen=True, slots=True, eq=False)
class Annotation:
    """One annotated region.

    Attributes:
        class_name: QuPath classification name.
        polygons: per polygon its rings, exterior first then holes, each ``float64`` ``(K, 2)``
            of level-0 ``(x, y)``.
    """

    class_name: str
    polygons: tuple[tuple[Ring, ...], ...]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in level-0 pixels."""
        pts = np.concatenate([p[0] for p in self.polygons])
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def _class_name(props: dict[str, Any]) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls.strip() or None
    if isinstance(cls, dict):
        if isinstance(cls.get("name"), str) and cls["name"].strip():
            return cls["name"].strip()
        names = cls.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)
    for key in ("class_name", "label"):
        if isinstance(props.get(key), str) and props[key].strip():
            return props[key].strip()
    return None


def _rings(coords: Any) -> tuple[Ring, ...]:
    rings = []
    for ring in coords:
        arr = np.asarray(ring, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] < 2:
            raise ValueError("a polygon ring must be a list of [x, y] points")
        if len(arr) >= 3:
            rings.append(arr[:, :2])
    return tuple(rings)


def _geometries(geom: dict[str, Any]) -> Iterator[tuple[Ring, ...]]:
    kind = geom.get("type")
    if kind == "Polygon":
        rings = _rings(geom.get("coordinates") or [])
        if rings:
            yield rings
    elif kind == "MultiPolygon":
        for poly in geom.get("coordinates") or []:
            rings = _rings(poly)
            if rings:
                yield rings
    elif kind == "GeometryCollection":
        for g in geom.get("geometries") or []:
            yield from _geometries(g)


def _polygons(geom: Any, path: Path) -> tuple[tuple[Ring, ...], ...]:
    if not isinstance(geom, dict):
        return ()
    try:
        return tuple(_geometries(geom))
    except ValueError as exc:
        raise DatasetError(f"{path}: bad polygon coordinates ({exc})") from None


def is_vertex_json(doc: Any) -> bool:
    """Whether ``doc`` is a BALNMP / BCNB vertex annotation: ``{"positive": [{"vertices": [[x, y], ...]}, ...]}``
    (any class names as keys, each a list of objects with a ``vertices`` point list)."""
    if not isinstance(doc, dict) or not doc or "type" in doc:
        return False
    return all(
        isinstance(v, list) and all(isinstance(o, dict) and "vertices" in o for o in v) for v in doc.values()
    ) and any(doc.values())


def _vertex_features(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Vertex annotations as classified GeoJSON polygon features (class = the key, e.g. ``positive``)."""
    out = []
    for cls, objs in doc.items():
        for o in objs:
            ring = list(o.get("vertices") or [])
            if ring and ring[0] != ring[-1]:
                ring.append(ring[0])
            out.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": str(cls)}, "format": "vertices"},
            })
    return out


def _features(path: Path, bare_geometry: bool = False) -> list[dict[str, Any]]:
    """The features of a GeoJSON file (a FeatureCollection, a Feature or a list of features), or of
    a BALNMP vertex annotation (see :func:`is_vertex_json`; one classified polygon per object).

    Args:
        path: the file.
        bare_geometry: also accept a lone geometry (wrapped as one unclassified feature).

    Raises:
        DatasetError: the file is missing, not JSON, or not GeoJSON features.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"GeoJSON file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read GeoJSON {path}: {exc}") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        features = doc.get("features") or []
    elif kind == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    elif bare_geometry and kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
        features = [{"type": "Feature", "geometry": doc}]
    elif is_vertex_json(doc):
        features = _vertex_features(doc)
    else:
        raise DatasetError(
            f"{path}: not GeoJSON (expected a FeatureCollection, a list of features or "
            '{"positive": [{"vertices": [[x, y], ...]}]})'
        )
    if not all(isinstance(f, dict) for f in features):
        raise DatasetError(f"{path}: a feature is not a JSON object")
    return features


def read_annotations(path: Path) -> tuple[list[Annotation], list[str]]:
    """Read the classified polygon annotations of a QuPath GeoJSON export.

    Detections (cells), unclassified objects and non-polygon geometries are skipped and counted
    in the returned warnings.

    Returns:
        ``(annotations, warnings)``.

    Raises:
        DatasetError: the file is missing, not JSON, or not GeoJSON features.
    """
    out: list[Annotation] = []
    skipped = {"detections": 0, "unclassified": 0, "not polygons": 0}
    for feat in _features(path):
        props = feat.get("properties") or {}
        if str(props.get("objectType", "annotation")).lower() in ("detection", "cell", "tile"):
            skipped["detections"] += 1
            continue
        name = _class_name(props)
        if name is None:
            skipped["unclassified"] += 1
            continue
        polys = _polygons(feat.get("geometry"), path)
        if not polys:
            skipped["not polygons"] += 1
            continue
        out.append(Annotation(name, polys))
    warnings = [f"{path.name}: {n} {what} skipped" for what, n in skipped.items() if n]
    return out, warnings


class Region(list):  # type: ignore[type-arg]
    """The rings of a region of interest (a ``list`` of ``(K, 2)`` rings) that also keeps which
    rings belong together: ``polygons`` holds per polygon its exterior then its holes, so
    :func:`points_in_rings` tests each polygon on its own and unions them (two overlapping
    annotations do not cancel out)."""

    __slots__ = ("polygons",)

    def __init__(self, polygons: list[Polygon]) -> None:
        super().__init__(r for poly in polygons for r in poly)
        self.polygons = list(polygons)


def read_region_polygons(path: str | os.PathLike[str]) -> list[Polygon]:
    """Every polygon of a GeoJSON region of interest, classified or not.

    Accepts what :func:`read_annotations` accepts plus a bare geometry. From a BALNMP vertex
    annotation only the ``positive`` (annotated tumour) polygons, when it has any.

    Returns:
        Per polygon its level-0 ``float64`` ``(K, 2)`` rings, exterior first, then holes.

    Raises:
        DatasetError: unreadable file or no polygon in it.
    """
    p = Path(path)
    feats = _features(p, bare_geometry=True)
    # a vertex annotation's region of interest is its "positive" (tumour) area when it has one
    positive = [f for f in feats if _vertex_class(f) == "positive"]
    if positive:
        feats = positive
    polys = [poly for f in feats for poly in _polygons(f.get("geometry"), p)]
    if not polys:
        raise DatasetError(f"region file {p.name} holds no polygon")
    return polys


def _vertex_class(feature: dict[str, Any]) -> str | None:
    props = feature.get("properties") or {}
    return str(_class_name(props)).lower() if props.get("format") == "vertices" else None


def read_region_rings(path: str | os.PathLike[str]) -> Region:
    """The rings of a GeoJSON region of interest as a :class:`Region` (a list of rings that
    remembers its polygons; inside-ness: :func:`points_in_rings`).

    Raises:
        DatasetError: unreadable file or no polygon in it.
    """
    return Region(read_region_polygons(path))


# cells (points x edges) of one crossing-test block: ~8 MB per float64 temporary
_BLOCK_CELLS = 1 << 20


def _edge_bands(lo: np.ndarray, hi: np.ndarray, ymin: float, ymax: float) -> tuple[int, float, np.ndarray, np.ndarray]:
    """Horizontal bands over ``[ymin, ymax)`` and, sorted by band, each edge once per band its
    y-range ``[lo, hi]`` touches: ``(n_bands, band height, edge index, band start offsets)``.
    Fewer bands when long edges would repeat too often (bounded memory)."""
    n_edges = lo.size
    nb = int(np.clip(2 * np.sqrt(n_edges), 1, 4096))
    while True:
        h = (ymax - ymin) / nb
        b0 = np.clip(((lo - ymin) / h).astype(np.int64), 0, nb - 1)
        b1 = np.clip(((hi - ymin) / h).astype(np.int64), 0, nb - 1)
        span = b1 - b0 + 1
        if nb == 1 or span.sum() <= max(8 * n_edges, 1 << 16):
            break
        nb //= 2
    e_idx = np.repeat(np.arange(n_edges), span)
    e_band = b0[e_idx] + np.arange(e_idx.size) - np.repeat(np.cumsum(span) - span, span)
    order = np.argsort(e_band, kind="stable")
    return nb, h, e_idx[order], np.searchsorted(e_band[order], np.arange(nb + 1))


def _ring_parity(px: np.ndarray, py: np.ndarray, ring: Ring) -> np.ndarray:
    """Even-odd crossing test of points against one ring -> bool ``(N,)``.

    A ray to the right crosses an edge when the point's y is in ``[min(y0, y1), max(y0, y1))``
    and the point lies left of the edge. Edges are bucketed into horizontal bands so each point
    meets only the edges of its band, in blocks of bounded size: memory stays a few MB and time
    near-linear for a 20k-vertex outline and 100k points (a dense points x edges array would
    need 16 GB).
    """
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    sloped = y0 != y1  # horizontal edges never cross
    x0, y0, x1, y1 = x0[sloped], y0[sloped], x1[sloped], y1[sloped]
    out = np.zeros(px.size, dtype=bool)
    if not x0.size:
        return out
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    ymin, ymax = float(lo.min()), float(hi.max())
    sel = np.flatnonzero((py >= ymin) & (py < ymax))
    if not sel.size:
        return out
    nb, h, e_idx, e_start = _edge_bands(lo, hi, ymin, ymax)
    slope = (x1 - x0) / (y1 - y0)
    pb = np.clip(((py[sel] - ymin) / h).astype(np.int64), 0, nb - 1)
    order = np.argsort(pb, kind="stable")
    sel, pb = sel[order], pb[order]
    p_start = np.searchsorted(pb, np.arange(nb + 1))
    for b in np.flatnonzero(np.diff(p_start)):
        es = e_idx[e_start[b] : e_start[b + 1]]
        if not es.size:
            continue
        ex0, ey0, ey1, es_slope = x0[es], y0[es], y1[es], slope[es]
        ps = sel[p_start[b] : p_start[b + 1]]
        step = max(1, _BLOCK_CELLS // es.size)
        for s in range(0, ps.size, step):
            q = ps[s : s + step]
            y, x = py[q][:, None], px[q][:, None]
            crosses = (ey0 > y) != (ey1 > y)
            out[q] = np.count_nonzero(crosses & (x < ex0 + (y - ey0) * es_slope), axis=1) % 2 == 1
    return out


def points_in_polygons(points: np.ndarray, polygons: list[Polygon]) -> np.ndarray:
    """Which ``points (N, 2)`` lie in the union of ``polygons`` -> bool ``(N,)``.

    Each polygon is tested on its own (inside its exterior ring and outside all its holes), and
    a point inside any polygon is inside, so overlapping annotations stay inside. Points outside
    a polygon's bounding box, or already inside an earlier polygon, are not tested against it.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(pts.shape[0], dtype=bool)
    for rings in polygons:
        if not rings:
            continue
        ext = np.asarray(rings[0], dtype=np.float64)
        (bx0, by0), (bx1, by1) = ext.min(axis=0), ext.max(axis=0)
        px, py = pts[:, 0], pts[:, 1]
        cand = np.flatnonzero(~inside & (px >= bx0) & (px <= bx1) & (py >= by0) & (py <= by1))
        if not cand.size:
            continue
        cx, cy = px[cand], py[cand]
        hit = _ring_parity(cx, cy, ext)
        for hole in rings[1:]:
            if not hit.any():
                break
            hit[hit] &= ~_ring_parity(cx[hit], cy[hit], np.asarray(hole, dtype=np.float64))
        inside[cand[hit]] = True
    return inside


def points_in_rings(points: np.ndarray, rings: list[Ring] | Region) -> np.ndarray:
    """Point-in-region test of ``points (N, 2)`` -> bool ``(N,)``.

    A :class:`Region` (from :func:`read_region_rings`) is the union of its polygons, holes cut
    out (:func:`points_in_polygons`). A plain list of rings uses the even-odd rule over all
    rings (a ring inside another is a hole). Memory stays bounded either way.
    """
    if isinstance(rings, Region):
        return points_in_polygons(points, rings.polygons)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(pts.shape[0], dtype=bool)
    for ring in rings:
        inside ^= _ring_parity(pts[:, 0], pts[:, 1], np.asarray(ring, dtype=np.float64))
    return inside


@dataclass(frozen=True, slots=True, eq=False)
class ClassMask:
    """One class's annotated area, rasterised over a level-0 window.

    Attributes:
        mask: ``bool`` ``(H, W)``.
        origin: level-0 ``(x, y)`` of mask pixel ``(0, 0)``.
        downsample: level-0 pixels per mask pixel.
    """

    mask: np.ndarray
    origin: tuple[float, float]
    downsample: float

    def fraction_in_rects(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
        """Covered fraction (0-1) of level-0 rectangles, ``float32`` ``(N,)``."""
        from engine.slides.tissue import TissueMask

        tm = TissueMask(self.mask, self.downsample, 0.0, "annotation")
        ox, oy = self.origin
        return tm.fraction_in_rects(
            np.asarray(x0, np.float64) - ox, np.asarray(y0, np.float64) - oy,
            np.asarray(x1, np.float64) - ox, np.asarray(y1, np.float64) - oy,
        )


def rasterise(annotations: list[Annotation], class_names: list[str], resolution: float) -> dict[str, ClassMask]:
    """Rasterise annotations per class over their common bounding box.

    Args:
        annotations: the slide's annotations.
        class_names: classes to rasterise (others are ignored).
        resolution: wanted level-0 pixels per mask pixel (coarsened if the mask would exceed
            ``MAX_MASK_PIXELS``).

    Returns:
        ``{class name: ClassMask}`` for classes with annotations. Holes are cut out; where a
        class has several polygons, their union counts.
    """
    from PIL import Image, ImageDraw

    wanted = [a for a in annotations if a.class_name in class_names]
    if not wanted:
        return {}
    b = np.array([a.bounds for a in wanted])
    x0, y0 = float(np.floor(b[:, 0].min())), float(np.floor(b[:, 1].min()))
    x1, y1 = float(np.ceil(b[:, 2].max())), float(np.ceil(b[:, 3].max()))
    ds = max(float(resolution), 1e-6)
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    if area / (ds * ds) > MAX_MASK_PIXELS:
        ds = float(np.sqrt(area / MAX_MASK_PIXELS))
    w = int(np.ceil((x1 - x0) / ds)) + 1
    h = int(np.ceil((y1 - y0) / ds)) + 1
    out: dict[str, ClassMask] = {}
    for name in class_names:
        polys = [p for a in wanted if a.class_name == name for p in a.polygons]
        if not polys:
            continue
        union = np.zeros((h, w), bool)
        for rings in polys:
            img = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(img)
            for j, ring in enumerate(rings):
                pts = [((x - x0) / ds, (y - y0) / ds) for x, y in ring]
                draw.polygon(pts, fill=0 if j else 1)
            union |= np.asarray(img, dtype=bool)
        out[name] = ClassMask(union, (x0, y0), ds)
    return out
