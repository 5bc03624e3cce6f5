"""The tile planner: tissue mask, grid at a model's resolution, optional ROI, tile cap.

:func:`plan_slide` is the one planner used by heatmaps, MIL feature extraction and annotated-slide
datasets: it detects tissue at one mask resolution (:data:`TISSUE_MASK_PX_PER_TILE` mask pixels
per tile side), lays the grid, keeps tiles with enough tissue (and, with an ROI, whose centre lies
inside it), then applies the tile cap. Units: ``slide_mpp`` is the file's resolution (microns per
level-0 pixel), ``mpp`` the analysis resolution (microns per model pixel).

Planning yields coordinates only (no pixels are read); :func:`read_tile` reads one tile for the
pipeline. Plan arrays hold a few numbers per tissue tile, so memory stays small on any slide.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, MissingMppError, NoTissueError
from engine.slides.base import SlideInfo, SlideReader
from engine.slides.mpp import is_square
from engine.slides.tissue import TissueMask, detect_tissue

if TYPE_CHECKING:
    from engine.slides.qc import QCSettings

MAX_TILE_PX = 4096
#: Resolution of the tissue mask used for tiling, in mask pixels per tile side: plenty to judge a
#: tile's tissue fraction, and a coarse mask is much faster to clean up than a full 2048 px one.
TISSUE_MASK_PX_PER_TILE = 16

#: ``fn(points)`` with float ``(N, 2)`` level-0 ``(x, y)`` -> bool ``(N,)``: inside the ROI.
InsideFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class TilingConfig:
    """How to cut a slide into model inputs.

    Attributes:
        tile_size_px: model input side in pixels (e.g. 96).
        mpp: analysis resolution, microns per pixel the model expects (e.g. 0.97).
        stride_px: step between tiles in model pixels; ``None`` means ``tile_size_px`` (no overlap).
        min_tissue_fraction: tiles with less tissue (0-1, by area of the tile) are skipped.
        max_tiles: optional cap; the tiles with the most tissue are kept.
    """

    tile_size_px: int
    mpp: float
    stride_px: int | None = None
    min_tissue_fraction: float = 0.25
    max_tiles: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tile_size_px, bool) or not isinstance(self.tile_size_px, (int, np.integer)):
            raise ConfigError(f"tile_size_px must be an integer, got {self.tile_size_px!r}")
        if not 8 <= int(self.tile_size_px) <= MAX_TILE_PX:
            raise ConfigError(f"tile_size_px must be between 8 and {MAX_TILE_PX}, got {self.tile_size_px}")
        object.__setattr__(self, "tile_size_px", int(self.tile_size_px))
        try:
            mpp = float(self.mpp)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"mpp must be a number, got {self.mpp!r}") from exc
        if not math.isfinite(mpp) or mpp <= 0:
            raise ConfigError(f"mpp must be a positive number of microns per pixel, got {self.mpp!r}")
        object.__setattr__(self, "mpp", mpp)
        stride = self.tile_size_px if self.stride_px is None else self.stride_px
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or int(stride) < 1:
            raise ConfigError(f"stride_px must be a positive integer, got {self.stride_px!r}")
        object.__setattr__(self, "stride_px", int(stride))
        frac = float(self.min_tissue_fraction)
        if not 0.0 <= frac <= 1.0:
            raise ConfigError(f"min_tissue_fraction must be within 0-1, got {self.min_tissue_fraction!r}")
        object.__setattr__(self, "min_tissue_fraction", frac)
        if self.max_tiles is not None:
            if isinstance(self.max_tiles, bool) or not isinstance(self.max_tiles, (int, np.integer)) or self.max_tiles < 1:
                raise ConfigError(f"max_tiles must be a positive integer or None, got {self.max_tiles!r}")
            object.__setattr__(self, "max_tiles", int(self.max_tiles))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TilingConfig:
        """Build from :meth:`to_dict` output.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        known = {"tile_size_px", "mpp", "stride_px", "min_tissue_fraction", "max_tiles"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown tiling setting(s): {', '.join(sorted(unknown))}")
        if "tile_size_px" not in d or "mpp" not in d:
            raise ConfigError("tiling settings need tile_size_px and mpp")
        return cls(**d)


@dataclass(frozen=True, slots=True, eq=False)
class TilePlan:
    """Where to read the tiles of one slide.

    Tile ``i`` covers level-0 pixels ``[x, x + tile_size_level0) x [y, y + tile_size_level0)``
    with ``(x, y) = level0_xy[i]``; it sits in heatmap cell ``grid_rc[i] = (row, col)`` where
    ``x = origin_level0[0] + col * stride_level0`` (likewise y with row).

    Attributes:
        config: the tiling settings.
        slide_dimensions: level-0 ``(width, height)``.
        slide_mpp: slide microns per level-0 pixel actually used.
        downsample: level-0 pixels per model pixel (``config.mpp / slide_mpp``).
        level: pyramid level read.
        level_downsample: that level's downsample.
        read_size: side in pixels of the region read at ``level`` for one tile.
        tile_size_level0: tile side in level-0 pixels.
        stride_level0: grid step in level-0 pixels.
        origin_level0: level-0 ``(x, y)`` of grid cell (0, 0).
        grid_shape: ``(rows, cols)`` of the full grid (the heatmap shape).
        level0_xy: ``int64`` ``(N, 2)`` top-left ``(x, y)`` of each selected tile, row-major order.
        grid_rc: ``int32`` ``(N, 2)`` ``(row, col)`` of each selected tile.
        tissue_fraction: ``float32`` ``(N,)`` tissue fraction of each selected tile (1 without a mask).
        tissue_cells: grid cells with enough tissue (inside the ROI) before ``max_tiles`` was applied.
        slide_mpp_from_user: the slide resolution was supplied by the user, not read from the file.
        tissue: the tissue mask the plan was made with (``None``: every grid cell was kept).
        qc: the slide QC of the plan (:class:`engine.slides.qc.PlanQC`), when it was asked for;
            tiles it flagged are not in ``level0_xy`` unless its settings keep them.
    """

    config: TilingConfig
    slide_dimensions: tuple[int, int]
    slide_mpp: float
    downsample: float
    level: int
    level_downsample: float
    read_size: int
    tile_size_level0: int
    stride_level0: int
    origin_level0: tuple[int, int]
    grid_shape: tuple[int, int]
    level0_xy: np.ndarray
    grid_rc: np.ndarray
    tissue_fraction: np.ndarray
    tissue_cells: int = 0
    slide_mpp_from_user: bool = field(default=False)
    tissue: TissueMask | None = None
    qc: Any = None

    @property
    def n_tiles(self) -> int:
        return int(self.level0_xy.shape[0])

    def __len__(self) -> int:
        return self.n_tiles

    @property
    def effective_mpp(self) -> float:
        """Microns per model pixel after rounding the tile footprint to whole level-0 pixels."""
        return self.slide_mpp * self.tile_size_level0 / self.config.tile_size_px

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no per-tile arrays)."""
        return {
            "tile_size_px": self.config.tile_size_px,
            "stride_px": self.config.stride_px,
            "mpp": self.config.mpp,
            "slide_mpp": self.slide_mpp,
            "slide_mpp_source": "user" if self.slide_mpp_from_user else "file",
            "effective_mpp": self.effective_mpp,
            "downsample": self.downsample,
            "level": self.level,
            "level_downsample": self.level_downsample,
            "read_size": self.read_size,
            "tile_size_level0": self.tile_size_level0,
            "stride_level0": self.stride_level0,
            "origin_level0": list(self.origin_level0),
            "grid_shape": list(self.grid_shape),
            "n_tiles": self.n_tiles,
            "tissue_cells": self.tissue_cells,
            "min_tissue_fraction": self.config.min_tissue_fraction,
            "slide_dimensions": list(self.slide_dimensions),
        }


def _grid_count(extent: int, tile: int, stride: int) -> int:
    """Number of grid positions so the tiles cover ``extent`` (the last may overhang)."""
    return max(1, math.ceil(max(extent - tile, 0) / stride) + 1)


def plan_tiles(
    reader: SlideReader,
    cfg: TilingConfig,
    tissue: TissueMask | None,
    slide_mpp: float | None = None,
    inside: InsideFn | None = None,
) -> TilePlan:
    """Plan the tiles of a slide at ``cfg.mpp`` (the grid step of :func:`plan_slide`).

    Args:
        reader: the slide.
        cfg: tiling settings.
        tissue: tissue mask from :func:`slide_tissue`; ``None`` keeps every grid cell
            (whole-image analysis, e.g. of a patch or a photo).
        slide_mpp: slide microns per level-0 pixel; overrides the slide's own value when given.
        inside: ROI test on tile centres (level-0 ``(x, y)``); tiles outside are dropped before
            ``cfg.max_tiles`` is applied.

    Returns:
        The :class:`TilePlan`.

    Raises:
        MissingMppError: neither the slide nor the caller gives a resolution.
        NoTissueError: the mask is empty or no tile reaches ``cfg.min_tissue_fraction`` (inside the ROI).
    """
    info = reader.info
    slide_mpp, from_user = _slide_mpp(info, slide_mpp)
    downsample = cfg.mpp / slide_mpp
    level = info.best_level_for_downsample(max(downsample, 1.0))
    level_ds = float(info.level_downsamples[level])
    tile0 = max(1, round(cfg.tile_size_px * downsample))
    stride0 = max(1, round(cfg.stride_px * downsample))
    read_size = max(1, round(tile0 / level_ds))
    w0, h0 = info.dimensions
    origin = (0, 0)
    rows = _grid_count(h0, tile0, stride0)
    cols = _grid_count(w0, tile0, stride0)

    if w0 < tile0 and h0 < tile0 and tissue is not None and tissue.fraction_in_rects(
        np.zeros(1), np.zeros(1), np.full(1, float(tile0)), np.full(1, float(tile0))
    )[0] < max(cfg.min_tissue_fraction, 1e-9):
        raise NoTissueError(
            f"{info.name}: the image ({w0}x{h0} px) is smaller than one {cfg.tile_size_px} px tile at "
            f"{cfg.mpp:g} um/px ({tile0}x{tile0} px at {slide_mpp:g} um/px); "
            "check its mpp, or analyse it whole"
        )
    if tissue is not None and tissue.is_empty:
        raise NoTissueError(f"{info.name}: no tissue found on the slide")

    # one row of the grid at a time keeps the temporaries small on a 200,000 px slide
    xs_all = origin[0] + np.arange(cols, dtype=np.int64) * stride0
    chunks_xy: list[np.ndarray] = []
    chunks_rc: list[np.ndarray] = []
    chunks_frac: list[np.ndarray] = []
    rows_per_chunk = max(1, 1_000_000 // cols)
    for r0 in range(0, rows, rows_per_chunk):
        r1 = min(rows, r0 + rows_per_chunk)
        rr, cc = np.meshgrid(np.arange(r0, r1, dtype=np.int64), np.arange(cols, dtype=np.int64), indexing="ij")
        rr = rr.ravel()
        cc = cc.ravel()
        x = xs_all[cc]
        y = origin[1] + rr * stride0
        if tissue is None:
            frac = np.ones(x.shape, dtype=np.float32)
            keep = np.ones(x.shape, dtype=bool)
        else:
            frac = tissue.fraction_in_rects(x, y, x + tile0, y + tile0)
            # a tile needs some tissue even when the threshold is 0
            keep = (frac >= cfg.min_tissue_fraction) & (frac > 0)
        if inside is not None and keep.any():
            centres = np.stack([x[keep], y[keep]], axis=1).astype(np.float64) + tile0 / 2.0
            keep[np.flatnonzero(keep)] = np.asarray(inside(centres), dtype=bool)
        if keep.any():
            chunks_xy.append(np.stack([x[keep], y[keep]], axis=1))
            chunks_rc.append(np.stack([rr[keep], cc[keep]], axis=1).astype(np.int32))
            chunks_frac.append(frac[keep])

    if not chunks_xy:
        where = " inside the region of interest" if inside is not None else ""
        raise NoTissueError(
            f"{info.name}: no tile{where} has at least {cfg.min_tissue_fraction:.0%} tissue "
            f"({cfg.tile_size_px} px tiles at {cfg.mpp:g} um/px)"
        )
    level0_xy = np.concatenate(chunks_xy).astype(np.int64)
    grid_rc = np.concatenate(chunks_rc)
    fracs = np.concatenate(chunks_frac).astype(np.float32)
    tissue_cells = int(level0_xy.shape[0])
    if cfg.max_tiles is not None and tissue_cells > cfg.max_tiles:
        # keep the tiles with most tissue, stable for ties, then restore row-major order
        order = np.argsort(-fracs, kind="stable")[: cfg.max_tiles]
        order.sort()
        level0_xy, grid_rc, fracs = level0_xy[order], grid_rc[order], fracs[order]

    return TilePlan(
        config=cfg,
        slide_dimensions=(int(w0), int(h0)),
        slide_mpp=slide_mpp,
        downsample=float(downsample),
        level=int(level),
        level_downsample=level_ds,
        read_size=int(read_size),
        tile_size_level0=int(tile0),
        stride_level0=int(stride0),
        origin_level0=origin,
        grid_shape=(int(rows), int(cols)),
        level0_xy=level0_xy,
        grid_rc=grid_rc,
        tissue_fraction=fracs,
        tissue_cells=tissue_cells,
        slide_mpp_from_user=from_user,
        tissue=tissue,
    )


def _slide_mpp(info: SlideInfo, slide_mpp: float | None) -> tuple[float, bool]:
    """The level-0 resolution to tile with and whether the user gave it.

    Raises:
        ConfigError: a bad override, or non-square pixels; MissingMppError: no resolution known.
    """
    if slide_mpp is not None:
        if not (math.isfinite(float(slide_mpp)) and float(slide_mpp) > 0):
            raise ConfigError(f"slide mpp must be a positive number, got {slide_mpp!r}")
        value = float(slide_mpp)
        # the caller's value counts as the user's unless it is just the file's own value
        from_user = info.mpp is None or info.mpp_from_user or abs(info.mpp_or(None) - value) > 1e-9
        return value, from_user
    if info.mpp is None:
        claimed = info.properties.get("metascope.ignored-mpp")
        if claimed:
            raise MissingMppError(
                f"{info.name}: the slide's recorded resolution ({claimed} um/px) is not a plausible "
                "microscope resolution; supply the right one with --mpp"
            )
        raise MissingMppError(
            f"{info.name}: the slide does not record its resolution (microns per pixel); supply one with --mpp"
        )
    if not is_square(info.mpp):
        # square tiles over non-square pixels would stretch every tile the model sees
        raise ConfigError(
            f"{info.name}: the slide's pixels are not square ({info.mpp[0]:g} x {info.mpp[1]:g} um); "
            "MetaScope tiles square pixels only: resample the slide, or pass --mpp to use one value"
        )
    return info.mpp_or(None), info.mpp_from_user


# ------------------------------------------------------------------------------ the planner


@dataclass(frozen=True, slots=True)
class TissueSettings:
    """How tissue selects tiles.

    Attributes:
        min_fraction: tiles with less tissue (0-1, by area of the tile) are skipped.
        mask_px_per_tile: tissue-mask pixels per tile side (the mask's resolution).
    """

    min_fraction: float = 0.25
    mask_px_per_tile: int = TISSUE_MASK_PX_PER_TILE

    def __post_init__(self) -> None:
        try:
            frac = float(self.min_fraction)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"minimum tissue fraction must be a number, got {self.min_fraction!r}") from exc
        if not 0.0 <= frac <= 1.0:
            raise ConfigError(f"minimum tissue fraction must be within 0-1, got {self.min_fraction!r}")
        object.__setattr__(self, "min_fraction", frac)
        px = self.mask_px_per_tile
        if isinstance(px, bool) or not isinstance(px, (int, np.integer)) or not 1 <= int(px) <= 256:
            raise ConfigError(f"mask_px_per_tile must be an integer within 1-256, got {px!r}")
        object.__setattr__(self, "mask_px_per_tile", int(px))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slide_tissue(
    reader: SlideReader, tile_size: int, mpp: float, settings: TissueSettings | None = None
) -> TissueMask:
    """The tissue mask :func:`plan_slide` tiles with: ``settings.mask_px_per_tile`` mask pixels per
    side of a ``tile_size`` px tile at ``mpp`` um/px (bounded by the thumbnail size)."""
    settings = settings or TissueSettings()
    return detect_tissue(reader, mask_mpp=mpp * tile_size / settings.mask_px_per_tile)


def plan_slide(
    reader: SlideReader,
    tile_size: int,
    mpp: float,
    tissue: TissueSettings | None = TissueSettings(),  # noqa: B008 - frozen, immutable default
    *,
    stride: int | None = None,
    roi: str | os.PathLike[str] | None = None,
    max_tiles: int | None = None,
    slide_mpp: float | None = None,
    mask: TissueMask | None = None,
    qc: QCSettings | None = None,
) -> TilePlan:
    """Plan the tiles of a slide: the one planner of heatmaps, MIL features and slide datasets.

    Steps: tissue mask, grid, tissue and ROI selection, slide QC (``qc``: artefacts flagged on
    the tissue thumbnail, :func:`engine.slides.qc.apply_qc`), then the tile cap.

    Args:
        reader: the slide.
        tile_size: model input side in pixels.
        mpp: analysis resolution (microns per model pixel).
        tissue: tissue settings; ``None`` keeps every grid cell (no tissue detection).
        stride: grid step in model pixels (default ``tile_size``: no overlap).
        roi: GeoJSON region of interest; only tiles whose centre lies inside it are kept
            (:func:`engine.data.geojson.points_in_rings`).
        max_tiles: cap (the tiles with most tissue inside the ROI are kept); ``None``: all.
        slide_mpp: the file's resolution, for slides that do not record one (or to override it).
        mask: a mask already made by :func:`slide_tissue` with the same settings (saves detecting
            it twice); ignored when ``tissue`` is ``None``.
        qc: slide QC settings; ``None``: no QC step. Flagged tiles are left out (before the cap)
            unless ``qc.keep_failed``; ``plan.qc`` records them with their reasons.

    Returns:
        The :class:`TilePlan` (``plan.tissue`` holds the mask).

    Raises:
        MissingMppError, ConfigError: no usable resolution or bad settings.
        NoTissueError: no tissue (inside the ROI).
        DatasetError: unreadable ROI file.
    """
    settings = tissue
    cfg = TilingConfig(
        tile_size_px=tile_size,
        mpp=mpp,
        stride_px=stride,
        min_tissue_fraction=settings.min_fraction if settings is not None else 0.0,
        max_tiles=max_tiles if qc is None else None,
    )
    inside: InsideFn | None = None
    if roi is not None:
        from engine.data.geojson import points_in_rings, read_region_rings

        rings = read_region_rings(roi)

        def inside(points: np.ndarray) -> np.ndarray:
            return points_in_rings(points, rings)

    if settings is not None and mask is None:
        mask = slide_tissue(reader, cfg.tile_size_px, cfg.mpp, settings)
    plan = plan_tiles(reader, cfg, mask if settings is not None else None, slide_mpp=slide_mpp, inside=inside)
    if qc is None:
        return plan
    from engine.slides.qc import apply_qc

    plan = apply_qc(reader, plan, qc)
    if plan.n_tiles == 0:
        raise NoTissueError(
            f"{reader.info.name}: every tissue tile was flagged by slide QC ({_counts_text(plan.qc.counts())}); "
            "use --keep-qc-failed to analyse them anyway"
        )
    if max_tiles is not None and plan.n_tiles > max_tiles:
        # keep the tiles with most tissue, stable for ties, in row-major order (as plan_tiles)
        order = np.sort(np.argsort(-plan.tissue_fraction, kind="stable")[:max_tiles])
        plan = dataclasses.replace(
            plan,
            config=dataclasses.replace(plan.config, max_tiles=max_tiles),
            level0_xy=plan.level0_xy[order],
            grid_rc=plan.grid_rc[order],
            tissue_fraction=plan.tissue_fraction[order],
        )
    return plan


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none"


def read_tile(reader: SlideReader, plan: TilePlan, level0_xy: tuple[int, int] | np.ndarray) -> np.ndarray:
    """Read one tile of ``plan`` at the model's resolution.

    Reads ``plan.read_size`` pixels at ``plan.level`` and resizes once (antialiased bilinear)
    to ``plan.config.tile_size_px``.

    Args:
        reader: the slide the plan was made for.
        plan: the tile plan.
        level0_xy: top-left ``(x, y)`` of the tile in level-0 pixels (a row of ``plan.level0_xy``).

    Returns:
        ``uint8`` RGB array ``(tile_size_px, tile_size_px, 3)``.

    Raises:
        SlideOpenError: the slide data cannot be decoded.
    """
    rs = plan.read_size
    size = plan.config.tile_size_px
    xy = (int(level0_xy[0]), int(level0_xy[1]))
    # backends that can resize before converting to numpy (OpenSlide) save two copies
    return reader.read_region_resized(xy, plan.level, (rs, rs), (size, size))


# Tiles read with one read_region call at most (a run of neighbours in one grid row). Eight
# 187 px tiles are a ~1,500 x 187 px region: the per-call overhead of the backends (OpenSlide's
# region setup and tile lookups, tifffile's segment assembly) is then shared by eight tiles while
# the region stays small; longer runs measured no faster.
MAX_RUN_TILES = 8


def _run_lengths(xy: np.ndarray, stride0: int, max_run: int) -> list[tuple[int, int]]:
    """Split rows of ``xy`` into runs of horizontal neighbours: ``[(start, length), ...]``.

    A run is consecutive rows with the same ``y`` whose ``x`` grows by exactly ``stride0``.
    """
    n = xy.shape[0]
    if n == 0:
        return []
    # a break before row i where i is not the right-hand neighbour of row i - 1
    cont = (xy[1:, 1] == xy[:-1, 1]) & (xy[1:, 0] - xy[:-1, 0] == stride0)
    starts = np.flatnonzero(np.concatenate(([True], ~cont)))
    ends = np.append(starts[1:], n)
    runs: list[tuple[int, int]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        for s2 in range(s, e, max_run):
            runs.append((s2, min(max_run, e - s2)))
    return runs


def read_tiles(
    reader: SlideReader,
    plan: TilePlan,
    level0_xy: np.ndarray,
    out: np.ndarray | None = None,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """Read many tiles of ``plan``, neighbours in one grid row with one region read.

    The batch form of :func:`read_tile` used by the heatmap pipeline. Runs of up to
    :data:`MAX_RUN_TILES` horizontally adjacent tiles (plan order is row-major, so a batch is
    mostly such runs) are read as one strip. Without overlap between tiles the strip is resized
    in one call and cut; otherwise each tile is resized from its box of the strip. Pixels equal
    :func:`read_tile`'s except within one pixel of the tile edges, where the resampling filter
    sees the neighbouring tile instead of the clamped edge (a difference of resampling noise).

    Args:
        reader: the slide the plan was made for.
        plan: the tile plan.
        level0_xy: int ``(N, 2)`` top-left ``(x, y)`` of the tiles in level-0 pixels (rows of
            ``plan.level0_xy``, in any order).
        out: optional ``uint8`` ``(N, S, S, 3)`` buffer to fill, ``S = plan.config.tile_size_px``.
        check: called before every region read (e.g. to raise on cancel).

    Returns:
        ``uint8`` RGB array ``(N, S, S, 3)``, tile ``i`` for ``level0_xy[i]``.

    Raises:
        SlideOpenError: the slide data cannot be decoded.
        ValueError: ``out`` has the wrong shape or type.
    """
    from PIL import Image

    xy = np.asarray(level0_xy, dtype=np.int64).reshape(-1, 2)
    n = xy.shape[0]
    rs = plan.read_size
    size = plan.config.tile_size_px
    shape = (n, size, size, 3)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out buffer must be uint8 {shape}, got {out.dtype} {out.shape}")
    # runs need the grid step to be a whole number of pixels at the level read; otherwise
    # every tile is read on its own, exactly as read_tile places it
    step_f = plan.stride_level0 / plan.level_downsample
    step = round(step_f)
    whole_step = step >= 1 and abs(step_f - step) < 1e-9
    runs = _run_lengths(xy, plan.stride_level0, MAX_RUN_TILES if whole_step else 1)
    for start, m in runs:
        if check is not None:
            check()
        if m == 1:
            out[start] = read_tile(reader, plan, xy[start])
            continue
        x0, y0 = int(xy[start, 0]), int(xy[start, 1])
        if step == rs and rs != size:
            # adjacent tiles: one resize of the strip keeps each tile's sample positions
            # (m * rs -> m * size has the per-tile scale); the backend resizes before
            # converting to numpy where it can (see read_tile)
            wide = reader.read_region_resized((x0, y0), plan.level, (m * rs, rs), (m * size, size))
            out[start : start + m] = wide.reshape(size, m, size, 3).transpose(1, 0, 2, 3)
            continue
        strip = reader.read_region((x0, y0), plan.level, ((m - 1) * step + rs, rs))
        if rs == size:
            for j in range(m):
                out[start + j] = strip[:, j * step : j * step + rs]
        else:
            img = Image.fromarray(strip)
            for j in range(m):
                box = (j * step, 0, j * step + rs, rs)
                out[start + j] = np.asarray(img.resize((size, size), Image.BILINEAR, box=box))
    return out
