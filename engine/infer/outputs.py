"""Heatmap result files, per slide in ``DIR/<slide name>/`` (see PRODUCT.md).

``heatmap.npy``, ``heatmap.json``, ``overlay.png``, ``tiles.csv``, ``tiles.geojson`` (and the
lesions, :mod:`engine.infer.lesions`: ``lesions.geojson``, ``lesions.csv``) are
written into a temporary folder that replaces the result folder as a whole, so a reader (the
GUI's cache, a script) sees either the previous complete result or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.errors import MetaScopeError
from engine.fileio import atomic_dir, recover_dir
from engine.infer.pipeline import HeatmapResult
from engine.jobs import CancelToken, check_cancel
from engine.slides.base import SlideReader

FORMAT = "metascope-heatmap"
# 2: "slide_mpp" / "slide_mpp_source" hold the slide's resolution, "mpp" the analysis one
# (version 1 wrote the slide's resolution as "mpp")
FORMAT_VERSION = 2
FILES = ("heatmap.npy", "heatmap.json", "overlay.png", "tiles.csv", "tiles.geojson", "lesions.geojson", "lesions.csv")
COLORMAP = "turbo"
OVERLAY_MAX_SIZE = 2048
# zlib level of overlay.png: lossless at any level; 1 encodes a 2048 px overlay in about half
# the time of PIL's default 6 for a file about 6 % larger.
OVERLAY_PNG_LEVEL = 1
# Blend weight of the colour: low probabilities stay see-through so the tissue remains readable.
OVERLAY_ALPHA_MIN = 0.2
OVERLAY_ALPHA_MAX = 0.65
# QuPath colour of the exported positive tiles (packed as [r, g, b])
POSITIVE_RGB = (220, 40, 40)


class HeatmapFileError(MetaScopeError):
    """A heatmap result folder is missing files or holds unreadable ones."""


def safe_name(name: str) -> str:
    """A file-system-safe folder name for a slide (keeps letters, digits, ``._-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return s or "slide"


def prob_columns(class_names: tuple[str, ...] | list[str]) -> list[str]:
    """``tiles.csv`` probability column names: ``prob_<class>`` (commas and spaces made safe)."""
    return [f"prob_{re.sub(r'[^A-Za-z0-9_-]+', '_', c).strip('_') or i}" for i, c in enumerate(class_names)]


def heatmap_metadata(result: HeatmapResult) -> dict[str, Any]:
    """The content of ``heatmap.json``."""
    rows, cols = result.grid.shape
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metascope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slide": result.slide,
        "model": result.model,
        "class_names": list(result.class_names),
        "positive_class": result.positive_class,
        "positive_class_name": result.class_names[result.positive_class],
        "tile_size_level0": int(result.tile_size_level0),
        "stride_level0": int(result.stride_level0),
        "grid_origin_level0": [int(result.origin_level0[0]), int(result.origin_level0[1])],
        "grid_shape": [int(rows), int(cols)],
        "mpp": result.model.get("mpp"),
        "slide_mpp": float(result.slide_mpp),
        "slide_mpp_source": result.slide_mpp_source,
        "threshold": result.threshold,
        "runtime_s": result.timing.get("total_s"),
        "timing": result.timing,
        "config": result.config,
        "summary": result.summary,
        "files": {
            "heatmap": "heatmap.npy",
            "overlay": "overlay.png",
            "tiles": "tiles.csv",
            "tiles_columns": ["x", "y", "width", "height", *prob_columns(result.class_names)],
            "geojson": "tiles.geojson",
            "colormap": COLORMAP,
        },
    }


