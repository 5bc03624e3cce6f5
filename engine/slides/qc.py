"""Slide quality control: the stain check and per-tile artefact detection (HistoQC's checks).

Everything here works on the thumbnail tissue detection already reads (16 mask pixels per tile
side, at most 2048 px), so QC costs a fraction of a heatmap and its memory does not grow with
the slide. Blur is judged where it matters, on the tiles being analysed at the analysis
resolution (variance of the Laplacian, computed by the read threads on tiles already in memory).

Stain (:func:`stain_check`): colour deconvolution with the Ruifrok-Johnston H-E-DAB matrix on
the non-glass pixels: ``"he"`` (brightfield H&E), ``"greyscale"`` (no colour), ``"dab"`` (IHC:
DAB carries most of the stain), ``"fluorescence"`` (dark background).

Artefacts per thumbnail pixel (:func:`artefact_map`), then per tile by area:

- ``pen``: marker ink, hues H&E never has (green, blue, red ink; neutral black ink), the same
  colour rules tissue detection uses to keep ink out of the tissue mask;
- ``fold``: folded tissue is two layers thick, so its optical density is about twice the
  slide's tissue and its colour more saturated: density above ``FOLD_OD_RATIO`` x the median
  tissue density (and an absolute floor) with at least the median saturation, in smooth
  (low-texture) areas;
- ``bubble``: air bubbles and coverslip edges: greyish, unstained areas with sharp neutral
  edges (the bubble rim, the glass edge) or thin very bright/dark neutral lines, where the
  tissue beside them is stained; a greyscale slide skips this check (everything is neutral);
- ``background``: grid cells with too little tissue (the planner never analyses them);
- ``blur``: variance of the Laplacian of the tile's grey levels, relative to their variance,
  below ``BLUR_VAR_MIN`` (tiles too flat to judge are never called blurred);
- ``unreadable``: the tile's data cannot be decoded (:mod:`engine.slides.damage`).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.slides import morph
from engine.slides.colour import balanced_od_planes, balanced_planes, marker_ink, max_min_saturation, sample_pixels

# Reason codes of the QC mask (0 = analysed tissue); names in REASONS order.
OK, BACKGROUND, PEN, FOLD, BUBBLE, BLUR, UNREADABLE = range(7)
REASONS = ("ok", "background", "pen", "fold", "bubble", "blur", "unreadable")
ARTEFACTS = ("pen", "fold", "bubble", "blur")
#: Overlay / QC-mask colour per reason (RGB).
REASON_RGB = {
    "background": (200, 200, 200),
    "pen": (0, 160, 60),
    "fold": (120, 40, 0),
    "bubble": (0, 170, 230),
    "blur": (255, 170, 0),
    "unreadable": (255, 0, 255),
}

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)

# Stain check thresholds (calibrated on PCam H&E patches, the synthetic slides and generated
# greyscale / DAB-only / dark-field images; see tests/engine/test_slide_qc.py).
FLUO_BACKGROUND_MAX = 60.0  # 90th luminance percentile of a dark-field (fluorescence) image
GREY_COLOUR_FRACTION = 0.02  # share of non-glass pixels with colour, below: greyscale
COLOUR_SAT_MIN = 0.08
DAB_SHARE_MIN = 0.45  # share of the deconvolved stain carried by DAB, above: IHC (H&E: ~0.3)
DAB_NO_EOSIN = 0.05  # ... or eosin below this share with DAB above 0.35 (counterstained IHC)
GLASS_OD_MAX = 0.06
# Thumbnail pixels of margin around the tissue's bounding box that the artefact checks look at.
CROP_MARGIN_PX = 24

# Artefact thresholds
# (marker ink: engine.slides.colour.marker_ink, with the dark-ink rule below)
DARK_INK_MAX = 90
DARK_INK_SAT = 0.2
FOLD_OD_RATIO = 1.7
FOLD_OD_MIN = 0.55
FOLD_TEXTURE_MAX = 0.35  # local std of OD / local mean OD, above: textured tissue, not a fold
NEUTRAL_SAT_MAX = 0.06
EDGE_GRADIENT_MIN = 15.0  # grey levels across one thumbnail pixel
EDGE_MIN_PX = 24  # a neutral edge this long (thumbnail px) inside tissue is a rim or coverslip edge
UNSTAINED_OD_MIN = 0.05  # below: glass
BUBBLE_MIN_PX = 64  # an unstained region this large (a quarter tile at 16 px per tile) is a bubble
# A tile is flagged when at least this share of its area shows the artefact.
TILE_FRACTION = {"pen": 0.05, "fold": 0.3, "bubble": 0.15}
# Blur: variance of the Laplacian of a tile at the analysis resolution relative to the variance
# of its grey levels (so contrast does not count as sharpness), below: blurred. Sharp PCam
# patches: 1st percentile 0.31, median 6.8; Gaussian blur sigma 1.5 px: median 0.09, sigma 2: 0.04.
BLUR_VAR_MIN = 0.1
# Tiles with less grey-level contrast (standard deviation) than this are flat (smooth stroma,
# nearly empty): nothing to judge sharpness on, never called blurred.
BLUR_MIN_CONTRAST = 6.0


@dataclass(frozen=True, slots=True)
class QCSettings:
    """Which QC checks run and what happens to the tiles they flag.

    Attributes:
        enabled: run the artefact checks at all (the stain check always runs).
        keep_failed: analyse flagged tiles anyway (they are still reported).
        pen, fold, bubble, blur: the individual checks.
        blur_threshold: sharpness (:func:`sharpness`) below which a tile is blurred.
    """

    enabled: bool = True
    keep_failed: bool = False
    pen: bool = True
    fold: bool = True
    bubble: bool = True
    blur: bool = True
    blur_threshold: float = BLUR_VAR_MIN

    def __post_init__(self) -> None:
        try:
            t = float(self.blur_threshold)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"blur threshold must be a number, got {self.blur_threshold!r}") from exc
        if not 0.0 <= t < 1e6:
            raise ConfigError(f"blur threshold must be a non-negative number, got {self.blur_threshold!r}")
        object.__setattr__(self, "blur_threshold", t)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> QCSettings:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


# ------------------------------------------------------------------------------ stain


@dataclass(frozen=True, slots=True)
class StainReport:
    """The stain check of one slide.

    Attributes:
        kind: ``"he"``, ``"greyscale"``, ``"dab"``, ``"fluorescence"`` or ``"empty"``.
        scores: haematoxylin / eosin / DAB shares of the stain (0-1), colour fraction,
            background luminance.
        message: one line for the user; empty for H&E.
    """

    kind: str
    scores: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def is_he(self) -> bool:
        return self.kind in ("he", "empty")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scores": self.scores, "message": self.message}


def rgb_to_od(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-log10(I / 255)`` per channel, float32 (I clipped to >= 1)."""
    return -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)


