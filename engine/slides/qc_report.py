"""``metascope qc``: a QC report per slide and a cohort table (HistoQC's results, MetaScope's checks).

Per slide, in ``OUT/<slide>/``: ``qc.json`` (stain scores, share of tissue tiles per artefact,
blur scores, unreadable tiles, timing), ``thumbnail.png`` and ``qc_mask.png`` (the thumbnail
with the QC mask: artefact tiles hatched in their colour, unreadable tiles solid, background
washed grey). The cohort table ``OUT/qc_results.csv`` has one row per slide.

The thumbnail checks run on the tissue thumbnail (see :mod:`engine.slides.qc`). Blur needs the
analysis resolution, so it is measured on an evenly spread sample of the tissue tiles
(``blur_sample``, all of them when the slide has fewer) read exactly as the heatmap reads them;
those reads also find undecodable tiles.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import MetaScopeError, NoTissueError
from engine.fileio import atomic_dir, atomic_write_text
from engine.slides.base import SlideReader
from engine.slides.damage import UnreadableLog, read_tiles_tolerant, record_damaged_cells
from engine.slides.qc import BACKGROUND, BLUR, OK, REASONS, UNREADABLE, QCSettings, is_blurred, sharpness
from engine.slides.qc_render import paint_reasons
from engine.slides.tiling import TissueSettings, plan_slide, slide_tissue

DEFAULT_TILE_SIZE = 96
DEFAULT_MPP = 0.97  # PCam's resolution: the starter model's analysis resolution
DEFAULT_BLUR_SAMPLE = 256
COHORT_FILE = "qc_results.csv"
COHORT_COLUMNS = (
    "slide",
    "path",
    "status",
    "error",
    "stain",
    "stain_message",
    "haematoxylin",
    "eosin",
    "dab",
    "colour_fraction",
    "tissue_fraction",
    "tissue_tiles",
    "pen_fraction",
    "fold_fraction",
    "bubble_fraction",
    "blur_fraction",
    "blur_score_median",
    "blur_sampled",
    "unreadable_tiles",
    "damaged_thumbnail_fraction",
    "usable_fraction",
    "seconds",
)


@dataclass(slots=True, eq=False)
class SlideQCReport:
    """The QC of one slide (see the module description); ``data`` is ``qc.json``."""

    name: str
    data: dict[str, Any]
    thumbnail: np.ndarray | None = None
    mask_image: np.ndarray | None = None
    codes: np.ndarray | None = field(default=None)

    def row(self) -> dict[str, Any]:
        """The cohort-table row."""
        d = self.data
        stain = d.get("stain") or {}
        sc = stain.get("scores") or {}
        fr = d.get("tile_fractions") or {}
        blur = d.get("blur") or {}
        return {
            "slide": self.name,
            "path": d.get("path", ""),
            "status": d.get("status", "ok"),
            "error": d.get("error", ""),
            "stain": stain.get("kind", ""),
            "stain_message": stain.get("message", ""),
            "haematoxylin": sc.get("haematoxylin", ""),
            "eosin": sc.get("eosin", ""),
            "dab": sc.get("dab", ""),
            "colour_fraction": sc.get("colour_fraction", ""),
            "tissue_fraction": d.get("tissue_fraction", ""),
            "tissue_tiles": d.get("tissue_tiles", ""),
            "pen_fraction": fr.get("pen", ""),
            "fold_fraction": fr.get("fold", ""),
            "bubble_fraction": fr.get("bubble", ""),
            "blur_fraction": blur.get("blurred_fraction", ""),
            "blur_score_median": blur.get("score_median", ""),
            "blur_sampled": blur.get("sampled", ""),
            "unreadable_tiles": (d.get("unreadable") or {}).get("count", ""),
            "damaged_thumbnail_fraction": d.get("damaged_thumbnail_fraction", ""),
            "usable_fraction": d.get("usable_fraction", ""),
            "seconds": d.get("seconds", ""),
        }


def cells_to_pixels(
    codes: np.ndarray,
    grid: tuple[int, int],
    origin: tuple[int, int],
    stride0: int,
    tile0: int,
    thumb_size: tuple[int, int],
    slide_size: tuple[int, int],
) -> np.ndarray:
    """Sample a per-cell ``(rows, cols)`` code grid at thumbnail pixel centres (0 outside cells)."""
    tw, th = thumb_size
    w0, h0 = slide_size

    def index(n_out: int, extent: int, o: int, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
        centre = (np.arange(n_out, dtype=np.float64) + 0.5) * (extent / n_out) - o
        cell = np.floor(centre / stride0).astype(np.int64)
        inside = (centre >= 0) & (cell < n_cells) & (centre - cell * stride0 < tile0)
        return np.clip(cell, 0, n_cells - 1), inside

    ci, cin = index(tw, w0, origin[0], grid[1])
    ri, rin = index(th, h0, origin[1], grid[0])
    out = codes[ri[:, None], ci[None, :]].copy()
    out[~(rin[:, None] & cin[None, :])] = 0
    return out


def slide_qc_report(
    reader: SlideReader,
    tile_size: int = DEFAULT_TILE_SIZE,
    mpp: float = DEFAULT_MPP,
    settings: QCSettings | None = None,
    blur_sample: int = DEFAULT_BLUR_SAMPLE,
    slide_mpp: float | None = None,
) -> SlideQCReport:
    """Run every QC check on one open slide.

    Raises:
        MissingMppError, ConfigError: no usable resolution; SlideOpenError: no level can be read.
    """
    t0 = time.perf_counter()
    settings = settings or QCSettings()
    keep = QCSettings(**{**settings.to_dict(), "keep_failed": True})
    info = reader.info
    tissue = slide_tissue(reader, tile_size, mpp, TissueSettings())
    data: dict[str, Any] = {"slide": info.name, "path": info.path, "status": "ok", "error": ""}
    data["tissue_fraction"] = round(float(tissue.tissue_fraction), 6)
    damaged = tissue.damaged
    data["damaged_thumbnail_fraction"] = round(float(damaged.mean()), 6) if damaged is not None else 0.0
    thumb = tissue.thumbnail if tissue.thumbnail is not None else reader.thumbnail(1024)
    try:
        plan = plan_slide(reader, tile_size, mpp, TissueSettings(), mask=tissue, qc=keep, slide_mpp=slide_mpp)
    except NoTissueError as exc:
        from engine.slides.qc import thumbnail_qc

        stain, _codes, _fr = thumbnail_qc(thumb, None, keep)
        data.update(status="no tissue", error=" ".join(str(exc).split()), stain=stain.to_dict(), tissue_tiles=0)
        data["seconds"] = round(time.perf_counter() - t0, 4)
        return SlideQCReport(info.name, data, thumb, thumb.copy())
    qc = plan.qc
    n = plan.n_tiles
    codes = np.full(plan.grid_shape, BACKGROUND, dtype=np.uint8)
    codes[plan.grid_rc[:, 0], plan.grid_rc[:, 1]] = OK
    codes[qc.rc[:, 0], qc.rc[:, 1]] = qc.reason
    # blur and damaged data on a spread sample of tissue tiles, read as the heatmap reads them
    m = min(n, max(0, int(blur_sample))) if settings.enabled and settings.blur else 0
    rows = np.unique(np.linspace(0, n - 1, m).round().astype(np.int64)) if m else np.zeros(0, np.int64)
    log = UnreadableLog(max(len(rows), 1), 1.0, info.name)
    scores = np.zeros(0, np.float32)
    blur_mask = np.zeros(0, bool)
    if rows.size:
        tiles, ok = read_tiles_tolerant(reader, plan, plan.level0_xy[rows], rows, log)
        scores, contrast = sharpness(tiles[ok])
        blur_mask = is_blurred(scores, contrast, settings.blur_threshold)
        blurred = rows[ok][blur_mask]
        free = codes[plan.grid_rc[blurred, 0], plan.grid_rc[blurred, 1]] == OK
        codes[plan.grid_rc[blurred[free], 0], plan.grid_rc[blurred[free], 1]] = BLUR
        bad = rows[~ok]
        codes[plan.grid_rc[bad, 0], plan.grid_rc[bad, 1]] = UNREADABLE
    # cells the thumbnail could not show (damaged data) are unreadable, not background
    cells = UnreadableLog(1, 1.0, info.name)
    record_damaged_cells(plan, cells)
    for t in cells.tiles:
        codes[t.row, t.col] = UNREADABLE
    counts = qc.counts()
    data["stain"] = qc.stain.to_dict()
    data["tissue_tiles"] = n
    data["tile_counts"] = {**counts, "blur_sampled": int(blur_mask.sum())}
    data["tile_fractions"] = {k: round(v / n, 6) for k, v in counts.items()}
    data["area_fractions"] = qc.area_fractions
    data["blur"] = {
        "sampled": int(scores.size),
        "threshold": settings.blur_threshold,
        "blurred_fraction": round(float(blur_mask.mean()), 6) if scores.size else 0.0,
        "score_median": round(float(np.median(scores)), 3) if scores.size else None,
        "score_p10": round(float(np.percentile(scores, 10)), 3) if scores.size else None,
    }
    unread = log.to_dict()
    for t in unread["tiles"]:
        t["row"], t["col"] = (int(v) for v in plan.grid_rc[t["index"]])
    unread["sampled"] = int(rows.size)
    unread["count"] += cells.count
    unread["damaged_cells"] = cells.count
    data["unreadable"] = unread
    flagged = float(len(qc.reason)) / n + data["blur"]["blurred_fraction"] * (1 - len(qc.reason) / n)
    data["usable_fraction"] = round(max(0.0, 1.0 - flagged - unread["fraction"]), 6)
    data["grid"] = {
        "shape": list(plan.grid_shape),
        "tile_size_level0": plan.tile_size_level0,
        "stride_level0": plan.stride_level0,
        "tile_size_px": tile_size,
        "mpp": mpp,
    }
    data["reasons"] = {name: int((codes == i).sum()) for i, name in enumerate(REASONS)}
    th, tw = thumb.shape[:2]
    px = cells_to_pixels(
        codes, plan.grid_shape, plan.origin_level0, plan.stride_level0, plan.tile_size_level0, (tw, th), info.dimensions
    )
    mask_img = paint_reasons(thumb.copy(), px.astype(np.float32))
    data["seconds"] = round(time.perf_counter() - t0, 4)
    return SlideQCReport(info.name, data, thumb, mask_img, codes)


def write_slide_report(report: SlideQCReport, folder: str | os.PathLike[str]) -> Path:
    """Write ``qc.json``, ``thumbnail.png``, ``qc_mask.png`` (and ``qc_codes.npy``) atomically."""
    import json

    from PIL import Image

    final = Path(folder)
    with atomic_dir(final) as tmp:
        files = {"json": "qc.json"}
        if report.thumbnail is not None:
            Image.fromarray(report.thumbnail).save(tmp / "thumbnail.png")
            files["thumbnail"] = "thumbnail.png"
        if report.mask_image is not None:
            Image.fromarray(report.mask_image).save(tmp / "qc_mask.png")
            files["mask"] = "qc_mask.png"
        if report.codes is not None:
            np.save(tmp / "qc_codes.npy", report.codes)
            files["codes"] = "qc_codes.npy"
        doc = {**report.data, "files": files, "reason_names": list(REASONS)}
        (tmp / "qc.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return final


def failed_report(path: str | os.PathLike[str], exc: MetaScopeError) -> SlideQCReport:
    """A cohort row for a slide that could not be checked."""
    name = Path(path).stem
    return SlideQCReport(
        name, {"slide": name, "path": str(path), "status": "error", "error": " ".join(str(exc).split())}
    )


def write_cohort_csv(reports: list[SlideQCReport], path: str | os.PathLike[str]) -> Path:
    """One row per slide (:data:`COHORT_COLUMNS`), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COHORT_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in reports:
        w.writerow(r.row())
    atomic_write_text(path, buf.getvalue())
    return Path(path)
