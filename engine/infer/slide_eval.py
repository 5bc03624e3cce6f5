"""Evaluating a patch classifier's heatmaps against tumour annotations (``metascope evaluate-slides``).

Per slide the heatmap is computed (or reused from ``OUT/heatmaps/<slide>/`` when it was made with
the same model and settings), then scored against its QuPath GeoJSON tumour annotations:

- tile AUC: every analysed tile, labelled tumour when its centre lies in a tumour annotation;
- FROC (CAMELYON16, :mod:`engine.infer.froc`): the heatmap's local maxima as detections, each
  tumour polygon a lesion (those under 275 um across ignored, as isolated tumour cells);
- slide AUC: slide score = highest tile probability, slide positive = any tumour annotation.

A slide without an annotation file (or with no tumour polygon in it) is tumour-free.
Writes ``OUT/metrics.json``, ``slides.csv``, ``detections.csv``, ``froc.csv``, ``froc.png``,
``roc_tiles.png`` and ``roc_slides.png``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError, MetaScopeError
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report

TUMOUR_CLASSES = r"tumou?r|metasta|carcinoma|cancer|positive|lesion"


@dataclass(frozen=True, slots=True)
class SlideCase:
    """A slide and its tumour annotation file (``None``: tumour-free)."""

    slide: Path
    annotation: Path | None


def resolve_cases(
    slides: list[str], annotations: list[str] | None = None, manifest: str | None = None
) -> list[SlideCase]:
    """The (slide, annotation) pairs from the command line.

    Args:
        slides: slide files (ignored with ``manifest``).
        annotations: one folder holding ``<slide stem>.geojson`` (a slide without one is
            tumour-free), or one GeoJSON file per slide, in the same order.
        manifest: CSV with columns ``slide,annotation`` (empty annotation: tumour-free); relative
            paths are relative to the CSV.

    Raises:
        DatasetError: unreadable manifest, counts that do not match, missing files.
    """
    if manifest is not None:
        return _manifest_cases(Path(manifest))
    if not slides:
        raise DatasetError("no slides given (--slides or --manifest)")
    ann = [Path(a) for a in annotations or []]
    if len(ann) == 1 and ann[0].is_dir():
        folder = ann[0]
        cases = [SlideCase(Path(s), _existing(folder / f"{Path(s).stem}.geojson")) for s in slides]
    elif not ann:
        cases = [SlideCase(Path(s), None) for s in slides]
    elif len(ann) == len(slides):
        for a in ann:
            if not a.is_file():
                raise DatasetError(f"annotation file {a} not found")
        cases = [SlideCase(Path(s), a) for s, a in zip(slides, ann, strict=True)]
    else:
        raise DatasetError(
            f"{len(slides)} slides but {len(ann)} annotation files: give one folder or one file per slide"
        )
    return cases


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _manifest_cases(path: Path) -> list[SlideCase]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "slide" not in rows[0]:
        raise DatasetError(f"manifest {path.name} needs a header 'slide,annotation' and at least one row")
    cases = []
    for i, row in enumerate(rows, start=2):
        slide = (row.get("slide") or "").strip()
        if not slide:
            raise DatasetError(f"manifest {path.name} line {i}: empty slide")
        ann = (row.get("annotation") or "").strip()
        ann_path = (path.parent / ann) if ann else None
        if ann_path is not None and not ann_path.is_file():
            raise DatasetError(f"manifest {path.name} line {i}: annotation {ann} not found")
        cases.append(SlideCase(path.parent / slide, ann_path))
    return cases


def tumour_polygons(path: Path | None, pattern: str = TUMOUR_CLASSES) -> list[tuple[np.ndarray, ...]]:
    """The tumour polygons of an annotation file: annotations whose class matches ``pattern``
    (case-insensitive); a file without classified annotations counts every polygon as tumour.

    Raises:
        DatasetError: unreadable file.
    """
    if path is None:
        return []
    from engine.data.geojson import read_annotations, read_region_polygons

    anns, _ = read_annotations(path)
    if anns:
        rx = re.compile(pattern, re.IGNORECASE)
        return [poly for a in anns if rx.search(a.class_name) for poly in a.polygons]
    try:
        return read_region_polygons(path)
    except DatasetError:
        return []  # valid GeoJSON without any polygon: a tumour-free slide


def heatmap_names(slides: list[Path] | list[str]) -> list[str]:
    """The result folder name of each slide: its file name made safe, ``-2``, ``-3``... when
    two slides share one (decided before any slide is computed, so a cohort on several
    machines names them as one process would)."""
    from engine.infer.outputs import safe_name

    used: set[str] = set()
    names = []
    for s in slides:
        base = name = safe_name(Path(s).stem)
        n = 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        names.append(name)
    return names


def slide_heatmap(case: SlideCase, session: Any, cfg: Any, out: Path, name: str, **compute: Any) -> Any:
    """The heatmap of one slide: reused from ``out/<name>`` when finished with this model and
    settings, else computed and written there."""
    from engine.infer.batch import finished_result
    from engine.infer.outputs import load_heatmap_result, write_heatmap_outputs
    from engine.infer.pipeline import compute_heatmap
    from engine.slides.open import open_slide

    with open_slide(case.slide, mpp=cfg.slide_mpp) as reader:
        if finished_result(out / name, case.slide, session.sha256, cfg):
            return load_heatmap_result(out / name), True
        result = compute_heatmap(reader, session, cfg, **compute)
        write_heatmap_outputs(result, out, reader=reader, folder_name=name, cancel=compute.get("cancel"))
    return result, False


def score_slide(result: Any, polygons: list[tuple[np.ndarray, ...]]) -> dict[str, Any]:
    """Tile truth, detections and their matching for one slide's heatmap."""
    from engine.data.geojson import points_in_polygons
    from engine.infer.froc import ITC_MAX_MM, local_maxima, match_detections, polygon_diameter

    centres = result.level0_xy.astype(np.float64) + result.tile_size_level0 / 2.0
    truth = points_in_polygons(centres, polygons) if polygons else np.zeros(len(centres), dtype=bool)
    det = local_maxima(result.grid, result.origin_level0, result.stride_level0, result.tile_size_level0)
    mpp = float(result.slide_mpp)
    diam_mm = np.array([polygon_diameter(p) * mpp / 1000.0 for p in polygons])
    ignored = diam_mm < ITC_MAX_MM
    lesion_score, _, hit = match_detections(det, polygons, ignored)
    in_ignored = (hit >= 0) & ignored[np.clip(hit, 0, None)] if len(polygons) else np.zeros(len(hit), dtype=bool)
    fp = det.probability[(hit < 0)]
    prob = result.positive_probabilities
    return {
        "truth": truth,
        "prob": prob,
        "detections": det,
        "hit": hit,
        "in_ignored": in_ignored,
        "lesion_scores": lesion_score[~ignored],
        "fp_probs": fp,
        "lesions": int((~ignored).sum()),
        "ignored_lesions": int(ignored.sum()),
        "score": float(np.nanmax(prob)) if np.isfinite(prob).any() else float("nan"),
    }