# Rows per matrix product in :func:`_rows_matmul`: 16,384 x 3 x 3 stays under OpenBLAS's
# threshold for splitting a product over threads (65,536 x 4 multiply-adds).
MATMUL_ROWS = 16_384


def _rows_matmul(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``a @ m`` for ``(N, 3)`` pixels, in blocks of :data:`MATMUL_ROWS` rows: the same bits (each
    row's products are the same kernel's), but every block runs on the calling thread. Split over
    threads, a product this thin waited ~30-40 ms for a second thread on a loaded 2-core machine."""
    out = np.empty((a.shape[0], m.shape[1]), dtype=np.result_type(a, m))
    for s in range(0, a.shape[0], MATMUL_ROWS):
        np.matmul(a[s : s + MATMUL_ROWS], m, out=out[s : s + MATMUL_ROWS])
    return out


def rgb2hed(rgb: np.ndarray) -> np.ndarray:
    """Colour deconvolution (Ruifrok-Johnston): ``(..., 3)`` RGB -> ``(..., 3)`` H, E, DAB densities."""
    return rgb_to_od(rgb) @ HED_FROM_RGB


def _saturation(img: np.ndarray) -> np.ndarray:
    return max_min_saturation(img[..., 0], img[..., 1], img[..., 2])[2].astype(np.float32, copy=False)


def stain_check(rgb: np.ndarray, tissue: np.ndarray | None = None, glass: np.ndarray | None = None) -> StainReport:
    """Judge the stain of a slide thumbnail (see the module description).

    Args:
        rgb: ``uint8`` ``(H, W, 3)`` thumbnail.
        tissue: optional bool mask of the tissue; otherwise every non-glass pixel counts.
        glass: the glass colour (:func:`engine.slides.tissue.glass_colour`), if known.
    """
    from engine.slides.tissue import glass_colour

    p32 = sample_pixels(rgb, None, 400_000).astype(np.float32)
    lum = (p32[:, 0] + p32[:, 1] + p32[:, 2]) / 3.0
    background = float(np.percentile(lum, 90)) if lum.size else 255.0
    if background < FLUO_BACKGROUND_MAX:
        return StainReport(
            "fluorescence",
            {"background_luminance": round(background, 1)},
            "the slide has a dark background: a fluorescence image, not brightfield H&E",
        )
    glass = glass_colour(rgb) if glass is None else glass
    use = tissue is not None and tissue.shape == rgb.shape[:2] and tissue.any()
    sel = sample_pixels(rgb, tissue if use else None, 200_000)
    img = np.minimum(sel.astype(np.float32) * (255.0 / glass), 255.0)
    od = rgb_to_od(img)
    stained = np.maximum(np.maximum(od[:, 0], od[:, 1]), od[:, 2]) > GLASS_OD_MAX
    if not stained.any():
        return StainReport("empty", {"background_luminance": round(background, 1)}, "")
    img, od = img[stained], od[stained]
    coloured = float((_saturation(img) > COLOUR_SAT_MIN).mean())
    hed = np.clip(_rows_matmul(od, HED_FROM_RGB), 0.0, None)
    total = hed.sum(axis=0)
    shares = total / max(float(total.sum()), 1e-9)
    scores = {
        "haematoxylin": round(float(shares[0]), 4),
        "eosin": round(float(shares[1]), 4),
        "dab": round(float(shares[2]), 4),
        "colour_fraction": round(coloured, 4),
        "background_luminance": round(background, 1),
    }
    if coloured < GREY_COLOUR_FRACTION:
        return StainReport("greyscale", scores, "the slide has no colour: a greyscale image, not brightfield H&E")
    if shares[2] > DAB_SHARE_MIN or (shares[1] < DAB_NO_EOSIN and shares[2] > 0.35):
        return StainReport("dab", scores, f"DAB carries {shares[2]:.0%} of the stain: an IHC slide, not H&E")
    return StainReport("he", scores, "")


# ------------------------------------------------------------------------------ artefacts


def artefact_map(
    rgb: np.ndarray,
    tissue: np.ndarray | None,
    settings: QCSettings,
    stain: StainReport,
    glass: np.ndarray | None = None,
    smooth_sat: np.ndarray | None = None,
) -> np.ndarray:
    """Per thumbnail pixel artefact code (``OK``, ``PEN``, ``FOLD``, ``BUBBLE``), uint8 ``(H, W)``.

    Args:
        rgb: ``uint8`` thumbnail.
        tissue: the tissue mask at the same scale (fold statistics are taken on it).
        settings: which checks run.
        stain: the slide's stain report (colour rules need a colour slide).
        glass: the glass colour (:func:`engine.slides.tissue.glass_colour`), if known.
        smooth_sat: the 3x3 mean of the white-balanced thumbnail's saturation, if known
            (:attr:`engine.slides.tissue.TissueMask.saturation`, with the same ``glass``).
    """
    from scipy import ndimage

    from engine.slides.tissue import glass_colour

    h, w = rgb.shape[:2]
    out = np.zeros((h, w), dtype=np.uint8)
    if not settings.enabled or stain.kind in ("fluorescence", "empty"):
        return out
    colour = stain.kind != "greyscale"
    glass = glass_colour(rgb) if glass is None else glass
    if tissue is not None and tissue.shape == (h, w) and tissue.any():
        # artefacts matter where tiles have tissue: the tissue's bounding box plus a margin
        # (a sparse slide's thumbnail is mostly glass)
        ys, xs = np.flatnonzero(tissue.any(axis=1)), np.flatnonzero(tissue.any(axis=0))
        m = CROP_MARGIN_PX
        y0, y1 = max(0, ys[0] - m), min(h, ys[-1] + 1 + m)
        x0, x1 = max(0, xs[0] - m), min(w, xs[-1] + 1 + m)
        if (y1 - y0) * (x1 - x0) < 0.8 * h * w:
            out[y0:y1, x0:x1] = artefact_map(rgb[y0:y1, x0:x1], tissue[y0:y1, x0:x1], settings, stain, glass)
            return out
    # the white-balanced image and its optical density, as planes from per-level tables
    r, g, b = balanced_planes(rgb, glass)
    mx, _, sat = max_min_saturation(r, g, b)
    sat = sat.astype(np.float32)
    od_r, od_g, od_b = balanced_od_planes(rgb, glass)
    od = (od_r + od_g + od_b) / 3  # the channel mean, added in the same order as before
    check_fold = settings.fold and tissue is not None and tissue.any()
    # the smoothed saturation both the bubble and the fold checks use, computed once
    if not (colour and (settings.bubble or check_fold)):
        smooth_sat = None
    elif smooth_sat is None or smooth_sat.shape != (h, w):  # (a crop is smoothed at its own edges)
        smooth_sat = ndimage.uniform_filter(sat, 3)
    if settings.bubble and colour:
        out[_bubbles((r + g + b) / 3, smooth_sat, od)] = BUBBLE
    if check_fold:
        t_od = od[tissue]
        ref = float(np.median(t_od))
        ref_sat = float(np.median(sat[tissue]))
        mean = ndimage.uniform_filter(od, 3)
        sq = ndimage.uniform_filter(od * od, 3)
        texture = np.sqrt(np.maximum(sq - mean * mean, 0.0)) / np.maximum(mean, 1e-3)
        dark = mean > max(FOLD_OD_MIN, FOLD_OD_RATIO * ref)
        if colour:
            dark &= smooth_sat >= ref_sat
        fold = dark & (texture < FOLD_TEXTURE_MAX)
        out[fold] = FOLD
    if settings.pen and colour:
        pen = marker_ink(r, g, b, (mx <= DARK_INK_MAX) & (sat < DARK_INK_SAT))
        pen &= od > 0.05
        pen = morph.binary_opening(pen, morph.SQUARE2)
        out[pen] = PEN
    return out


def _bubbles(grey: np.ndarray, smooth_sat: np.ndarray, od: np.ndarray) -> np.ndarray:
    """Air bubbles and coverslip edges on a white-balanced colour thumbnail (``grey``: its channel
    mean): bool ``(H, W)``.

    A bubble pushes the stained tissue aside and leaves a grey, unstained disc (darker than
    glass, no colour) outlined by a rim: large unstained regions touching stained tissue are
    bubbles. Coverslip edges and bubble rims are long, sharp, neutral lines inside the tissue
    (bright or dark): edge pixels away from the glass whose connected line is long.
    """
    from scipy import ndimage

    neutral = smooth_sat < NEUTRAL_SAT_MAX
    unstained = neutral & (od > UNSTAINED_OD_MIN) & (od < 0.6)
    stained = smooth_sat > 0.15
    glass = od <= UNSTAINED_OD_MIN
    out = np.zeros(smooth_sat.shape, dtype=bool)
    labels, n = ndimage.label(morph.binary_opening(unstained))
    if n:
        sizes = np.bincount(labels.ravel())
        big = np.flatnonzero(sizes >= BUBBLE_MIN_PX)
        big = big[big > 0]
        if big.size:
            touch = np.bincount(labels[morph.binary_dilation(stained, iterations=3)].ravel(), minlength=n + 1)
            keep = np.zeros(n + 1, dtype=bool)
            keep[big] = touch[big] > 0
            out |= keep[labels]
    gy, gx = np.gradient(ndimage.uniform_filter(grey, 2))
    edges = neutral & (np.hypot(gx, gy) > EDGE_GRADIENT_MIN) & ~morph.binary_dilation(glass, iterations=2)
    labels, n = ndimage.label(edges, structure=np.ones((3, 3), bool))
    if n:
        sizes = np.bincount(labels.ravel())
        long_ = sizes >= EDGE_MIN_PX
        long_[0] = False
        out |= morph.binary_dilation(long_[labels])
    return out


def region_fractions(
    code_map: np.ndarray, downsample: float, x0: np.ndarray, y0: np.ndarray, size0: float
) -> dict[str, np.ndarray]:
    """Share of each level-0 square ``[x0, x0 + size0)`` covered by each artefact code."""
    from engine.slides.tissue import TissueMask

    fr: dict[str, np.ndarray] = {}
    for code in (PEN, FOLD, BUBBLE):
        m = code_map == code
        if not m.any():
            fr[REASONS[code]] = np.zeros(len(x0), dtype=np.float32)
            continue
        tm = TissueMask(m, float(downsample), float(m.mean()), REASONS[code])
        fr[REASONS[code]] = tm.fraction_in_rects(x0, y0, x0 + size0, y0 + size0)
    return fr


def tile_reasons(fractions: dict[str, np.ndarray]) -> np.ndarray:
    """Reason code per tile from its artefact fractions (pen before fold before bubble)."""
    n = len(next(iter(fractions.values()))) if fractions else 0
    codes = np.zeros(n, dtype=np.uint8)
    for name in ("bubble", "fold", "pen"):  # later ones win
        codes[fractions[name] >= TILE_FRACTION[name]] = REASONS.index(name)
    return codes


# ------------------------------------------------------------------------------ blur


def laplacian_variance(tiles: np.ndarray) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of each tile's grey levels: float32 ``(N,)``.

    Args:
        tiles: ``uint8`` ``(N, S, S, 3)``.
    """
    t = np.asarray(tiles)
    if t.ndim == 3:
        t = t[None]
    grey = t.astype(np.float32).mean(axis=3)
    lap = grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] - 4 * grey[:, 1:-1, 1:-1]
    return lap.reshape(lap.shape[0], -1).var(axis=1).astype(np.float32)