def write_heatmap_outputs(
    result: HeatmapResult,
    out_root: str | os.PathLike[str],
    reader: SlideReader | None = None,
    thumbnail: np.ndarray | None = None,
    folder_name: str | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Write all result files of one slide into ``out_root/<slide name>/`` atomically.

    Args:
        result: the computed heatmap.
        out_root: parent folder (created if needed).
        reader: the open slide, for the overlay's thumbnail (or pass ``thumbnail``).
        thumbnail: uint8 RGB ``(h, w, 3)`` thumbnail of the whole slide.
        folder_name: folder name instead of the slide name.
        cancel: checked between files; a cancelled write leaves the previous folder untouched.

    Returns:
        The result folder.

    Raises:
        OutputError: the folder cannot be written.
    """
    if thumbnail is None:
        if reader is None:
            raise ValueError("write_heatmap_outputs needs a reader or a thumbnail for overlay.png")
        from engine.slides.damage import tolerant_thumbnail

        thumbnail = tolerant_thumbnail(reader, OVERLAY_MAX_SIZE).rgb  # damaged blocks stay white
    dims = tuple(result.slide.get("dimensions") or (thumbnail.shape[1], thumbnail.shape[0]))
    final = Path(out_root) / safe_name(folder_name or result.slide_name)
    from engine.infer.lesions import find_lesions, lesion_summary, write_lesion_files

    lesions = find_lesions(result)
    meta = heatmap_metadata(result)
    meta["lesions"] = lesion_summary(result, lesions)
    meta["category"] = meta["lesions"]["category"]
    with atomic_dir(final) as tmp:
        np.save(tmp / "heatmap.npy", result.grid.astype(np.float32, copy=False))
        check_cancel(cancel)
        (tmp / "heatmap.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        check_cancel(cancel)
        write_lesion_files(tmp, lesions)
        check_cancel(cancel)
        write_overlay(tmp / "overlay.png", thumbnail, result, (int(dims[0]), int(dims[1])))
        check_cancel(cancel)
        write_tiles_csv(tmp / "tiles.csv", result)
        check_cancel(cancel)
        write_geojson(tmp / "tiles.geojson", result)
    return final


def heatmap_to_thumbnail(
    result: HeatmapResult, thumb_size: tuple[int, int], slide_size: tuple[int, int], grid: np.ndarray | None = None
) -> np.ndarray:
    """Sample the heatmap grid at thumbnail pixel centres.

    Args:
        result: the heatmap.
        thumb_size: ``(width, height)`` of the thumbnail.
        slide_size: level-0 ``(width, height)``.
        grid: another ``(rows, cols)`` float grid on the same cells to sample instead
            (e.g. QC reason codes).

    Returns:
        float32 ``(height, width)``: probability, NaN where no tile covers the pixel.
    """
    tw, th = thumb_size
    w0, h0 = slide_size
    rows, cols = result.grid.shape
    ox, oy = result.origin_level0

    def index(n_out: int, extent: int, origin: int, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
        centre = (np.arange(n_out, dtype=np.float64) + 0.5) * (extent / n_out) - origin
        cell = np.floor(centre / result.stride_level0).astype(np.int64)
        inside = (centre >= 0) & (cell < n_cells) & (centre - cell * result.stride_level0 < result.tile_size_level0)
        return np.clip(cell, 0, n_cells - 1), inside

    ci, cin = index(tw, w0, ox, cols)
    ri, rin = index(th, h0, oy, rows)
    src = result.grid if grid is None else grid
    heat = src[ri[:, None], ci[None, :]].astype(np.float32)
    heat[~(rin[:, None] & cin[None, :])] = np.nan
    return heat


def render_overlay(thumbnail: np.ndarray, result: HeatmapResult, slide_size: tuple[int, int]) -> np.ndarray:
    """The thumbnail with the heatmap blended over analysed areas; uint8 RGB, same shape."""
    from matplotlib import colormaps  # not pyplot: no GUI backend is touched

    th, tw = thumbnail.shape[:2]
    heat = heatmap_to_thumbnail(result, (tw, th), slide_size)
    valid = np.isfinite(heat)
    p = np.clip(heat[valid], 0.0, 1.0)
    # a 256-entry colour table indexed per pixel: the colormap itself would make float64 RGBA
    # copies of the whole thumbnail
    lut = colormaps[COLORMAP](np.linspace(0.0, 1.0, 256), bytes=True)[:, :3].astype(np.float32)
    colour = lut[np.rint(p * 255).astype(np.intp)]
    a = (OVERLAY_ALPHA_MIN + (OVERLAY_ALPHA_MAX - OVERLAY_ALPHA_MIN) * p)[:, None]
    out = thumbnail.copy()
    out[valid] = np.clip(thumbnail[valid] * (1 - a) + colour * a + 0.5, 0, 255).astype(np.uint8)
    from engine.slides.qc_render import paint_reasons
    from engine.slides.qc_summary import reason_grid

    reasons = reason_grid(result.summary, result.grid.shape)
    if reasons.any():
        # QC-flagged tiles hatched in the reason's colour, unreadable tiles solid (see qc_render)
        paint_reasons(out, heatmap_to_thumbnail(result, (tw, th), slide_size, grid=reasons))
    return out


def write_overlay(path: Path, thumbnail: np.ndarray, result: HeatmapResult, slide_size: tuple[int, int]) -> None:
    from PIL import Image

    Image.fromarray(render_overlay(thumbnail, result, slide_size)).save(
        path, format="PNG", optimize=False, compress_level=OVERLAY_PNG_LEVEL
    )


def write_tiles_csv(path: Path, result: HeatmapResult) -> None:
    """``x,y,width,height,prob_<class>...``: one row per analysed tile, level-0 pixels."""
    n = result.level0_xy.shape[0]
    size = np.full((n, 1), result.tile_size_level0, dtype=np.int64)
    header = ",".join(["x", "y", "width", "height", *prob_columns(result.class_names)])
    ints = np.hstack([result.level0_xy.astype(np.int64), size, size])
    fmt = ["%d"] * 4 + ["%.6f"] * result.probabilities.shape[1]
    table = np.hstack([ints.astype(np.float64), result.probabilities.astype(np.float64)])
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(header + "\n")
        if n:
            np.savetxt(fh, table, fmt=fmt, delimiter=",")


def geojson_features(result: HeatmapResult) -> list[dict[str, Any]]:
    """QuPath-importable detection features for tiles at or above the threshold (level-0 px)."""
    pos = result.positive_probabilities
    keep = np.flatnonzero(np.isfinite(pos) & (pos >= result.threshold))
    name = result.class_names[result.positive_class]
    cols = prob_columns(result.class_names)
    s = int(result.tile_size_level0)
    feats: list[dict[str, Any]] = []
    for i in keep:
        x, y = int(result.level0_xy[i, 0]), int(result.level0_xy[i, 1])
        feats.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]],
                },
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": list(POSITIVE_RGB)},
                    "measurements": {c: round(float(v), 6) for c, v in zip(cols, result.probabilities[i], strict=True)},
                    "isLocked": False,
                },
            }
        )
    return feats


def write_geojson(path: Path, result: HeatmapResult) -> None:
    doc = {"type": "FeatureCollection", "features": geojson_features(result)}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, separators=(",", ":"))


def load_heatmap_result(folder: str | os.PathLike[str]) -> HeatmapResult:
    """Reload a result folder written by :func:`write_heatmap_outputs` (the GUI's cache).

    Returns:
        A :class:`HeatmapResult` with ``plan=None``.

    Raises:
        HeatmapFileError: files missing, unreadable or inconsistent.
    """
    d = recover_dir(folder)  # a replacement cut short by a crash: the previous folder comes back
    missing = [f for f in ("heatmap.npy", "heatmap.json", "tiles.csv") if not (d / f).is_file()]
    if missing:
        raise HeatmapFileError(f"{d} is not a complete MetaScope heatmap folder (missing {', '.join(missing)})")
    try:
        meta = json.loads((d / "heatmap.json").read_text(encoding="utf-8"))
        grid = np.load(d / "heatmap.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HeatmapFileError(f"{d}: cannot read the heatmap files ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HeatmapFileError(f"{d / 'heatmap.json'} is not a MetaScope heatmap description")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise HeatmapFileError(f"{d}: written by a newer MetaScope (format {meta.get('format_version')})")
    try:
        class_names = tuple(str(c) for c in meta["class_names"])
        stride = int(meta["stride_level0"])
        ox, oy = (int(v) for v in meta["grid_origin_level0"])
        with open(d / "tiles.csv", encoding="utf-8") as fh:
            header = fh.readline().strip().split(",")
            table = np.loadtxt(fh, delimiter=",", ndmin=2, dtype=np.float64)
        if header[:4] != ["x", "y", "width", "height"] or len(header) != 4 + len(class_names):
            raise ValueError(f"unexpected tiles.csv columns {header}")
        table = table.reshape(-1, len(header))
        xy = table[:, :2].astype(np.int64)
        rc = np.stack([(xy[:, 1] - oy) // stride, (xy[:, 0] - ox) // stride], axis=1).astype(np.int32)
        if grid.ndim != 2 or list(grid.shape) != [int(v) for v in meta["grid_shape"]]:
            raise ValueError(f"heatmap.npy has shape {grid.shape}, heatmap.json says {meta['grid_shape']}")
        return HeatmapResult(
            grid=grid.astype(np.float32, copy=False),
            probabilities=table[:, 4:].astype(np.float32),
            level0_xy=xy,
            grid_rc=rc,
            class_names=class_names,
            positive_class=int(meta["positive_class"]),
            tile_size_level0=int(meta["tile_size_level0"]),
            stride_level0=stride,
            origin_level0=(ox, oy),
            slide_mpp=float(meta["slide_mpp"] if "slide_mpp" in meta else meta["mpp"]),
            slide_mpp_source=str(meta.get("slide_mpp_source", meta.get("mpp_source", "file"))),
            slide=dict(meta["slide"]),
            model=dict(meta["model"]),
            summary=dict(meta["summary"]),
            timing=dict(meta.get("timing", {})),
            config=dict(meta.get("config", {})),
            plan=None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HeatmapFileError(f"{d}: inconsistent heatmap files ({exc})") from exc
