"""Patches cut from whole-slide images with QuPath GeoJSON annotations.

Each slide is tiled at the chosen resolution and patch size; a patch takes the class of the
annotation under its centre region (PCam's rule: the centre 32x32 px of a 96 px patch), and
unannotated tissue can serve as a background class. Patches are grouped by slide, so grouped
splits never put one slide on both sides.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.base import PCAM_MPP, PatchDataset, check_mpp, infer_positive_class, sort_class_names
from engine.data.tables import GROUP_COLUMNS, find_column, read_table
from engine.errors import DatasetError, MetaScopeError
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report

SLIDE_EXTS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide", ".dcm", ".png", ".jpg", ".jpeg")
ANNOTATION_EXTS = (".geojson", ".json")
RULES = ("any", "majority")
# mask pixels across the centre region when rasterising annotations (coverage precision)
_MASK_PX_PER_CENTRE = 8


def _pair_folder(folder: Path) -> tuple[list[tuple[Path, Path, str | None, float | None]], list[str]]:
    """Pair ``X.geojson`` (or ``X.svs.geojson``) with slide ``X.<ext>`` in ``folder``."""
    files = {e.name: Path(e.path) for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")}
    lower = {n.lower(): n for n in files}
    slides_by_stem: dict[str, str] = {}
    for n in sorted(files):
        if n.lower().endswith(SLIDE_EXTS):
            slides_by_stem.setdefault(Path(n).stem, n)
    pairs = []
    used: set[str] = set()
    for n in sorted(files):
        if not n.lower().endswith(ANNOTATION_EXTS):
            continue
        stem = n[: n.rfind(".")]
        slide_name = lower.get(stem.lower()) if stem.lower().endswith(SLIDE_EXTS) else slides_by_stem.get(stem)
        if slide_name is not None:
            pairs.append((files[slide_name], files[n], None, None))
            used.add(slide_name)
    unpaired = [n for n in slides_by_stem.values() if n not in used and not n.lower().endswith((".png", ".jpg", ".jpeg"))]
    warnings = [f"{len(unpaired)} slides have no annotation file and are ignored: {', '.join(unpaired[:3])}"] if unpaired else []
    return pairs, warnings


def _read_manifest(path: Path) -> list[tuple[Path, Path, str | None, float | None]]:
    header, rows = read_table(path)
    s_col = find_column(header, None, ("slide", "slide_path", "image"))
    a_col = find_column(header, None, ("annotations", "annotation", "geojson"))
    if s_col is None or a_col is None:
        raise DatasetError(f"manifest {path} needs 'slide' and 'annotations' columns (columns: {', '.join(header)})")
    g_col = find_column(header, None, GROUP_COLUMNS[:2] + ("patient_id", "case", "case_id"))
    m_col = find_column(header, None, ("mpp", "slide_mpp"))
    out = []
    for r in rows:
        r = r + [""] * (len(header) - len(r))

        def resolve(v: str) -> Path:
            p = Path(v).expanduser()
            return p if p.is_absolute() else path.parent / p

        mpp = None
        if m_col is not None and r[m_col]:
            mpp = check_mpp(r[m_col])
        out.append((resolve(r[s_col]), resolve(r[a_col]), r[g_col] if g_col is not None and r[g_col] else None, mpp))
    if not out:
        raise DatasetError(f"manifest {path} lists no slides")
    return out


class AnnotatedSlideDataset(PatchDataset):
    """Patches cut from annotated slides (see :func:`open_annotated_slides`).

    Attributes beyond :class:`PatchDataset`:
        slide_paths: the slides, indexed by ``slide_index``.
        slide_index: ``int64`` ``(N,)`` slide of each patch.
        level0_xy: ``int64`` ``(N, 2)`` top-left corner of each patch in level-0 pixels.
    """

    hashing_is_cheap = False

    def __init__(
        self,
        *,
        source: str,
        slide_paths: list[str],
        slide_mpps: list[float | None],
        plans: list[Any],
        slide_index: np.ndarray,
        level0_xy: np.ndarray,
        labels: np.ndarray,
        class_names: tuple[str, ...],
        positive_class: int,
        groups: np.ndarray,
        mpp: float,
        mpp_source: str,
        size: int,
        open_warnings: Sequence[str],
        per_slide: dict[str, dict[str, int]],
    ) -> None:
        self.fmt = "annotated_slides"
        self.source = source
        self.slide_paths = slide_paths
        self._slide_mpps = slide_mpps
        self._plans = plans
        self.slide_index = slide_index
        self.level0_xy = level0_xy
        self.labels = labels
        self.class_names = class_names
        self.positive_class = positive_class
        self.groups = groups
        self.mpp = mpp
        self.mpp_source = mpp_source
        self.patch_size = (size, size)
        self.paths = None
        self.open_warnings = tuple(open_warnings)
        self.per_slide = per_slide
        stems = [Path(p).stem for p in slide_paths]
        self.ids = [f"{stems[s]}_{x}_{y}" for s, (x, y) in zip(slide_index.tolist(), level0_xy.tolist(), strict=True)]
        self._lock = threading.Lock()
        self._readers: dict[int, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = {}
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.labels)

    def _reader(self, s: int) -> Any:
        from engine.slides.open import open_slide

        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's file handles are not ours
                self._readers = {}
                self._pid = os.getpid()
            reader = self._readers.get(s)
            if reader is None:
                try:
                    reader = open_slide(self.slide_paths[s], self._slide_mpps[s], probe=False)
                except MetaScopeError as exc:
                    raise DatasetError(str(exc)) from None
                self._readers[s] = reader
            return reader

    def read(self, i: int) -> np.ndarray:
        from engine.slides.tiling import read_tile

        s = int(self.slide_index[i])
        try:
            return read_tile(self._reader(s), self._plans[s], self.level0_xy[i])
        except DatasetError:
            raise
        except MetaScopeError as exc:
            raise DatasetError(f"cannot read patch {self.ids[i]}: {exc}") from None

    def close(self) -> None:
        """Close the slides opened by this process."""
        with self._lock:
            for r in self._readers.values():
                r.close()
            self._readers = {}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["slides"] = self.per_slide
        return out


def _label_cells(
    cover: dict[str, np.ndarray], names: list[str], positive: str | None, rule: str, min_coverage: float
) -> tuple[np.ndarray, np.ndarray]:
    """Class index per cell from centre coverages; ``(labels, annotated)`` where ``annotated``
    marks cells whose centre touches any annotation (labelled or ambiguous)."""
    n = len(next(iter(cover.values())))
    stack = np.stack([cover.get(c, np.zeros(n, np.float32)) for c in names], axis=1)  # N x K
    touched = stack.max(axis=1) > 1e-6
    labels = np.full(n, -1, np.int64)
    best = stack.argmax(axis=1)
    if rule == "any":
        ok = stack.max(axis=1) > max(min_coverage, 1e-6)
        labels[ok] = best[ok]
        if positive is not None and positive in names:
            k = names.index(positive)
            labels[stack[:, k] > max(min_coverage, 1e-6)] = k
    else:
        ok = stack.max(axis=1) >= max(min_coverage, 0.5)
        labels[ok] = best[ok]
    return labels, touched


def open_annotated_slides(
    path: Path,
    *,
    labelled: bool = True,
    mpp: float | None = None,
    size: int = 96,
    center: int | None = None,
    stride: int | None = None,
    rule: str = "any",
    min_coverage: float = 0.0,
    background: str | None = None,
    min_tissue: float = 0.5,
    max_per_slide: int | None = None,
    class_names: Sequence[str] | None = None,
    positive_class: str | int | None = None,
    slide_mpp: float | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    qc: bool = True,
    keep_qc_failed: bool = False,
    max_unreadable: float = 0.05,
) -> AnnotatedSlideDataset:
    """Cut labelled patches from slides with QuPath GeoJSON annotations.

    Args:
        path: a folder of slides with ``<slide>.geojson`` next to each, or a CSV manifest with
            ``slide,annotations`` columns (optional ``patient`` and ``mpp`` columns).
        labelled: must be True (slides for prediction go through the heatmap pipeline).
        mpp: microns per pixel of the patches (default 0.972, PCam's 10x).
        size: patch side in pixels.
        center: side in pixels of the centre region that decides the label (default ``size // 3``,
            32 for 96 like PCam).
        stride: grid step in patch pixels (default ``size``: no overlap).
        rule: ``"any"``: a class labels the patch when it covers more than ``min_coverage`` of the
            centre (the positive class wins ties, like PCam); ``"majority"``: the class covering
            at least half of the centre (patches with less are skipped).
        min_coverage: see ``rule``.
        background: class name for unannotated tissue (centre touches no annotation, tile at
            least ``min_tissue`` tissue); ``None`` cuts annotated patches only. May equal an
            annotation class (e.g. ``"Normal"``) to extend it.
        min_tissue: tissue fraction (0-1) a background patch needs.
        max_per_slide: cap per class and slide (a seeded random subset is kept).
        class_names: annotation classes to use, in this order (others are ignored).
        positive_class: positive class name or index (default inferred: ``Tumor``-like names).
        slide_mpp: level-0 resolution for slides that do not record one.
        seed: seed of the ``max_per_slide`` subsampling.
        progress, cancel: reported / checked per slide.
        qc: leave out patches slide QC flags (pen marks, folds, bubbles: :mod:`engine.slides.qc`).
        keep_qc_failed: keep them anyway.
        max_unreadable: the chosen patches are decoded once; undecodable ones are left out (and
            reported in ``open_warnings``) unless more than this share of a slide's are, then
            the slide fails.

    Raises:
        DatasetError: no slides, no annotations, unreadable slide, unknown resolution, bad options.
    """
    from engine.slides.open import open_slide
    from engine.slides.qc import QCSettings
    from engine.slides.tiling import plan_slide, slide_tissue

    if not labelled:
        raise DatasetError("annotated slides give labelled patches; to predict on slides, run a heatmap")
    if rule not in RULES:
        raise DatasetError(f"unknown labelling rule {rule!r} (choose {', '.join(RULES)})")
    if not isinstance(size, (int, np.integer)) or not 8 <= int(size) <= 4096:
        raise DatasetError(f"patch size must be an integer between 8 and 4096, got {size!r}")
    size = int(size)
    center = size // 3 if center is None else int(center)
    if not 1 <= center <= size:
        raise DatasetError(f"centre region must be between 1 and {size} px, got {center}")
    if not 0.0 <= float(min_coverage) < 1.0 or not 0.0 <= float(min_tissue) <= 1.0:
        raise DatasetError("min_coverage must be in [0, 1) and min_tissue in [0, 1]")
    user_mpp = check_mpp(mpp)
    mpp = user_mpp if user_mpp is not None else PCAM_MPP
    fallback_mpp = check_mpp(slide_mpp)

    if path.is_dir():
        entries, warnings = _pair_folder(path)
        if not entries:
            raise DatasetError(f"{path}: no slide with a GeoJSON annotation file next to it (<slide>.geojson)")
    elif path.name.lower().endswith(ANNOTATION_EXTS):
        entries, warnings = [e for e in _pair_folder(path.parent)[0] if e[1] == path], []
        if not entries:
            raise DatasetError(f"{path}: no slide named like this annotation file next to it")
    else:
        entries, warnings = _read_manifest(path), []

    from engine.data.geojson import read_annotations

    per_slide_ann = []
    all_classes: set[str] = set()
    for _slide, ann_path, _g, _m in entries:
        anns, w = read_annotations(ann_path)
        warnings.extend(w)
        per_slide_ann.append(anns)
        all_classes.update(a.class_name for a in anns)
    if not all_classes:
        raise DatasetError(f"{path}: the annotation files hold no classified polygon annotations")
    if class_names is not None:
        names = [str(c) for c in class_names]
        unknown = [c for c in names if c not in all_classes and c != background]
        if unknown:
            raise DatasetError(f"no annotations of class {', '.join(unknown)} (found: {', '.join(sorted(all_classes))})")
    else:
        names = sort_class_names(list(all_classes))
    if background is not None and background not in names:
        names.append(background)
    annotated_names = [c for c in names if c in all_classes]
    positive_idx = infer_positive_class(names, positive_class)

    rng = np.random.default_rng(seed)
    slide_paths: list[str] = []
    slide_mpps: list[float | None] = []
    plans: list[Any] = []
    idx_parts, xy_parts, label_parts, group_keys = [], [], [], []
    per_slide: dict[str, dict[str, int]] = {}
    for s, ((slide, _ann_path, group, m), anns) in enumerate(zip(entries, per_slide_ann, strict=True)):
        check_cancel(cancel)
        report(progress, ProgressEvent("slides", s, len(entries), f"cutting patches from {slide.name}"))
        if not any(a.class_name in names for a in anns):
            warnings.append(f"{slide.name}: no annotations of the chosen classes")
            continue
        try:
            reader = open_slide(slide, m if m is not None else None)
        except MetaScopeError as exc:
            raise DatasetError(str(exc)) from None
        with reader:
            if reader.info.mpp is None and m is None:
                if fallback_mpp is None:
                    raise DatasetError(f"{slide.name}: the slide does not record its microns per pixel; give slide_mpp")
                reader.info = dataclasses.replace(reader.info, mpp=(fallback_mpp, fallback_mpp))
            sm = reader.info.mpp_or(None)
            try:
                # every grid cell: annotations label patches whatever the tissue detector says
                qc_settings = QCSettings(enabled=qc, keep_failed=keep_qc_failed) if qc else None
                plan = plan_slide(reader, size, mpp, None, stride=stride, qc=qc_settings)
                # unannotated background patches need tissue, judged by the planner's mask
                tissue = slide_tissue(reader, size, mpp) if background is not None else None
            except MetaScopeError as exc:
                raise DatasetError(f"{slide.name}: {exc}") from None
        xy = plan.level0_xy
        t0 = plan.tile_size_level0
        c0 = center * plan.downsample
        cx0 = xy[:, 0] + (t0 - c0) / 2
        cy0 = xy[:, 1] + (t0 - c0) / 2
        from engine.data.geojson import rasterise

        masks = rasterise(anns, annotated_names, c0 / _MASK_PX_PER_CENTRE)
        cover = {c: m_.fraction_in_rects(cx0, cy0, cx0 + c0, cy0 + c0) for c, m_ in masks.items()}
        if not cover:
            cover = {names[0]: np.zeros(len(xy), np.float32)}
        labels, touched = _label_cells(cover, names, names[positive_idx], rule, float(min_coverage))
        if background is not None and tissue is not None:
            frac = tissue.fraction_in_rects(xy[:, 0], xy[:, 1], xy[:, 0] + t0, xy[:, 1] + t0)
            bg = ~touched & (frac >= min_tissue) & (frac > 0)
            labels[bg] = names.index(background)
        keep = np.flatnonzero(labels >= 0)
        if max_per_slide is not None:
            capped = []
            for k in range(len(names)):
                sel = keep[labels[keep] == k]
                if len(sel) > max_per_slide:
                    sel = np.sort(rng.choice(sel, int(max_per_slide), replace=False))
                capped.append(sel)
            keep = np.sort(np.concatenate(capped))
        if plan.qc is not None and len(plan.qc.reason):
            flagged = ", ".join(f"{n} {k}" for k, n in plan.qc.counts().items() if n)
            what = "kept" if keep_qc_failed else "left out"
            warnings.append(f"{slide.name}: slide QC flagged {flagged} patch positions ({what})")
        if len(keep):
            keep = keep[_decodable(slide, m, plan, xy[keep], max_unreadable, warnings, cancel)]
        if not len(keep):
            warnings.append(f"{slide.name}: no patch centre falls in an annotation at {size} px / {mpp:g} um/px")
            continue
        si = len(slide_paths)
        slide_paths.append(str(slide))
        slide_mpps.append(sm)
        # keep the geometry the reader needs, not the full grid
        empty = np.empty((0, 2), np.int64)
        plans.append(dataclasses.replace(plan, level0_xy=empty, grid_rc=empty.astype(np.int32), tissue_fraction=np.empty(0, np.float32), qc=None))
        idx_parts.append(np.full(len(keep), si, np.int64))
        xy_parts.append(xy[keep])
        label_parts.append(labels[keep])
        group_keys.extend([group or str(slide)] * len(keep))
        counts = np.bincount(labels[keep], minlength=len(names))
        per_slide[slide.name] = {names[k]: int(counts[k]) for k in range(len(names))}
    report(progress, ProgressEvent("slides", len(entries), len(entries), "done"))
    if not slide_paths:
        raise DatasetError(f"{path}: no patches could be cut (no patch centre falls in an annotation)")
    groups = np.unique(np.array(group_keys, dtype=str), return_inverse=True)[1].astype(np.int64)
    return AnnotatedSlideDataset(
        source=str(path),
        slide_paths=slide_paths,
        slide_mpps=slide_mpps,
        plans=plans,
        slide_index=np.concatenate(idx_parts),
        level0_xy=np.concatenate(xy_parts).astype(np.int64),
        labels=np.concatenate(label_parts).astype(np.int64),
        class_names=tuple(names),
        positive_class=positive_idx,
        groups=groups,
        mpp=mpp,
        mpp_source="user" if user_mpp is not None else "format",
        size=size,
        open_warnings=warnings,
        per_slide=per_slide,
    )


def _decodable(
    slide: Path,
    slide_mpp: float | None,
    plan: Any,
    xy: np.ndarray,
    max_unreadable: float,
    warnings: list[str],
    cancel: CancelToken | None,
) -> np.ndarray:
    """bool mask of the patches ``xy`` whose slide data decodes (read once, neighbours together).

    Raises:
        DatasetError: the slide cannot be opened, or more than ``max_unreadable`` of the
            patches cannot be decoded.
    """
    from engine.slides.damage import UnreadableLog, find_unreadable
    from engine.slides.open import open_slide

    try:
        with open_slide(slide, slide_mpp, probe=False) as reader:
            log = UnreadableLog(len(xy), max_unreadable, slide.name)
            ok = find_unreadable(reader, plan, xy, log, check=lambda: check_cancel(cancel))
    except MetaScopeError as exc:
        raise DatasetError(" ".join(str(exc).split())) from None
    if log.count:
        first = log.tiles[0]
        warnings.append(
            f"{slide.name}: {log.count} patches cannot be decoded and are left out "
            f"(first at x={first.x}, y={first.y}: {first.error})"
        )
    return ok