def evaluate_slides(
    cases: list[SlideCase],
    session: Any,
    cfg: Any,
    out: Path,
    pattern: str = TUMOUR_CLASSES,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Evaluate ``session`` on ``cases``; writes the files of this module into ``out``.

    A slide that fails with bad input is reported in ``metrics["failed"]`` and left out.

    Returns:
        The metrics (also in ``out/metrics.json``).
    """
    names = heatmap_names([c.slide for c in cases])
    rows, scored, failed = [], [], []
    for i, (case, name) in enumerate(zip(cases, names, strict=True)):
        check_cancel(cancel)
        report(progress, ProgressEvent("slides", i, len(cases), case.slide.name))
        r = evaluate_case(case, name, session, cfg, out / "heatmaps", pattern, cancel=cancel)
        add_case(r, rows, scored, failed)
    report(progress, ProgressEvent("slides", len(cases), len(cases), "scoring"))
    return finish_evaluation(out, scored, rows, failed, session, cfg)


def evaluate_case(
    case: SlideCase, name: str, session: Any, cfg: Any, heatmaps: Path, pattern: str = TUMOUR_CLASSES,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Heatmap (computed or reused in ``heatmaps/<name>``) and scores of one slide: the one
    per-slide step of :func:`evaluate_slides` and of a cohort on Ray.

    Returns:
        ``{"failed": {...}}`` for a slide with bad input, else ``{"row": ..., "scored": (case, result, scores)}``.
    """
    from engine.infer.lesions import find_lesions, lesion_summary

    try:
        polys = tumour_polygons(case.annotation, pattern)
        result, reused = slide_heatmap(case, session, cfg, heatmaps, name, cancel=cancel)
    except MetaScopeError as exc:
        return {"failed": {"slide": str(case.slide), "error": " ".join(str(exc).split())}}
    s = score_slide(result, polys)
    les = lesion_summary(result, find_lesions(result))
    row = {
        "slide": result.slide_name, "path": str(case.slide),
        "annotation": "" if case.annotation is None else str(case.annotation),
        "positive": int(bool(polys)), "score": round(s["score"], 6), "tiles": int(len(s["truth"])),
        "tumour_tiles": int(s["truth"].sum()), "lesions": s["lesions"], "ignored_lesions": s["ignored_lesions"],
        "lesions_detected": int(np.isfinite(s["lesion_scores"]).sum()), "detections": len(s["hit"]),
        "predicted_lesions": les["count"], "category": les["category"], "heatmap_reused": int(reused),
    }
    return {"row": row, "scored": (case, result, s)}


def add_case(r: dict[str, Any], rows: list, scored: list, failed: list) -> None:
    """Append one :func:`evaluate_case` outcome to the cohort's lists."""
    if "failed" in r:
        failed.append(r["failed"])
    else:
        rows.append(r["row"])
        scored.append(r["scored"])


def finish_evaluation(out: Path, scored: list, rows: list, failed: list, session: Any, cfg: Any) -> dict[str, Any]:
    """The cohort's metrics from its slides, written into ``out``."""
    metrics = _metrics(scored, rows, failed, session, cfg)
    _write_files(out, scored, rows, metrics)
    return metrics


def _auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    from engine.train.metrics import roc_auc

    ok = np.isfinite(score)
    v = roc_auc(truth[ok], score[ok]) if ok.any() else float("nan")
    return None if math.isnan(v) else round(v, 6)


def _metrics(scored: list, rows: list, failed: list, session: Any, cfg: Any) -> dict[str, Any]:
    from engine.infer.froc import froc

    tile_truth = np.concatenate([s["truth"] for _, _, s in scored]) if scored else np.zeros(0, bool)
    tile_prob = np.concatenate([s["prob"] for _, _, s in scored]) if scored else np.zeros(0)
    slide_truth = np.array([r["positive"] for r in rows], dtype=bool)
    slide_score = np.array([s["score"] for _, _, s in scored], dtype=np.float64)
    curve = froc(
        np.concatenate([s["lesion_scores"] for _, _, s in scored]) if scored else np.zeros(0),
        np.concatenate([s["fp_probs"] for _, _, s in scored]) if scored else np.zeros(0),
        len(scored),
    )
    notes = []
    if not tile_truth.any() or tile_truth.all():
        notes.append("tile AUC undefined: the tiles hold one class only")
    if not slide_truth.any() or slide_truth.all():
        notes.append("slide AUC undefined: every slide is tumour-free or every slide has tumour")
    if curve["score"] is None:
        notes.append("FROC undefined: no annotated lesion of 275 um or more")
    return {
        "model": {"name": session.name, "sha256": session.sha256},
        "slides": len(scored),
        "positive_slides": int(slide_truth.sum()),
        "failed": failed,
        "threshold": cfg.threshold,
        "tile_auc": _auc(tile_truth, tile_prob),
        "tiles": int(tile_truth.size),
        "tumour_tiles": int(tile_truth.sum()),
        "slide_auc": _auc(slide_truth, slide_score),
        "froc_score": None if curve["score"] is None else round(curve["score"], 6),
        "froc_sensitivity_at": {k: round(v, 6) for k, v in curve["sensitivity_at"].items()},
        "lesions": curve["lesions"],
        "froc": curve,
        "notes": notes,
        "per_slide": rows,
    }


def _write_files(out: Path, scored: list, rows: list, metrics: dict[str, Any]) -> None:
    import json

    from engine.fileio import atomic_write_json, atomic_write_text
    from engine.infer.froc import plot_froc
    from engine.train.metrics import plot_roc

    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0]) if rows else ["slide"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "slides.csv", buf.getvalue())
    lines = ["slide,x,y,probability,lesion,outcome"]
    for _case, result, s in scored:
        det = s["detections"]
        for (x, y), p, h, ign in zip(det.xy, det.probability, s["hit"], s["in_ignored"], strict=True):
            outcome = "ignored" if ign else ("tp" if h >= 0 else "fp")
            lines.append(f"{result.slide_name},{x:.1f},{y:.1f},{p:.6f},{h + 1 if h >= 0 else ''},{outcome}")
    atomic_write_text(out / "detections.csv", "\n".join(lines) + "\n")
    curve = metrics["froc"]
    atomic_write_text(
        out / "froc.csv",
        "threshold,fp_per_slide,sensitivity\n"
        + "".join(f"{t},{f},{s}\n" for t, f, s in zip(curve["thresholds"], curve["fp_per_slide"], curve["sensitivity"], strict=True)),
    )
    plot_froc(curve, out / "froc.png")
    if scored:
        tt = np.concatenate([s["truth"] for _, _, s in scored])
        tp = np.concatenate([s["prob"] for _, _, s in scored])
        plot_roc([(f"tiles (AUC {metrics['tile_auc']})", tt, tp)], out / "roc_tiles.png", title="Tile ROC")
        st = np.array([r["positive"] for r in rows], dtype=bool)
        ss = np.array([s["score"] for _, _, s in scored])
        plot_roc([(f"slides (AUC {metrics['slide_auc']})", st, ss)], out / "roc_slides.png", title="Slide ROC")
    json.dumps(metrics)  # fail here, not half-way through the write, if something is not JSON
    atomic_write_json(out / "metrics.json", metrics)
