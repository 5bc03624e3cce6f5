"""Whole cohorts on Ray: ``mil features`` and ``evaluate-slides`` with one task per slide.

These are the Ray counterparts of :func:`engine.mil.features.extract_cohort` and
:func:`engine.infer.slide_eval.evaluate_slides`: the workers run the same per-slide step
(:func:`engine.mil.features.extract_entry`, :func:`engine.infer.slide_eval.evaluate_case`), the
driver gathers the outcomes in cohort order and writes the same cohort files
(``extraction.json``; ``metrics.json``, ``slides.csv``, plots). Paths sent to the workers are
absolute, since a worker's working directory is not the driver's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cohort.tasks import SlideOutcome
from engine.jobs import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from engine.cohort.ray_runner import RaySettings
    from engine.infer.slide_eval import SlideCase
    from engine.mil.cohort import Cohort
    from engine.mil.features import ExtractionReport, FeatureConfig


def _error_text(outcome: SlideOutcome) -> str:
    """``unexpected failure (...)`` of a failed outcome, without the ``error: SLIDE:`` prefix."""
    text = outcome.notes[0] if outcome.notes else "unexpected failure"
    return text.removeprefix("error: ").removeprefix(f"{outcome.slide}: ")


def extract_cohort_on_ray(
    cohort: Cohort,
    extractor: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: FeatureConfig,
    settings: RaySettings,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[ExtractionReport, int]:
    """:func:`engine.mil.features.extract_cohort` with one Ray task per slide.

    Returns:
        The report (also in ``out_dir/extraction.json``) and how many slides failed
        unexpectedly (their worker died, or a bug, on every attempt; listed as failed).

    Raises:
        Cancelled: ``cancel`` was set (finished bags are kept; run again to resume).
    """
    from engine.cohort.ray_runner import run_on_ray
    from engine.cohort.tasks import FeatureJob, extractor_session, feature_slide
    from engine.fileio import ensure_writable_dir
    from engine.mil.features import ExtractionReport, SlideExtraction, resolve_tiling, write_extraction_record

    ex = extractor_session(extractor, cfg.device)  # a bad package fails here, not on every worker
    resolve_tiling(ex, cfg)
    out = ensure_writable_dir(out_dir).absolute()
    entries = list(cohort.entries)
    results: list[SlideExtraction | None] = [None] * len(entries)
    unexpected = 0

    def on_outcome(i: int, outcome: SlideOutcome) -> None:
        nonlocal unexpected
        if isinstance(outcome.value, SlideExtraction):
            results[i] = outcome.value
        else:
            unexpected += 1
            results[i] = SlideExtraction(entries[i].slide_id, "failed", _error_text(outcome))

    t0 = time.perf_counter()
    job = FeatureJob(str(Path(extractor).absolute()), cfg, out, settings.threads)
    run_on_ray(feature_slide, job, entries, [e.slide_id for e in entries], settings, on_outcome, progress, cancel)
    rep = ExtractionReport()
    for r in results:
        if r is not None:
            r.add_to(rep)
    rep.seconds = time.perf_counter() - t0
    write_extraction_record(out, ex, cfg, cohort, rep)
    return rep, unexpected


def evaluate_slides_on_ray(
    cases: list[SlideCase],
    model: str | os.PathLike[str],
    device: str,
    session: Any,
    cfg: Any,
    out: Path,
    pattern: str,
    settings: RaySettings,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[dict[str, Any], int]:
    """:func:`engine.infer.slide_eval.evaluate_slides` with one Ray task per slide.

    Returns:
        The metrics (also in ``out/metrics.json``) and how many slides failed unexpectedly
        (listed in ``metrics["failed"]``).

    Raises:
        Cancelled: ``cancel`` was set (finished heatmaps are kept and reused by a rerun).
    """
    import dataclasses

    from engine.cohort.ray_runner import run_on_ray
    from engine.cohort.tasks import EvaluationJob, evaluation_slide
    from engine.infer.slide_eval import SlideCase, add_case, finish_evaluation, heatmap_names

    out = Path(out).absolute()
    absolute = [SlideCase(c.slide.absolute(), None if c.annotation is None else c.annotation.absolute()) for c in cases]
    items = list(zip(absolute, heatmap_names([c.slide for c in cases]), strict=True))
    outcomes: list[dict[str, Any] | None] = [None] * len(cases)
    unexpected = 0

    def on_outcome(i: int, outcome: SlideOutcome) -> None:
        nonlocal unexpected
        if isinstance(outcome.value, dict):
            outcomes[i] = outcome.value
        else:
            unexpected += 1
            outcomes[i] = {"failed": {"slide": str(cases[i].slide), "error": _error_text(outcome)}}

    read_cfg = dataclasses.replace(cfg, read_workers=cfg.read_workers or settings.threads)
    job = EvaluationJob(str(Path(model).absolute()), device, read_cfg, out / "heatmaps", pattern,
                        settings.threads)
    run_on_ray(evaluation_slide, job, items, [str(c.slide) for c in cases], settings, on_outcome, progress, cancel)
    rows: list[Any] = []
    scored: list[Any] = []
    failed: list[Any] = []
    for r in outcomes:
        if r is not None:
            add_case(r, rows, scored, failed)
    return finish_evaluation(out, scored, rows, failed, session, cfg), unexpected
