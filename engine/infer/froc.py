"""Slide-scale evaluation metrics: detections, the CAMELYON16 FROC, and its plot.

Detections are the local maxima of a heatmap (one per plateau, 8-neighbourhood) with their
probability, at the level-0 centre of their cell. As in the CAMELYON16 evaluation:

- a detection inside an annotated tumour (a lesion) is a true positive for that lesion; several
  detections in one lesion count once (with the highest probability);
- a detection outside every lesion is a false positive; one inside a lesion that is ignored
  (isolated tumour cells: largest diameter below 275 um, the rule of the CAMELYON16
  evaluation code) is neither;
- sensitivity at a threshold = lesions with a detection at or above it / all (not ignored)
  lesions; false positives per slide = false detections at or above it / number of slides (all,
  tumour-free included); the score is the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false
  positives per slide, interpolated on the curve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

FROC_FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DETECTION_FLOOR = 0.01
# CAMELYON16 evaluation code (computeITCList): lesions with a major axis under 275 um are ignored
ITC_MAX_MM = 0.275


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections of one slide: level-0 ``xy (N, 2)`` and ``probability (N,)``, highest first."""

    xy: np.ndarray
    probability: np.ndarray


def local_maxima(
    grid: np.ndarray,
    origin_level0: tuple[int, int],
    stride_level0: float,
    tile_size_level0: float,
    floor: float = DETECTION_FLOOR,
) -> Detections:
    """One detection per local-maximum plateau of ``grid`` (NaN = not analysed) at or above ``floor``."""
    from scipy import ndimage

    g = np.where(np.isfinite(grid), grid, -np.inf).astype(np.float64)
    peak = (g >= ndimage.maximum_filter(g, size=3, mode="constant", cval=-np.inf)) & (g >= floor)
    labels, n = ndimage.label(peak, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return Detections(np.zeros((0, 2)), np.zeros(0))
    # one point per plateau: its first cell in row-major order
    idx = np.arange(labels.size).reshape(labels.shape)
    first = ndimage.minimum(idx, labels=labels, index=np.arange(1, n + 1)).astype(np.int64)
    r, c = np.unravel_index(first, grid.shape)
    prob = g[r, c]
    xy = np.stack(
        [origin_level0[0] + c * stride_level0 + tile_size_level0 / 2.0,
         origin_level0[1] + r * stride_level0 + tile_size_level0 / 2.0],
        axis=1,
    ).astype(np.float64)
    order = np.argsort(-prob, kind="stable")
    return Detections(xy[order], prob[order])


def polygon_diameter(rings: tuple[np.ndarray, ...]) -> float:
    """Largest distance between two points of a polygon's exterior ring (level-0 px)."""
    from engine.infer.lesions import _max_distance

    return _max_distance(np.asarray(rings[0], dtype=np.float64))


def match_detections(
    det: Detections, lesions: list[tuple[np.ndarray, ...]], ignored: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match one slide's detections to its lesions.

    Args:
        det: the slide's detections.
        lesions: per lesion its polygon rings (exterior, holes) in level-0 px.
        ignored: bool per lesion: detections inside are neither true nor false positives.

    Returns:
        ``(lesion_score (L,), fp_probs (F,), hit (N,))``: per lesion the highest probability of a
        detection inside it (NaN: none), the probabilities of the false detections, and per
        detection the lesion it fell in (-1: none).
    """
    from engine.data.geojson import points_in_polygons

    hit = np.full(len(det.probability), -1, dtype=np.int64)
    for k, poly in enumerate(lesions):
        free = hit < 0
        if not free.any():
            break
        inside = points_in_polygons(det.xy[free], [poly])
        hit[np.flatnonzero(free)[inside]] = k
    score = np.full(len(lesions), np.nan)
    for k in range(len(lesions)):
        p = det.probability[hit == k]
        if p.size:
            score[k] = p.max()
    fp = det.probability[hit < 0]
    return score, fp, hit


def froc(lesion_scores: np.ndarray, fp_probs: np.ndarray, n_slides: int) -> dict[str, Any]:
    """The FROC curve and score over a set of slides.

    Args:
        lesion_scores: per (not ignored) lesion the best probability of a detection in it, NaN
            when it was never detected.
        fp_probs: the probabilities of every false detection.
        n_slides: number of slides evaluated.

    Returns:
        ``{"score", "sensitivity_at", "fp_per_slide", "sensitivity", "thresholds", "lesions"}``
        (``score``: mean sensitivity at :data:`FROC_FP_RATES`; ``None`` without lesions).
    """
    scores = np.asarray(lesion_scores, dtype=np.float64)
    fps = np.sort(np.asarray(fp_probs, dtype=np.float64))
    n_lesions = scores.size
    found = np.sort(scores[np.isfinite(scores)])
    thresholds = np.unique(np.r_[found, fps])[::-1]  # descending
    if n_lesions == 0 or n_slides == 0:
        return {"score": None, "sensitivity_at": {}, "fp_per_slide": [], "sensitivity": [], "thresholds": [],
                "lesions": int(n_lesions)}
    # counts at or above each threshold
    sens = (found.size - np.searchsorted(found, thresholds, side="left")) / n_lesions
    fpps = (fps.size - np.searchsorted(fps, thresholds, side="left")) / n_slides
    if thresholds.size == 0:
        sens, fpps = np.zeros(1), np.zeros(1)
    at = {f"{r:g}": float(np.interp(r, fpps, sens)) for r in FROC_FP_RATES}
    return {
        "score": float(np.mean(list(at.values()))),
        "sensitivity_at": at,
        "fp_per_slide": [round(float(v), 6) for v in fpps],
        "sensitivity": [round(float(v), 6) for v in sens],
        "thresholds": [round(float(v), 6) for v in thresholds],
        "lesions": int(n_lesions),
    }


def plot_froc(curve: dict[str, Any], path: str | os.PathLike[str], title: str = "FROC") -> None:
    """The FROC curve (false positives per slide, log scale, vs lesion sensitivity) to a PNG."""
    from matplotlib.figure import Figure

    from engine.train.metrics import save_figure

    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    fp = np.asarray(curve.get("fp_per_slide") or [], dtype=np.float64)
    sens = np.asarray(curve.get("sensitivity") or [], dtype=np.float64)
    if fp.size:
        ax.step(np.clip(fp, 1 / 8, None), sens, where="post", lw=2)
        at = curve.get("sensitivity_at") or {}
        ax.plot([float(k) for k in at], list(at.values()), "o", c="C3", label="CAMELYON16 points")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log", base=2)
    score = curve.get("score")
    ax.set(xlabel="average false positives per slide", ylabel="lesion sensitivity", ylim=(0, 1.02),
           xlim=(1 / 8, 16), title=f"{title} (score {score:.3f})" if score is not None else title)
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)