def sharpness(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(score, contrast)`` per tile: variance of the Laplacian over variance of the grey levels,
    and the grey levels' standard deviation; float32 ``(N,)`` each."""
    t = np.asarray(tiles)
    if t.ndim == 3:
        t = t[None]
    # channel sum in uint16 then one float conversion (a mean over a last axis of 3 is slow)
    grey = (t[..., 0].astype(np.uint16) + t[..., 1] + t[..., 2]).astype(np.float32) * np.float32(1 / 3)
    lap = grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] - 4 * grey[:, 1:-1, 1:-1]
    var_lap = lap.reshape(lap.shape[0], -1).var(axis=1)
    var_grey = grey.reshape(grey.shape[0], -1).var(axis=1)
    score = var_lap / np.maximum(var_grey, 1e-3)
    return score.astype(np.float32), np.sqrt(var_grey).astype(np.float32)


def is_blurred(score: np.ndarray, contrast: np.ndarray, threshold: float = BLUR_VAR_MIN) -> np.ndarray:
    """Blurred tiles: enough contrast to judge, and little of it at the finest scale."""
    return (contrast >= BLUR_MIN_CONTRAST) & (score < threshold)


class BlurScreen:
    """The blur check as a pipeline screen (:data:`engine.infer.pipeline.TileScreen`).

    Called by the read threads on every batch; records the score of every tile and which tiles
    are blurred; drops them unless ``keep``.
    """

    def __init__(self, threshold: float = BLUR_VAR_MIN, keep: bool = False) -> None:
        self.threshold = float(threshold)
        self.keep = keep
        self._lock = threading.Lock()
        self._rows: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._blurred: list[np.ndarray] = []

    def __call__(self, tiles: np.ndarray, rows: np.ndarray) -> np.ndarray:
        score, contrast = sharpness(tiles)
        blurred = is_blurred(score, contrast, self.threshold)
        with self._lock:
            self._rows.append(np.asarray(rows, dtype=np.int64).copy())
            self._scores.append(score)
            self._blurred.append(blurred)
        return np.ones(len(rows), dtype=bool) if self.keep else ~blurred

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of every screened tile, sorted by plan row."""
        with self._lock:
            if not self._rows:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            rows = np.concatenate(self._rows)
            scores = np.concatenate(self._scores)
        order = np.argsort(rows, kind="stable")
        return rows[order], scores[order]

    def blurred_rows(self) -> np.ndarray:
        """Plan rows of the blurred tiles, sorted."""
        with self._lock:
            if not self._rows:
                return np.zeros(0, np.int64)
            rows = np.concatenate(self._rows)
            blurred = np.concatenate(self._blurred)
        return np.sort(rows[blurred])


# ------------------------------------------------------------------------------ planner step


@dataclass(frozen=True, slots=True, eq=False)
class PlanQC:
    """The QC of a tile plan (``TilePlan.qc``).

    Attributes:
        settings: the QC settings.
        stain: the slide's stain report.
        xy: int64 ``(M, 2)`` level-0 corners of the flagged tiles; rc: int32 ``(M, 2)`` their cells.
        reason: uint8 ``(M,)`` reason codes (index into :data:`REASONS`).
        excluded: bool ``(M,)``: left out of the analysis (False with ``keep_failed``).
        code_map: uint8 thumbnail-scale artefact map; downsample: level-0 px per map pixel.
        area_fractions: share of the tissue area per artefact (pen, fold, bubble).
        seconds: time the QC step took.
    """

    settings: QCSettings
    stain: StainReport
    xy: np.ndarray
    rc: np.ndarray
    reason: np.ndarray
    excluded: np.ndarray
    code_map: np.ndarray
    downsample: float
    area_fractions: dict[str, float]
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """Flagged tiles per artefact (pen, fold, bubble)."""
        return {REASONS[c]: int((self.reason == c).sum()) for c in (PEN, FOLD, BUBBLE)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "stain": self.stain.to_dict(),
            "flagged": self.counts(),
            "excluded_tiles": int(self.excluded.sum()),
            "area_fractions": self.area_fractions,
            "seconds": round(self.seconds, 4),
        }


def thumbnail_qc(
    rgb: np.ndarray,
    tissue: np.ndarray | None,
    settings: QCSettings,
    glass: np.ndarray | None = None,
    smooth_sat: np.ndarray | None = None,
) -> tuple[StainReport, np.ndarray, dict[str, float]]:
    """Stain report, artefact code map and per-artefact share of the tissue area of a thumbnail
    (``glass``, ``smooth_sat``: its glass colour and smoothed saturation when tissue detection
    already found them)."""
    from engine.slides.tissue import glass_colour

    glass = glass_colour(rgb) if glass is None else glass
    stain = stain_check(rgb, tissue, glass)
    codes = artefact_map(rgb, tissue, settings, stain, glass, smooth_sat)
    area = tissue if tissue is not None and tissue.shape == codes.shape else np.ones(codes.shape, bool)
    n = max(int(area.sum()), 1)
    # ink and folds are left out of the tissue mask by its own rules; count them where they touch it
    near = area
    if tissue is not None and area.any():
        near = morph.binary_dilation(area, iterations=2)
    fr = {REASONS[c]: round(float(((codes == c) & near).sum()) / n, 6) for c in (PEN, FOLD, BUBBLE)}
    return stain, codes, fr


def apply_qc(reader: Any, plan: Any, settings: QCSettings) -> Any:
    """The planner's QC step: flag the planned tiles, drop the flagged ones unless ``keep_failed``.

    Args:
        reader: the slide.
        plan: a :class:`engine.slides.tiling.TilePlan` (tissue and ROI already applied).
        settings: the QC settings.

    Returns:
        The plan with ``qc`` set (and flagged tiles removed unless ``keep_failed``).
    """
    import dataclasses
    import time

    t0 = time.perf_counter()
    tissue = plan.tissue
    if tissue is not None and tissue.thumbnail is not None:
        rgb, tmask, ds, glass = tissue.thumbnail, tissue.mask, tissue.downsample, tissue.glass
        smooth_sat = tissue.saturation
    else:
        from engine.slides.damage import tolerant_thumbnail

        w0, h0 = reader.info.dimensions
        size = int(min(2048, max(64, 16 * max(w0, h0) / max(plan.tile_size_level0, 1))))
        rgb = tolerant_thumbnail(reader, size).rgb
        tmask, glass, smooth_sat = None, None, None
        ds = max(w0 / rgb.shape[1], h0 / rgb.shape[0])
    stain, codes, fr = thumbnail_qc(rgb, tmask, settings, glass, smooth_sat)
    xy = plan.level0_xy
    if settings.enabled and codes.any() and len(xy):
        tile_fr = region_fractions(
            codes, ds, xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64), plan.tile_size_level0
        )
        reason = tile_reasons(tile_fr)
    else:
        reason = np.zeros(len(xy), dtype=np.uint8)
    flagged = reason > 0
    qc = PlanQC(
        settings=settings,
        stain=stain,
        xy=xy[flagged].copy(),
        rc=plan.grid_rc[flagged].copy(),
        reason=reason[flagged],
        excluded=np.full(int(flagged.sum()), not settings.keep_failed),
        code_map=codes,
        downsample=float(ds),
        area_fractions=fr,
        seconds=time.perf_counter() - t0,
    )
    if settings.keep_failed or not flagged.any():
        return dataclasses.replace(plan, qc=qc)
    keep = ~flagged
    return dataclasses.replace(
        plan,
        level0_xy=xy[keep],
        grid_rc=plan.grid_rc[keep],
        tissue_fraction=plan.tissue_fraction[keep],
        qc=qc,
    )
