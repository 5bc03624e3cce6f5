"""Feature extraction for MIL: embed every tissue (or ROI) tile of each slide, one HDF5 per slide.

The backbone is a MetaScope model package: a ``feature_extractor`` (its output is the
embedding), or a ``patch_classification`` model whose graph also exposes its penultimate layer
as an output named ``features`` / ``embedding``. Tiles are planned and read exactly as for
heatmaps and run through the same streaming pipeline (:func:`engine.infer.pipeline.iter_tile_outputs`).

Cohort extraction is resumable and never reuses a stale bag: every bag records a fingerprint of
everything that changes it (:func:`bag_fingerprint`: extractor sha256, mpp, tile size, tissue
settings, tile cap, ROI file hash, slide file size and mtime); a slide whose bag has the same
fingerprint is skipped, one whose settings changed is recomputed and reported. Extraction is
cancellable, and robust: a slide that does not open or has no tissue is reported and the others
continue. ``FEATURES_DIR/extraction.json`` records the outcome.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, MetaScopeError, ModelPackageError, NoTissueError
from engine.fileio import atomic_write_json, ensure_writable_dir
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report
from engine.mil.bags import Bag, bag_path, fingerprint_changes, write_bag
from engine.mil.cohort import Cohort, CohortEntry
from engine.slides.tiling import TISSUE_MASK_PX_PER_TILE, TissueSettings

if TYPE_CHECKING:
    from engine.infer.session import ModelSession
    from engine.modelpkg import ModelMetadata
    from engine.slides.base import SlideReader
    from engine.slides.tiling import TilePlan

#: Output names under which a patch classifier may expose its penultimate layer.
FEATURE_OUTPUT_NAMES = ("features", "embedding", "embeddings", "penultimate")


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How tiles are cut and embedded.

    Attributes:
        tile_size: model input side in pixels; ``None``: the extractor's ``input_size``.
        mpp: analysis resolution (microns per pixel); ``None``: the extractor's ``input_mpp``.
        min_tissue_fraction: tiles with less tissue (0-1) are skipped.
        max_tiles: cap per slide (the tiles with most tissue are kept); ``None``: no cap.
        batch_size: tiles per inference call.
        read_workers: tile-reading threads.
        device: ``auto``, ``cpu`` or ``cuda`` (onnxruntime).
        slide_mpp: level-0 resolution for slides that do not record one.
        mask_px_per_tile: tissue-mask pixels per tile side (see :class:`~engine.slides.tiling.TissueSettings`).
        qc: leave out tiles slide QC flags (pen, fold, bubble, blur; :mod:`engine.slides.qc`).
        keep_qc_failed: embed flagged tiles anyway.
        max_unreadable: share of a slide's tiles that may be undecodable (left out) before it fails.
    """

    tile_size: int | None = None
    mpp: float | None = None
    min_tissue_fraction: float = 0.25
    max_tiles: int | None = None
    batch_size: int = 64
    read_workers: int = 2
    device: str = "auto"
    slide_mpp: float | None = None
    mask_px_per_tile: int = TISSUE_MASK_PX_PER_TILE
    qc: bool = True
    keep_qc_failed: bool = False
    max_unreadable: float = 0.05

    def __post_init__(self) -> None:
        from engine.slides.damage import validate_max_unreadable

        object.__setattr__(self, "max_unreadable", validate_max_unreadable(self.max_unreadable))
        if self.tile_size is not None and not 8 <= int(self.tile_size) <= 4096:
            raise ConfigError(f"tile size must be 8-4096 px, got {self.tile_size}")
        for name in ("mpp", "slide_mpp"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(float(v)) and float(v) > 0):
                raise ConfigError(f"{name} must be a positive number of microns per pixel, got {v!r}")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ConfigError(f"min_tissue_fraction must be within 0-1, got {self.min_tissue_fraction}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ConfigError(f"max_tiles must be >= 1, got {self.max_tiles}")
        if self.batch_size < 1 or self.read_workers < 1:
            raise ConfigError("batch_size and read_workers must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        self.tissue_settings()  # validates min_tissue_fraction and mask_px_per_tile

    def tissue_settings(self) -> TissueSettings:
        return TissueSettings(min_fraction=self.min_tissue_fraction, mask_px_per_tile=self.mask_px_per_tile)

    def bag_settings(self) -> dict[str, Any]:
        """The settings besides extractor, mpp and tile size that change a bag (they are embedded
        in an exported MIL model so prediction tiles slides exactly as training did)."""
        out: dict[str, Any] = {
            "min_tissue_fraction": float(self.min_tissue_fraction),
            "max_tiles": self.max_tiles,
            "mask_px_per_tile": int(self.mask_px_per_tile),
        }
        # slide QC settings only when they differ from the defaults (QC on, flagged tiles out)
        if not self.qc:
            out["qc"] = False
        if self.keep_qc_failed:
            out["keep_qc_failed"] = True
        return out

    def qc_settings(self) -> Any:
        """The :class:`engine.slides.qc.QCSettings` of these settings."""
        from engine.slides.qc import QCSettings

        return QCSettings(enabled=self.qc, keep_failed=self.keep_qc_failed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"invalid feature extraction settings: {exc}") from exc


class Extractor:
    """A loaded backbone: runs preprocessed tile batches and returns ``(B, D)`` embeddings.

    Quacks like :class:`engine.infer.session.ModelSession` for the pipeline (``metadata``,
    ``run``), whichever output holds the embedding.
    """

    def __init__(self, session: ModelSession, output_name: str) -> None:
        self.session = session
        self.output_name = output_name
        self.metadata: ModelMetadata = session.metadata
        self.sha256 = session.sha256
        self.name = session.name
        shape = next(o.shape for o in session.session.get_outputs() if o.name == output_name)
        dim = shape[-1] if shape and isinstance(shape[-1], int) else session.metadata.feature_dim
        if not dim:
            raise ModelPackageError(
                f"{session.path.name}: cannot tell the feature size (set feature_dim in the metadata)"
            )
        self.feature_dim = int(dim)
        self.input = session.input

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(B, D)`` embeddings of a preprocessed batch."""
        if self.output_name == self.session.output_name:
            out = self.session.run(batch)
        else:
            out = self.session.session.run([self.output_name], {self.session.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32).reshape(batch.shape[0], -1)

    @property
    def intra_op_threads(self) -> int:
        return self.session.intra_op_threads

    def worker_copy(self) -> Extractor | None:
        """This backbone on fewer onnxruntime threads (:meth:`ModelSession.worker_copy`): the
        pipeline then runs one batch per core; ``None`` where that does not apply."""
        copy = self.session.worker_copy()
        return None if copy is None else Extractor(copy, self.output_name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "output": self.output_name, "feature_dim": self.feature_dim}


def load_extractor(
    path: str | os.PathLike[str], device: str = "auto", intra_op_threads: int | None = None
) -> Extractor:
    """Load a backbone package (feature extractor, or patch classifier exposing its features).

    ``intra_op_threads``: onnxruntime CPU threads (default: all cores of this process).

    Raises:
        ModelPackageError: not a usable backbone (e.g. a MIL aggregator, or a patch model with no
        feature output).
    """
    from engine.infer.session import load_model

    session = load_model(path, device=device, intra_op_threads=intra_op_threads)
    task = session.metadata.task
    if task == "feature_extractor":
        return Extractor(session, session.output_name)
    if task == "patch_classification":
        outputs = [o.name for o in session.session.get_outputs()]
        for name in FEATURE_OUTPUT_NAMES:
            if name in outputs:
                return Extractor(session, name)
        raise ModelPackageError(
            f"{Path(path).name} is a patch classifier without a feature output (one of "
            f"{', '.join(FEATURE_OUTPUT_NAMES)}); export its feature extractor as a package with task 'feature_extractor'"
        )
    raise ModelPackageError(f"{Path(path).name} is a {task} model, not a feature extractor")


def resolve_tiling(extractor: Extractor, cfg: FeatureConfig) -> tuple[int, float]:
    """``(tile_size, mpp)`` from the config, else from the extractor's metadata.

    Raises:
        ConfigError: no resolution known.
    """
    size = int(cfg.tile_size or extractor.metadata.input_size)
    mpp = cfg.mpp if cfg.mpp is not None else extractor.metadata.input_mpp
    if mpp is None:
        raise ConfigError(f"{extractor.name} does not record the resolution it expects; pass --mpp")
    return size, float(mpp)


# -- one slide -------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a (small) file, e.g. a GeoJSON ROI."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bag_fingerprint(
    extractor_sha256: str,
    tile_size: int,
    mpp: float,
    cfg: FeatureConfig,
    slide_path: str | os.PathLike[str] | None,
    roi: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Everything that changes a slide's bag: a bag is reused only when this matches exactly.

    Returns:
        JSON-ready dict: extractor sha256, ``mpp``, ``tile_size``, the tissue settings and tile cap
        (:meth:`FeatureConfig.bag_settings`), ``slide_mpp`` (a user-given slide resolution),
        ``roi_sha256`` (``""`` without a ROI), ``slide_size`` and ``slide_mtime_ns`` (``None``
        for an in-memory slide).

    Raises:
        DatasetError: the ROI file cannot be read.
    """
    from engine.errors import DatasetError

    size = mtime = None
    if slide_path:
        try:
            st = os.stat(slide_path)
            size, mtime = int(st.st_size), int(st.st_mtime_ns)
        except OSError:
            pass  # opening the slide reports it
    roi_hash = ""
    if roi is not None:
        try:
            roi_hash = file_sha256(roi)
        except OSError as exc:
            raise DatasetError(f"cannot read the region of interest {roi}: {exc.strerror or exc}") from exc
    return {
        "extractor_sha256": extractor_sha256,
        "mpp": float(mpp),
        "tile_size": int(tile_size),
        **cfg.bag_settings(),
        "slide_mpp": float(cfg.slide_mpp) if cfg.slide_mpp is not None else None,
        "roi_sha256": roi_hash,
        "slide_size": size,
        "slide_mtime_ns": mtime,
    }


def plan_slide(
    reader: SlideReader, tile_size: int, mpp: float, cfg: FeatureConfig, roi: str | os.PathLike[str] | None = None
) -> TilePlan:
    """Tissue tiles of a slide (restricted to the ROI polygons when given), planned by
    :func:`engine.slides.tiling.plan_slide` exactly as for heatmaps.

    Raises:
        NoTissueError: no tissue (or no tissue inside the ROI).
        MissingMppError: the slide has no resolution and ``cfg.slide_mpp`` is not set.
    """
    from engine.slides.tiling import plan_slide as plan

    return plan(
        reader,
        tile_size,
        mpp,
        cfg.tissue_settings(),
        roi=roi,
        max_tiles=cfg.max_tiles,
        slide_mpp=cfg.slide_mpp,
        qc=cfg.qc_settings(),
    )


def extract_slide(
    reader: SlideReader,
    extractor: Extractor,
    cfg: FeatureConfig,
    roi: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    stage: str = "features",
) -> Bag:
    """Embed the tissue tiles of one open slide.

    Returns:
        The :class:`~engine.mil.bags.Bag` (features ``(N, D)``, level-0 coords, grid cells, attrs).

    Raises:
        NoTissueError: nothing to embed; Cancelled: ``cancel`` was set.
    """
    from engine.errors import NoTissueError
    from engine.infer.pipeline import iter_tile_outputs
    from engine.slides.damage import UnreadableLog, record_damaged_cells
    from engine.slides.qc import BlurScreen

    tile_size, mpp = resolve_tiling(extractor, cfg)
    plan = plan_slide(reader, tile_size, mpp, cfg, roi)
    feats = np.empty((plan.n_tiles, extractor.feature_dim), dtype=np.float32)
    done = np.zeros(plan.n_tiles, dtype=bool)
    # undecodable tiles are left out of the bag (the slide fails above cfg.max_unreadable);
    # blurred tiles too unless kept (the thumbnail QC already left out pen, folds and bubbles)
    unreadable = UnreadableLog(plan.n_tiles, cfg.max_unreadable, reader.info.name)
    record_damaged_cells(plan, unreadable)
    blur = BlurScreen(keep=cfg.keep_qc_failed) if cfg.qc else None
    for idx, out in iter_tile_outputs(
        reader,
        plan,
        extractor,
        batch_size=cfg.batch_size,
        read_workers=cfg.read_workers,
        progress=progress,
        cancel=cancel,
        stage=stage,
        unreadable=unreadable,
        screen=blur,
    ):
        feats[idx] = out
        done[idx] = True
    if not done.any():
        raise NoTissueError(f"{reader.info.name}: no tile left to embed after slide QC")
    qc_excluded = int(plan.qc.excluded.sum()) if plan.qc is not None else 0
    qc_excluded += int(blur.blurred_rows().size) if blur is not None and not blur.keep else 0
    attrs = {
        "extractor_sha256": extractor.sha256,
        "extractor_name": extractor.name,
        "mpp": mpp,
        "tile_size": tile_size,
        "tile_size_level0": plan.tile_size_level0,
        "stride_level0": plan.stride_level0,
        "origin_level0": list(plan.origin_level0),
        "grid_shape": list(plan.grid_shape),
        "slide_path": reader.info.path,
        "slide_dimensions": list(plan.slide_dimensions),
        "slide_mpp": plan.slide_mpp,
        "effective_mpp": plan.effective_mpp,
        "roi": str(roi) if roi is not None else "",
        "unreadable_tiles": int(unreadable.count),
        "qc_excluded_tiles": qc_excluded,
        "fingerprint": json.dumps(
            bag_fingerprint(extractor.sha256, tile_size, mpp, cfg, reader.info.path or None, roi), sort_keys=True
        ),
    }
    if done.all():
        return Bag(feats, plan.level0_xy.astype(np.int64), plan.grid_rc.astype(np.int64), attrs)
    return Bag(feats[done], plan.level0_xy[done].astype(np.int64), plan.grid_rc[done].astype(np.int64), attrs)


# -- a cohort ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ExtractionReport:
    """Outcome of :func:`extract_cohort` per slide id: ``done``, ``skipped`` (a bag with the same
    fingerprint exists), ``recomputed`` (a bag existed but a setting changed: which ones; these are
    also in ``done`` once extracted), ``no_tissue`` and ``failed`` (with the reason)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    recomputed: dict[str, str] = field(default_factory=dict)
    no_tissue: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    tiles: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"extracted {len(self.done)} slides ({self.tiles} tiles, {self.seconds:.1f} s), "
            f"{len(self.skipped)} already done, {len(self.no_tissue)} without tissue, {len(self.failed)} failed"
        ]
        out += [f"  recomputed (settings changed: {v}): {k}" for k, v in self.recomputed.items()]
        out += [f"  no tissue: {k}: {v}" for k, v in self.no_tissue.items()]
        out += [f"  failed: {k}: {v}" for k, v in self.failed.items()]
        return out


@dataclass(frozen=True, slots=True)
class SlideExtraction:
    """Outcome of :func:`extract_entry` for one slide: ``status`` is ``done``, ``skipped``,
    ``no_tissue`` or ``failed`` (``detail`` says why); ``recomputed`` names the settings that
    changed when an older bag was replaced."""

    slide_id: str
    status: str
    detail: str = ""
    recomputed: str = ""
    tiles: int = 0

    def add_to(self, rep: ExtractionReport) -> None:
        """Record this outcome in a cohort's report."""
        if self.recomputed:
            rep.recomputed[self.slide_id] = self.recomputed
        if self.status == "done":
            rep.done.append(self.slide_id)
            rep.tiles += self.tiles
        elif self.status == "skipped":
            rep.skipped.append(self.slide_id)
        elif self.status == "no_tissue":
            rep.no_tissue[self.slide_id] = self.detail
        else:
            rep.failed[self.slide_id] = self.detail


def extract_entry(
    entry: CohortEntry,
    ex: Extractor,
    cfg: FeatureConfig,
    out: Path,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SlideExtraction:
    """Extract one cohort slide into ``out/<slide_id>.h5`` unless a bag with the same
    fingerprint is there. The one per-slide step of :func:`extract_cohort` and of a cohort on Ray.

    Raises:
        Cancelled: ``cancel`` was set (nothing is written).
    """
    from engine.slides.open import open_slide

    tile_size, mpp = resolve_tiling(ex, cfg)
    sid = entry.slide_id
    target = bag_path(out, sid)
    try:
        fp = bag_fingerprint(ex.sha256, tile_size, mpp, cfg, entry.slide_path, entry.roi_path)
    except MetaScopeError as exc:  # unreadable ROI
        return SlideExtraction(sid, "failed", str(exc))
    changed = fingerprint_changes(target, fp)
    if changed == []:
        return SlideExtraction(sid, "skipped")
    recomputed = ", ".join(changed) if changed else ""
    try:
        with open_slide(entry.slide_path, mpp=cfg.slide_mpp) as reader:
            bag = extract_slide(reader, ex, cfg, entry.roi_path, progress, cancel)
    except NoTissueError as exc:
        return SlideExtraction(sid, "no_tissue", str(exc), recomputed)
    except MetaScopeError as exc:  # does not open, no resolution, unreadable ROI, ...
        return SlideExtraction(sid, "failed", str(exc), recomputed)
    except (OSError, ValueError) as exc:  # a damaged slide can fail inside a decoder mid-read
        return SlideExtraction(sid, "failed", f"{type(exc).__name__}: {exc}", recomputed)
    bag.attrs["slide_id"] = sid
    bag.attrs["fingerprint"] = json.dumps(fp, sort_keys=True)
    write_bag(target, bag)
    return SlideExtraction(sid, "done", recomputed=recomputed, tiles=bag.n)


def extract_cohort(
    cohort: Cohort,
    extractor: Extractor | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: FeatureConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ExtractionReport:
    """Extract features for every slide of ``cohort`` into ``out_dir/<slide_id>.h5``.

    Args:
        cohort: the validated cohort (only its usable slides are processed).
        extractor: a loaded :class:`Extractor` or the path of its package.
        out_dir: features folder (created).
        cfg: tiling and runtime settings.
        progress: ``ProgressEvent("features", slides_done, n_slides, "<slide>: t/T tiles")``.
        cancel: checked per tile batch; the slide in progress is not written.

    Returns:
        The :class:`ExtractionReport` (also written to ``out_dir/extraction.json``).

    Raises:
        Cancelled: ``cancel`` was set (finished slides are kept; run again to resume).
    """
    cfg = cfg or FeatureConfig()
    ex = extractor if isinstance(extractor, Extractor) else load_extractor(extractor, cfg.device)
    resolve_tiling(ex, cfg)  # no resolution: fail before the first slide
    out = ensure_writable_dir(out_dir)
    rep = ExtractionReport()
    t0 = time.perf_counter()
    n = len(cohort.entries)
    for i, e in enumerate(cohort.entries):
        check_cancel(cancel)

        def tile_progress(ev: ProgressEvent, _i: int = i, _sid: str = e.slide_id) -> None:
            report(progress, ProgressEvent("features", _i, n, f"{_sid}: {ev.step}/{ev.total} tiles", ev.metrics))

        r = extract_entry(e, ex, cfg, out, tile_progress, cancel)
        r.add_to(rep)
        report(progress, ProgressEvent("features", i + 1, n, f"{e.slide_id}: already done" if r.status == "skipped" else e.slide_id))
    rep.seconds = time.perf_counter() - t0
    write_extraction_record(out, ex, cfg, cohort, rep)
    return rep


def write_extraction_record(out: Path, ex: Extractor, cfg: FeatureConfig, cohort: Cohort, rep: ExtractionReport) -> None:
    """``out/extraction.json``: extractor, tiling, settings and the cohort's outcome."""
    tile_size, mpp = resolve_tiling(ex, cfg)
    atomic_write_json(
        out / "extraction.json",
        {
            "extractor": ex.describe(),
            "tile_size": tile_size,
            "mpp": mpp,
            "settings": cfg.to_dict(),
            "manifest": str(cohort.manifest),
            **rep.to_dict(),
        },
    )
