"""The heatmap of a patch classifier over a slide, built on the streaming tile pipeline.

The pipeline itself (tile reads overlapped with batched inference) is
:func:`engine.infer.stream.iter_tile_outputs`, re-exported here with its types.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, ModelPackageError, NoTissueError
from engine.infer.preprocess import to_probabilities
from engine.infer.session import DEVICES, ModelSession, available_cores, load_model
from engine.infer.stream import TileReadFn, TileScreen, iter_tile_outputs
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report
from engine.slides.damage import (
    DEFAULT_MAX_UNREADABLE,
    UnreadableLog,
    record_damaged_cells,
    validate_max_unreadable,
)
from engine.slides.qc import BlurScreen, QCSettings
from engine.slides.qc_summary import qc_summary, stain_warnings
from engine.slides.tiling import TilePlan, TissueSettings, plan_slide, slide_tissue

if TYPE_CHECKING:
    from engine.slides.base import SlideInfo, SlideReader

__all__ = [
    "BatchCallback",
    "HeatmapResult",
    "HeatmapStartCallback",
    "InferenceConfig",
    "TileReadFn",
    "TileScreen",
    "compute_heatmap",
    "device_batching",
    "iter_tile_outputs",
    "summarize",
]


# ------------------------------------------------------------------------------------ heatmap


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    """Settings of one heatmap run.

    Attributes:
        batch_size: tiles per inference call.
        read_workers: threads reading tiles while inference runs; 0 = automatic (one per core,
            2 to 8: reading is the bottleneck when a GPU does the inference).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        min_tissue_fraction: tiles with less tissue (0-1 of the tile area) are not analysed.
        stride_factor: grid step as a fraction of the tile side (1 = adjacent tiles, 0.5 = half
            overlap); within 0.1-4.
        threshold: positive-class probability at which a tile counts as positive (summary,
            GeoJSON export).
        slide_mpp: the slide's resolution (microns per level-0 pixel) to use instead of (or in
            the absence of) the file's own. The analysis resolution is the model's ``input_mpp``.
        max_tiles: analyse at most this many tiles (those with most tissue); ``None`` = all.
        top_k: number of highest-scoring tiles listed in the summary.
        max_unreadable: share of the tiles that may be undecodable (left out, reported) before
            the slide fails (0-1).
        qc: run the slide QC artefact checks (pen, fold, bubble, blur); the stain check always runs.
        keep_qc_failed: analyse tiles QC flagged anyway (they are still reported).
        ignore_stain: analyse a slide that does not look like H&E even when the model says it
            needs H&E (``extra["requires_stain"]``).
        roi: GeoJSON region of interest (QuPath annotations, level-0 px): only tiles whose centre
            lies inside are analysed; ``None``: the whole slide.
    """

    batch_size: int = 64
    read_workers: int = 0
    device: str = "auto"
    min_tissue_fraction: float = 0.25
    stride_factor: float = 1.0
    threshold: float = 0.5
    slide_mpp: float | None = None
    max_tiles: int | None = None
    top_k: int = 10
    max_unreadable: float = DEFAULT_MAX_UNREADABLE
    qc: bool = True
    keep_qc_failed: bool = False
    ignore_stain: bool = False
    roi: str | None = None

    def __post_init__(self) -> None:
        if self.roi is not None:
            if not isinstance(self.roi, (str, os.PathLike)) or not str(self.roi).strip():
                raise ConfigError(f"roi must be a GeoJSON file path or None, got {self.roi!r}")
            object.__setattr__(self, "roi", str(self.roi))
        object.__setattr__(self, "max_unreadable", validate_max_unreadable(self.max_unreadable))
        for name in ("qc", "keep_qc_failed", "ignore_stain"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        for name, lo, hi in (("batch_size", 1, 4096), ("read_workers", 0, 64), ("top_k", 0, 10_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
                raise ConfigError(f"{name} must be an integer within {lo}-{hi}, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name, lo, hi in (("min_tissue_fraction", 0.0, 1.0), ("stride_factor", 0.1, 4.0), ("threshold", 0.0, 1.0)):
            v = _as_float(name, getattr(self, name))
            if not lo <= v <= hi:
                raise ConfigError(f"{name} must be within {lo:g}-{hi:g}, got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if self.slide_mpp is not None:
            v = _as_float("slide_mpp", self.slide_mpp)
            if not v > 0:
                raise ConfigError(f"slide_mpp must be a positive number of microns per pixel, got {self.slide_mpp!r}")
            object.__setattr__(self, "slide_mpp", v)
        if self.max_tiles is not None:
            v = self.max_tiles
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"max_tiles must be a positive integer or None, got {v!r}")
            object.__setattr__(self, "max_tiles", int(v))

    @property
    def resolved_read_workers(self) -> int:
        """``read_workers``, with 0 resolved to this machine's automatic choice."""
        return self.read_workers or min(8, max(2, available_cores()))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InferenceConfig:
        """Build from :meth:`to_dict` output.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        if "mpp" in d and "slide_mpp" not in d:  # files written before the rename
            d = {("slide_mpp" if k == "mpp" else k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown inference setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def _as_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return v


@dataclass(slots=True, eq=False)
class HeatmapResult:
    """A computed (or reloaded) heatmap with everything needed to paint and export it.

    Tile ``i`` covers level-0 ``[x, x + tile_size_level0) x [y, y + tile_size_level0)`` with
    ``(x, y) = level0_xy[i]`` and sits in grid cell ``grid_rc[i]``; cell ``(r, c)`` starts at
    ``origin_level0 + (c, r) * stride_level0``.

    Attributes:
        grid: float32 ``(rows, cols)`` positive-class probability, NaN where not analysed.
        probabilities: float32 ``(N, C)`` all class probabilities per analysed tile.
        level0_xy: int64 ``(N, 2)`` tile top-left corners in level-0 pixels.
        grid_rc: int32 ``(N, 2)`` ``(row, col)`` of each tile.
        class_names: class names in column order of ``probabilities``.
        positive_class: column shown in ``grid``.
        tile_size_level0: tile side in level-0 pixels.
        stride_level0: grid step in level-0 pixels.
        origin_level0: level-0 ``(x, y)`` of cell ``(0, 0)``.
        slide_mpp: slide microns per level-0 pixel actually used.
        slide_mpp_source: ``"file"`` or ``"user"``.
        slide: slide description (path, name, dimensions, vendor, levels, ...).
        model: model identity (name, path, sha256, provider, input size and mpp).
        summary: slide-level summary (see :func:`summarize`).
        timing: seconds per stage and tiles per second.
        config: the :class:`InferenceConfig` as a dict.
        plan: the :class:`~engine.slides.tiling.TilePlan` (``None`` for a reloaded result).
    """

    grid: np.ndarray
    probabilities: np.ndarray
    level0_xy: np.ndarray
    grid_rc: np.ndarray
    class_names: tuple[str, ...]
    positive_class: int
    tile_size_level0: int
    stride_level0: int
    origin_level0: tuple[int, int]
    slide_mpp: float
    slide_mpp_source: str
    slide: dict[str, Any]
    model: dict[str, Any]
    summary: dict[str, Any]
    timing: dict[str, float]
    config: dict[str, Any]
    plan: TilePlan | None = None

    @property
    def positive_probabilities(self) -> np.ndarray:
        """float32 ``(N,)`` positive-class probability per tile."""
        return self.probabilities[:, self.positive_class]

    @property
    def slide_name(self) -> str:
        return str(self.slide.get("name") or "slide")

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.5))


HeatmapStartCallback = Callable[[TilePlan, np.ndarray], None]
BatchCallback = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def compute_heatmap(
    slide: str | os.PathLike[str] | SlideReader,
    model: str | os.PathLike[str] | ModelSession,
    cfg: InferenceConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_batch: BatchCallback | None = None,
    on_start: HeatmapStartCallback | None = None,
) -> HeatmapResult:
    """Compute the heatmap of a patch classifier over a slide.

    Args:
        slide: slide path (opened and closed here) or an open reader.
        model: model package path or a loaded :class:`ModelSession`.
        cfg: settings (defaults: :class:`InferenceConfig`).
        progress: stages ``"tissue"``, ``"tiling"``, ``"heatmap"`` (per batch: tiles done/total).
        cancel: checked per tile read and per batch.
        on_batch: ``fn(rows, cols, probs)`` after each batch: int ``(B,)`` grid rows and columns
            and float32 ``(B,)`` positive-class probabilities (already stored in the grid).
        on_start: ``fn(plan, grid)`` once the tiles are planned, with the NaN-filled float32
            ``(rows, cols)`` grid that is then filled in place batch by batch (a viewer can keep
            a reference and paint partial results).

    Returns:
        The :class:`HeatmapResult`.

    Raises:
        SlideOpenError, MissingMppError, NoTissueError, ModelPackageError, ConfigError: bad input.
        Cancelled: ``cancel`` was set.
    """
    cfg = cfg or InferenceConfig()
    t_start = time.perf_counter()
    session = model if isinstance(model, ModelSession) else load_model(model, cfg.device)
    meta = session.metadata
    if meta.task != "patch_classification":
        raise ModelPackageError(
            f"{session.path.name} is a {meta.task.replace('_', ' ')} model; a heatmap needs a patch classification model"
        )
    with ExitStack() as stack:
        if isinstance(slide, (str, os.PathLike)):
            from engine.slides.open import open_slide

            reader = stack.enter_context(open_slide(slide, mpp=cfg.slide_mpp))
        else:
            reader = slide
        info = reader.info
        # a model without a recorded resolution is run at the slide's own resolution
        if meta.input_mpp is not None:
            mpp = meta.input_mpp
        else:
            mpp = cfg.slide_mpp if cfg.slide_mpp is not None else info.mpp_or(None)
        tissue_settings = TissueSettings(min_fraction=cfg.min_tissue_fraction)

        check_cancel(cancel)
        report(progress, ProgressEvent("tissue", 0, 1, "detecting tissue"))
        t0 = time.perf_counter()
        tissue = slide_tissue(reader, meta.input_size, mpp, tissue_settings)
        if tissue.is_empty:
            raise NoTissueError(f"{info.name}: no tissue found on the slide")
        report(progress, ProgressEvent("tissue", 1, 1, f"{tissue.tissue_fraction:.0%} of the slide is tissue"))
        t_tissue = time.perf_counter() - t0

        check_cancel(cancel)
        t0 = time.perf_counter()
        qc_settings = QCSettings(enabled=cfg.qc, keep_failed=cfg.keep_qc_failed)
        plan = plan_slide(
            reader,
            meta.input_size,
            mpp,
            tissue_settings,
            stride=max(1, round(meta.input_size * cfg.stride_factor)),
            max_tiles=cfg.max_tiles,
            slide_mpp=cfg.slide_mpp,
            mask=tissue,
            qc=qc_settings,
            roi=cfg.roi,
        )
        t_plan = time.perf_counter() - t0
        warnings = stain_warnings(plan.qc.stain, meta, session.path.name, info.name, cfg.ignore_stain)
        for w in warnings:
            report(progress, ProgressEvent("qc", 1, 1, f"warning: {w}"))
        report(progress, ProgressEvent("tiling", 1, 1, f"{plan.n_tiles} tiles with tissue"))
        unreadable = UnreadableLog(plan.n_tiles, cfg.max_unreadable, info.name)
        record_damaged_cells(plan, unreadable)
        blur = BlurScreen(qc_settings.blur_threshold, keep=cfg.keep_qc_failed) if cfg.qc else None

        n = plan.n_tiles
        n_classes = len(meta.class_names)
        pos = meta.positive_class
        grid = np.full(plan.grid_shape, np.nan, dtype=np.float32)
        probs_all = np.full((n, n_classes), np.nan, dtype=np.float32)
        rows = plan.grid_rc[:, 0]
        cols = plan.grid_rc[:, 1]
        if on_start is not None:
            on_start(plan, grid)

        t0 = time.perf_counter()
        batch_size, read_workers = device_batching(session, cfg)
        for idx, outputs in iter_tile_outputs(
            reader,
            plan,
            session,
            batch_size=batch_size,
            read_workers=read_workers,
            progress=progress,
            cancel=cancel,
            stage="heatmap",
            unreadable=unreadable,
            screen=blur,
        ):
            probs = to_probabilities(outputs, meta)
            if probs.shape != (len(idx), n_classes):
                raise ModelPackageError(
                    f"{session.path.name}: output shape {outputs.shape} does not match {n_classes} classes"
                )
            probs_all[idx] = probs
            r, c, p = rows[idx], cols[idx], probs[:, pos]
            grid[r, c] = p
            if on_batch is not None:
                on_batch(r, c, p)
        t_infer = time.perf_counter() - t0

    tile_area_mm2 = (plan.stride_level0 * plan.slide_mpp / 1000.0) ** 2
    summary = summarize(
        probs_all[:, pos],
        plan.level0_xy,
        plan.grid_rc,
        plan.tile_size_level0,
        cfg.threshold,
        cfg.top_k,
        tissue_area_mm2=tissue.area_mm2(plan.slide_mpp),
        tile_area_mm2=tile_area_mm2,
    )
    summary["tissue_tiles"] = int(plan.tissue_cells)
    summary["positive_class"] = meta.positive_class_name
    summary.update(qc_summary(plan, unreadable, blur, warnings))
    total = time.perf_counter() - t_start
    return HeatmapResult(
        grid=grid,
        probabilities=probs_all,
        level0_xy=plan.level0_xy,
        grid_rc=plan.grid_rc,
        class_names=tuple(meta.class_names),
        positive_class=pos,
        tile_size_level0=plan.tile_size_level0,
        stride_level0=plan.stride_level0,
        origin_level0=(int(plan.origin_level0[0]), int(plan.origin_level0[1])),
        slide_mpp=float(plan.slide_mpp),
        slide_mpp_source="user" if plan.slide_mpp_from_user else "file",
        slide=_slide_dict(info, reader),
        model={
            **session.describe(),
            "input_size": meta.input_size,
            "input_mpp": meta.input_mpp,
            "mpp": mpp,
            "effective_mpp": plan.effective_mpp,
        },
        summary=summary,
        timing={
            "tissue_s": round(t_tissue, 4),
            "plan_s": round(t_plan, 4),
            "inference_s": round(t_infer, 4),
            "total_s": round(total, 4),
            "tiles_per_s": round(n / t_infer, 2) if t_infer > 0 else 0.0,
        },
        config=cfg.to_dict(),
        plan=plan,
    )


def device_batching(session: ModelSession, cfg: InferenceConfig) -> tuple[int, int]:
    """``(batch_size, read_workers)`` for the session's device: the configured ones on the CPU;
    on CUDA a batch sized for the GPU and (automatic choice) a reader thread per core but one."""
    if session.io_binding is None:
        return cfg.batch_size, cfg.resolved_read_workers
    from engine.infer.gpu import choose_read_workers

    workers = choose_read_workers("cuda", cfg.read_workers, cfg.resolved_read_workers, available_cores())
    return session.batch_size_for(cfg.batch_size), workers


def _slide_dict(info: SlideInfo, reader: SlideReader) -> dict[str, Any]:
    from engine.slides.fast_reader import reader_backend

    return {
        "path": info.path,
        "name": info.name,
        "vendor": info.vendor,
        "dimensions": list(info.dimensions),
        "level_count": info.level_count,
        "mpp": list(info.mpp) if info.mpp is not None else None,
        "objective_power": info.objective_power,
        # which backend decoded the pixels (tifffile where proven identical to OpenSlide)
        "reader": reader_backend(reader),
    }


def summarize(
    positive: np.ndarray,
    level0_xy: np.ndarray,
    grid_rc: np.ndarray,
    tile_size_level0: int,
    threshold: float,
    top_k: int,
    tissue_area_mm2: float,
    tile_area_mm2: float,
) -> dict[str, Any]:
    """Slide-level summary of per-tile positive probabilities.

    Args:
        positive: float32 ``(N,)`` positive-class probability per tile (NaN = not analysed).
        level0_xy: ``(N, 2)`` tile corners; grid_rc: ``(N, 2)`` grid cells.
        tile_size_level0: tile side in level-0 px.
        threshold: probability at which a tile counts as positive.
        top_k: how many highest tiles to list.
        tissue_area_mm2: tissue area from the tissue mask.
        tile_area_mm2: area one grid cell stands for (stride squared), to estimate positive area.

    Returns:
        JSON-ready dict: ``max_probability``, ``mean_probability``, ``tiles_analysed``,
        ``tiles_above_threshold``, ``fraction_above_threshold`` (of analysed tissue tiles),
        ``positive_area_mm2``, ``tissue_area_mm2``, ``threshold``, ``top_tiles`` (list of
        ``{x, y, width, height, row, col, probability}``, highest first).
    """
    p = np.asarray(positive, dtype=np.float32)
    done = np.isfinite(p)
    n = int(done.sum())
    vals = p[done]
    above = int((vals >= threshold).sum())
    top: list[dict[str, Any]] = []
    if n and top_k:
        idx_done = np.flatnonzero(done)
        k = min(top_k, n)
        best = idx_done[np.argsort(-vals, kind="stable")[:k]]
        for i in best:
            top.append(
                {
                    "x": int(level0_xy[i, 0]),
                    "y": int(level0_xy[i, 1]),
                    "width": int(tile_size_level0),
                    "height": int(tile_size_level0),
                    "row": int(grid_rc[i, 0]),
                    "col": int(grid_rc[i, 1]),
                    "probability": round(float(p[i]), 6),
                }
            )
    return {
        "max_probability": round(float(vals.max()), 6) if n else None,
        "mean_probability": round(float(vals.mean()), 6) if n else None,
        "tiles_analysed": n,
        "tiles_above_threshold": above,
        "fraction_above_threshold": round(above / n, 6) if n else 0.0,
        "positive_area_mm2": round(above * tile_area_mm2, 6),
        "tissue_area_mm2": round(float(tissue_area_mm2), 6),
        "threshold": float(threshold),
        "top_tiles": top,
    }
