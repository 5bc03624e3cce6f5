"""Tissue detection on a slide thumbnail: Otsu on HSV saturation, then morphology.

The mask lives at thumbnail scale (at most ``max_size`` px on its longer side), so its memory
does not depend on the slide size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from engine.slides import morph
from engine.slides.base import SlideReader
from engine.slides.colour import balanced_planes, marker_ink, max_min_saturation, sample_pixels

# Saturation threshold bounds (0-1). The floor keeps scanner noise on glass from being split
# into "tissue"; the ceiling keeps pale stroma when the slide is mostly dense tissue and Otsu
# would split the tissue itself. The ceiling also scales with the tissue's own saturation
# (CEILING_OF_MEDIAN x its median), so a faintly stained slide keeps its pale stroma too.
SAT_THRESHOLD_MIN = 0.04
SAT_THRESHOLD_MAX = 0.15
CEILING_OF_MEDIAN = 0.5
# Optical density (log10, after white balance to the glass colour) below which a pixel is glass:
# ~6 grey levels below the glass, well above JPEG and sensor noise after smoothing.
GLASS_OD_MAX = 0.025
# Pixels this dark on every channel are the slide edge, a scanner border or dirt.
BLACK_MAX = 40
# Marker ink: engine.slides.colour.marker_ink (PEN_MARGIN, RED_INK_MARGIN there).
# Black/grey marker: dark and nearly neutral (dense H&E is dark but strongly purple).
DARK_INK_MAX = 120
DARK_INK_SAT = 0.25
# Glass estimate: the brightest, nearly neutral pixels. A slide whose glass is tinted or dim
# (white balance differs between scanners) is normalised so its glass becomes white.
GLASS_SAT_MAX = 0.12
GLASS_MIN_LUMINANCE = 160.0
GLASS_MIN_FRACTION = 0.005
# A thumbnail is greyscale when fewer than this share of its non-glass pixels carry colour.
GREY_COLOUR_FRACTION = 0.02
# Objects smaller than this area are specks (dust, debris); holes smaller than this are filled.
MIN_OBJECT_UM2 = 20_000.0  # ~140 x 140 um
MAX_HOLE_UM2 = 60_000.0
# Used when the slide has no mpp: the same areas expressed in mask pixels at max_size 2048.
# ... and never more than this share of the image (a patch is all "one object").
SMALL_IMAGE_FRACTION = 0.02
MIN_OBJECT_FRACTION = 2e-5
MAX_HOLE_FRACTION = 6e-5


@dataclass(frozen=True, slots=True, eq=False)
class TissueMask:
    """Where the tissue is, at thumbnail scale.

    Attributes:
        mask: ``bool`` array ``(H, W)``; True on tissue.
        downsample: level-0 pixels per mask pixel (same in x and y).
        tissue_fraction: fraction of mask pixels that are tissue (0-1).
        method: how the mask was made, e.g. ``"otsu-saturation(t=0.083)"``.
    """

    mask: np.ndarray
    downsample: float
    tissue_fraction: float
    method: str
    #: the RGB thumbnail the mask was made from (kept for slide QC), when detected from a slide
    thumbnail: np.ndarray | None = None
    #: bool mask of thumbnail pixels whose slide data could not be decoded, or ``None``
    damaged: np.ndarray | None = None
    #: the glass colour the thumbnail was white-balanced to (:func:`glass_colour`), for slide QC
    glass: np.ndarray | None = None
    #: the smoothed saturation of the white-balanced thumbnail (3x3 mean), for slide QC
    saturation: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != bool:
            raise ValueError("TissueMask.mask must be a 2-D bool array")
        if not self.downsample > 0:
            raise ValueError("TissueMask.downsample must be positive")

    @property
    def is_empty(self) -> bool:
        """True when no tissue was found."""
        return not bool(self.mask.any())

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the mask."""
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    def area_mm2(self, mpp: float) -> float:
        """Tissue area in mm^2 for a slide of ``mpp`` microns per level-0 pixel."""
        px_um = self.downsample * mpp
        return float(self.mask.sum()) * px_um * px_um / 1e6

    def fraction_in_rects(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
        """Area-weighted tissue fraction of level-0 rectangles ``[x0, x1) x [y0, y1)``.

        Exact for a mask that is constant on each mask pixel, including rectangles smaller than
        a mask pixel: the summed-area table of such a mask is bilinear within each pixel, so it is
        interpolated bilinearly at fractional coordinates.

        Args:
            x0, y0, x1, y1: arrays of the same shape ``(N,)`` in level-0 pixels.

        Returns:
            ``float32`` array ``(N,)`` in 0-1 (area outside the mask counts as no tissue).
        """
        sat = self._summed_area_table()
        ds = self.downsample
        h, w = self.shape

        def at(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            u = np.clip(np.asarray(xs, dtype=np.float64) / ds, 0.0, w)
            v = np.clip(np.asarray(ys, dtype=np.float64) / ds, 0.0, h)
            iu = np.minimum(u.astype(np.int64), w - 1)
            iv = np.minimum(v.astype(np.int64), h - 1)
            fu = u - iu
            fv = v - iv
            s00 = sat[iv, iu]
            s01 = sat[iv, iu + 1]
            s10 = sat[iv + 1, iu]
            s11 = sat[iv + 1, iu + 1]
            return (s00 * (1 - fu) + s01 * fu) * (1 - fv) + (s10 * (1 - fu) + s11 * fu) * fv

        area = (np.asarray(x1, dtype=np.float64) - x0) * (np.asarray(y1, dtype=np.float64) - y0) / (ds * ds)
        inside = at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(area > 0, inside / area, 0.0)
        return np.clip(frac, 0.0, 1.0).astype(np.float32)

    def _summed_area_table(self) -> np.ndarray:
        h, w = self.shape
        # pixel counts: integer sums are exact (as float64 ones were) and several times faster
        dtype = np.int32 if h * w < 2**31 else np.int64
        sat = np.zeros((h + 1, w + 1), dtype=dtype)
        np.cumsum(self.mask, axis=1, dtype=dtype, out=sat[1:, 1:])
        np.cumsum(sat[1:, 1:], axis=0, out=sat[1:, 1:])
        return sat


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in 0-1 (maximises between-class variance)."""
    if values.size == 0:
        return 1.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def glass_colour(rgb: np.ndarray) -> np.ndarray:
    """Estimate the colour of bare glass in an RGB thumbnail.

    The glass is the brightest, nearly neutral part of a slide: pixels within a few grey levels
    of the 99th luminance percentile whose saturation is low. When there are too few such
    pixels (a patch or a photo filled with tissue) or they are dark, white is assumed.

    Args:
        rgb: ``uint8`` ``(H, W, 3)``.

    Returns:
        ``float32`` ``(3,)`` RGB of the glass (each 1-255).
    """
    white = np.full(3, 255.0, np.float32)
    if rgb.size == 0:
        return white
    # a subsample is plenty for percentiles and keeps this cheap on 2048 px thumbnails
    img = sample_pixels(rgb, None, 262_144).astype(np.float32)
    r, g, b = img[:, 0], img[:, 1], img[:, 2]
    lum = (r + g + b) / np.float32(3.0)
    sat = max_min_saturation(r, g, b)[2]
    top = float(np.percentile(lum, 99))
    bright = (lum >= top - 12.0) & (sat <= GLASS_SAT_MAX)
    if bright.sum() < GLASS_MIN_FRACTION * lum.size or top < GLASS_MIN_LUMINANCE:
        return white
    colour = np.median(img[bright], axis=0)
    return np.clip(colour, GLASS_MIN_LUMINANCE, 255.0).astype(np.float32)


def tissue_from_rgb(
    rgb: np.ndarray,
    downsample: float,
    mpp: float | None = None,
) -> TissueMask:
    """Tissue mask of an RGB thumbnail.

    Steps: white-balance to the glass colour (:func:`glass_colour`); glass is what stays near
    white (optical density below :data:`GLASS_OD_MAX`); black borders and marker ink are
    excluded; the rest is split by Otsu's threshold on saturation (bounded, see
    :data:`SAT_THRESHOLD_MIN`). A greyscale thumbnail has no saturation to use, so there any
    non-glass, non-black pixel is tissue. Then small gaps are closed, small holes filled and
    specks dropped.

    Args:
        rgb: ``uint8`` ``(H, W, 3)`` thumbnail.
        downsample: level-0 pixels per thumbnail pixel.
        mpp: level-0 microns per pixel, used to express the speck/hole sizes physically; when
            ``None`` they are a fraction of the thumbnail area.

    Returns:
        The :class:`TissueMask` (empty when there is no tissue).
    """
    from scipy import ndimage

    glass = glass_colour(rgb)
    # the white-balanced image as planes from per-level tables (engine.slides.colour)
    r, g, b = balanced_planes(rgb, glass)
    mx, mn, sat = max_min_saturation(r, g, b)
    sat = sat.astype(np.float32)  # (0 where mx is 0: mn is 0 too)
    od = np.log10(255.0 / np.maximum(mn, 1.0)).astype(np.float32)
    # smooth out JPEG noise and single nuclei before thresholding
    sat = ndimage.uniform_filter(sat, size=3)
    od = ndimage.uniform_filter(od, size=3)

    black = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) <= BLACK_MAX
    not_glass = (od > GLASS_OD_MAX) & ~black
    coloured = not_glass & (sat > SAT_THRESHOLD_MIN)
    n_not_glass = int(not_glass.sum())
    if n_not_glass and coloured.sum() < GREY_COLOUR_FRACTION * n_not_glass:
        # a greyscale image: density is all there is to go on
        mask = not_glass
        t = 0.0
        method = f"od-greyscale(t={GLASS_OD_MAX:.3f})"
    else:
        pen = marker_ink(r, g, b, (mx <= DARK_INK_MAX) & (sat < DARK_INK_SAT))
        # smoothing spreads ink colour one pixel onto the glass beside a stroke: drop that fringe
        pen = morph.binary_dilation(pen, morph.SQUARE3)
        candidates = not_glass & ~pen
        if not candidates.any():
            return TissueMask(
                np.zeros(rgb.shape[:2], dtype=bool),
                downsample,
                0.0,
                "otsu-saturation(empty)",
                glass=glass,
                saturation=sat,
            )
        values = sat[candidates]
        ceiling = min(SAT_THRESHOLD_MAX, CEILING_OF_MEDIAN * float(np.median(values)))
        t = otsu_threshold(values)
        t = float(min(max(t, SAT_THRESHOLD_MIN), max(ceiling, SAT_THRESHOLD_MIN)))
        mask = candidates & (sat > t)
        method = f"otsu-saturation(t={t:.3f})"

    npx = mask.size
    if mpp is not None:
        px_um2 = (downsample * mpp) ** 2
        # on a patch or a small crop the physical speck size would be the whole image
        min_obj = min(MIN_OBJECT_UM2 / px_um2, SMALL_IMAGE_FRACTION * npx)
        max_hole = min(MAX_HOLE_UM2 / px_um2, SMALL_IMAGE_FRACTION * npx)
    else:
        min_obj = MIN_OBJECT_FRACTION * npx
        max_hole = MAX_HOLE_FRACTION * npx

    # close small gaps between tissue fragments, then fill small holes (nuclei-free lumens
    # and fat inside tissue) and drop specks
    # (padded with the edge values: a zero border would erode tissue cut off at the slide edge)
    padded = np.pad(mask, 1, mode="edge")
    mask = morph.binary_closing(padded, morph.SQUARE3)[1:-1, 1:-1]
    mask = _fill_small_holes(mask, max_hole)
    mask = _remove_small_objects(mask, min_obj)
    frac = float(mask.mean()) if npx else 0.0
    return TissueMask(mask, float(downsample), frac, method, glass=glass, saturation=sat)


def detect_tissue(reader: SlideReader, max_size: int = 2048, *, mask_mpp: float | None = None) -> TissueMask:
    """Detect tissue on a thumbnail of ``reader``.

    Args:
        reader: the slide.
        max_size: longer side of the thumbnail the mask is computed on (bounds memory and time).
        mask_mpp: optional mask resolution in microns per mask pixel; the thumbnail is made no
            finer than that (and never larger than ``max_size``). Needs the slide's mpp.

    Returns:
        A :class:`TissueMask`; ``mask.is_empty`` on a blank slide (no exception).
    """
    w0, h0 = reader.info.dimensions
    slide_mpp = reader.info.mpp_or(None) if reader.info.mpp is not None else None
    size = int(max_size)
    if mask_mpp is not None and slide_mpp:
        wanted_ds = max(mask_mpp / slide_mpp, 1.0)
        size = min(size, max(1, round(max(w0, h0) / wanted_ds)))
    from engine.slides.damage import tolerant_thumbnail

    # damaged tiles in the thumbnail's level are read around (white: never tissue)
    tn = tolerant_thumbnail(reader, max(size, 1))
    thumb = tn.rgb
    th, tw = thumb.shape[:2]
    downsample = max(w0 / tw, h0 / th)
    mask = tissue_from_rgb(thumb, downsample, slide_mpp)
    return dataclasses.replace(mask, thumbnail=thumb, damaged=tn.damaged)


def _remove_small_objects(mask: np.ndarray, min_size: float) -> np.ndarray:
    from scipy import ndimage

    if min_size <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_size: float) -> np.ndarray:
    from scipy import ndimage

    if max_size <= 0 or not mask.any():
        return mask
    # the holes of ndimage.binary_fill_holes (4-connected background not reachable from the
    # image border), found with one labelling of the background instead of its slow flood fill
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_size
    small[0] = False
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        small[edge] = False  # background touching the border is not a hole
    if not small.any():
        return mask
    return mask | small[labels]
