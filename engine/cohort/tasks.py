"""The per-slide functions of a cohort, called by the single-process loops and by Ray workers alike.

Each takes a frozen, picklable *job* (what every slide shares: model path, settings, output
folder) and one slide, and returns a :class:`SlideOutcome` (what to print, how it went). The
model is loaded once per process (:func:`model_session`), so a Ray worker that runs several
slides loads it once, and the CLI's loop reuses the session it loaded to check the model.

A slide with bad input (a :class:`~engine.errors.MetaScopeError`) is an outcome, never an
exception; an unexpected exception propagates, so the loop reports it and Ray retries the slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from engine.errors import MetaScopeError
from engine.jobs import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from engine.infer.pipeline import InferenceConfig
    from engine.infer.slide_eval import SlideCase
    from engine.mil.cohort import CohortEntry
    from engine.mil.features import FeatureConfig

#: statuses of a :class:`SlideOutcome` that count as failures of the cohort
FAILED = ("bad input", "unexpected")


@dataclass(frozen=True, slots=True)
class SlideOutcome:
    """How one slide went.

    Attributes:
        slide: the slide (path or id) as the user gave it.
        status: ``done``, ``skipped``, ``bad input`` or ``unexpected`` (see :data:`FAILED`).
        lines: lines for stdout (the slide's summary).
        notes: lines for stderr (``warning: ...``, ``error: ...``).
        value: the command's own result of the slide (a report entry, scores...).
    """

    slide: str
    status: str
    lines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    value: Any = None


def unexpected_outcome(slide: str, why: str) -> SlideOutcome:
    """A slide that failed by a bug or a dead worker: ``error: SLIDE: unexpected failure (...)``."""
    return SlideOutcome(slide, "unexpected", notes=(f"error: {slide}: unexpected failure ({' '.join(why.split())})",))


# -- one model per process ----------------------------------------------------------------------

_SESSIONS: dict[tuple[Any, ...], Any] = {}


def _file_key(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return (str(p),)  # loading reports the missing file
    return (str(p), st.st_size, st.st_mtime_ns)


def model_session(path: str | os.PathLike[str], device: str, threads: int | None = None) -> Any:
    """The :class:`~engine.infer.session.ModelSession` of a model package, loaded once per process
    (per file version, device and thread count)."""
    key = ("model", *_file_key(path), device, threads)
    if key not in _SESSIONS:
        from engine.infer.session import load_model

        _SESSIONS[key] = load_model(path, device, intra_op_threads=threads)
    return _SESSIONS[key]


def extractor_session(path: str | os.PathLike[str], device: str, threads: int | None = None) -> Any:
    """The :class:`~engine.mil.features.Extractor` of a backbone package, loaded once per process."""
    key = ("extractor", *_file_key(path), device, threads)
    if key not in _SESSIONS:
        from engine.mil.features import load_extractor

        _SESSIONS[key] = load_extractor(path, device, intra_op_threads=threads)
    return _SESSIONS[key]


# -- metascope heatmap --------------------------------------------------------------------------


class NamedSlide(NamedTuple):
    """A slide of a heatmap batch and its result folder name (unique in the batch)."""

    slide: str
    name: str


@dataclass(frozen=True, slots=True)
class HeatmapJob:
    """What every slide of a ``metascope heatmap`` batch shares.

    Attributes:
        model: model package path (on storage every worker sees).
        device: ``auto``, ``cpu`` or ``cuda``.
        cfg: inference settings (``roi`` is set per slide from ``roi``).
        out: output folder; each slide writes ``out/<name>/`` atomically.
        roi: a GeoJSON file for every slide, or a folder of ``<slide name>.geojson``.
        skip_existing: leave out slides whose result folder is finished with this model and settings.
        cache: use the app's heatmap cache.
        threads: onnxruntime threads per slide (``None``: every core of the process).
    """

    model: str
    device: str
    cfg: InferenceConfig
    out: Path
    roi: Path | None = None
    skip_existing: bool = False
    cache: bool = False
    threads: int | None = None


def named_slides(slides: list[str]) -> list[NamedSlide]:
    """Each slide with its result folder name (see :func:`engine.infer.slide_eval.heatmap_names`)."""
    from engine.infer.slide_eval import heatmap_names

    return [NamedSlide(s, n) for s, n in zip(slides, heatmap_names(slides), strict=True)]


def slide_roi(roi: Path | None, slide: str) -> str | None:
    """The ROI file of ``slide``: the ``--roi`` file, or ``<slide stem>.geojson`` in the ``--roi`` folder.

    Raises:
        DatasetError: the folder holds no ROI for this slide.
    """
    if roi is None or not roi.is_dir():
        return None if roi is None else str(roi)
    from engine.errors import DatasetError

    path = roi / f"{Path(slide).stem}.geojson"
    if not path.is_file():
        raise DatasetError(f"{slide}: no region of interest {path.name} in {roi}")
    return str(path)


def heatmap_slide(
    job: HeatmapJob, item: NamedSlide, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
) -> SlideOutcome:
    """Analyse one slide of a heatmap batch into ``job.out/<item.name>/``."""
    try:
        return _heatmap(job, item, progress, cancel)
    except MetaScopeError as exc:
        slide = item.slide
        msg = " ".join(str(exc).split())
        # most slide errors already name the file; name it once
        if slide not in msg and Path(slide).name not in msg and Path(slide).stem not in msg:
            msg = f"{slide}: {msg}"
        return SlideOutcome(slide, "bad input", notes=(f"error: {msg}",))


def _heatmap(job: HeatmapJob, item: NamedSlide, progress: ProgressCallback | None, cancel: CancelToken | None) -> SlideOutcome:
    import dataclasses

    from engine.infer.batch import finished_result
    from engine.infer.cache import cached_heatmap
    from engine.infer.outputs import write_heatmap_outputs
    from engine.infer.pipeline import compute_heatmap
    from engine.slides.open import open_slide
    from engine.slides.qc_summary import summary_line

    session = model_session(job.model, job.device, job.threads)
    cfg = dataclasses.replace(job.cfg, roi=slide_roi(job.roi, item.slide))
    out, name = job.out, item.name
    with open_slide(item.slide, mpp=cfg.slide_mpp) as reader:
        if job.skip_existing and finished_result(out / name, item.slide, session.sha256, cfg):
            return SlideOutcome(
                item.slide, "skipped", (f"{reader.info.name}: already done with this model and settings -> {out / name}",)
            )
        if job.cache:
            result, from_cache = cached_heatmap(reader, item.slide, session, cfg, progress=progress, cancel=cancel)
        else:
            result, from_cache = compute_heatmap(reader, session, cfg, progress=progress, cancel=cancel), False
        folder = write_heatmap_outputs(result, out, reader=reader, folder_name=name, cancel=cancel)
    s = result.summary
    timing = "from the cache" if from_cache else (
        f"{result.timing['total_s']:.1f} s ({result.timing['tiles_per_s']:.0f} tiles/s)"
    )
    top = "n/a" if s["max_probability"] is None else f"{s['max_probability']:.3f}"
    line = (
        f"{result.slide_name}: max {top}, {s['fraction_above_threshold']:.1%} of "
        f"{s['tiles_analysed']} tissue tiles >= {cfg.threshold:g}{summary_line(s)}{lesion_text(folder)}, "
        f"{timing} -> {folder}"
    )
    notes = tuple(f"warning: {w}" for w in s.get("warnings", []))
    return SlideOutcome(item.slide, "done", (line,), notes, value=str(folder))


def lesion_text(folder: Path) -> str:
    """``, 2 lesions, largest 1.30 mm: micrometastasis`` from a result folder's heatmap.json."""
    import json

    try:
        les = json.loads((folder / "heatmap.json").read_text(encoding="utf-8"))["lesions"]
    except (OSError, ValueError, KeyError):
        return ""
    if not les["count"]:
        return f", no lesion: {les['category']}"
    size = "" if les["largest_diameter_mm"] is None else f", largest {les['largest_diameter_mm']:.2f} mm"
    return f", {les['count']} lesion(s){size}: {les['category']}"


# -- metascope mil features ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureJob:
    """What every slide of ``metascope mil features`` shares: extractor path, settings, features folder."""

    extractor: str
    cfg: FeatureConfig
    out: Path
    threads: int | None = None


def feature_slide(
    job: FeatureJob, entry: CohortEntry, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
) -> SlideOutcome:
    """:func:`engine.mil.features.extract_entry` of one cohort slide (the step the loop runs)."""
    from engine.mil.features import extract_entry

    ex = extractor_session(job.extractor, job.cfg.device, job.threads)
    r = extract_entry(entry, ex, job.cfg, job.out, progress, cancel)
    status = {"done": "done", "skipped": "skipped"}.get(r.status, "bad input")
    return SlideOutcome(entry.slide_id, status, value=r)


# -- metascope evaluate-slides ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvaluationJob:
    """What every slide of ``metascope evaluate-slides`` shares."""

    model: str
    device: str
    cfg: InferenceConfig
    heatmaps: Path
    pattern: str
    threads: int | None = None


def evaluation_slide(
    job: EvaluationJob, item: tuple[SlideCase, str], progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SlideOutcome:
    """:func:`engine.infer.slide_eval.evaluate_case` of one slide (the step the loop runs)."""
    from engine.infer.slide_eval import evaluate_case

    case, name = item
    session = model_session(job.model, job.device, job.threads)
    r = evaluate_case(case, name, session, job.cfg, job.heatmaps, job.pattern, cancel=cancel)
    return SlideOutcome(str(case.slide), "bad input" if "failed" in r else "done", value=r)
