"""Per-channel colour transforms of a uint8 thumbnail, by 256-entry lookup tables, as planes.

Tissue detection and slide QC white-balance a thumbnail to its glass colour and take optical
densities of it, per pixel and channel. Each of those values depends only on the channel and its
8-bit level, so it is computed once per level (the same float operations on a 256-entry table)
and looked up: the same bits as computing it for every pixel, in a fraction of the time. The
results are separate contiguous ``(H, W)`` planes: elementwise work on a channel of an
``(H, W, 3)`` array strides over memory and is several times slower.
"""

from __future__ import annotations

import numpy as np

_LEVELS = np.arange(256, dtype=np.float32)

# Marker ink (tissue detection and slide QC): in H&E (pink eosin, purple hematoxylin) green is
# the weakest channel and red is never the weakest by a margin; green ink has green above red,
# blue ink red far below blue.
PEN_MARGIN = 15
# Red marker: red far above both green and blue (eosin has blue well above green).
RED_INK_MARGIN = 90


def _lookup(rgb: np.ndarray, tables: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # (indexing with the uint8 plane gathers faster than np.take)
    r, g, b = (t[rgb[..., c]] for c, t in enumerate(tables))
    return r, g, b


def balance_tables(glass: np.ndarray) -> list[np.ndarray]:
    """Per channel, ``np.minimum(level * (255.0 / glass), 255.0)`` for the 256 levels (the dtype
    follows ``glass``'s, as that expression's does on a float32 image)."""
    scale = 255.0 / glass
    return [np.minimum(_LEVELS * scale[c], 255.0) for c in range(3)]


def balanced_planes(rgb: np.ndarray, glass: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The planes of ``np.minimum(rgb.astype(np.float32) * (255.0 / glass), 255.0)``, bit for bit.

    Args:
        rgb: ``uint8`` ``(..., 3)``.
        glass: the glass colour, ``(3,)`` (:func:`engine.slides.tissue.glass_colour`).

    Returns:
        ``(r, g, b)``, each ``(...)`` contiguous.
    """
    return _lookup(rgb, balance_tables(glass))


def balanced_od_planes(rgb: np.ndarray, glass: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The planes of :func:`engine.slides.qc.rgb_to_od` of the white-balanced image
    (``-log10(max(I, 1) / 255)`` in float32), bit for bit."""
    tables = [-np.log10(np.maximum(t.astype(np.float32), 1.0) / 255.0) for t in balance_tables(glass)]
    return _lookup(rgb, tables)


def max_min_saturation(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel ``(max, min, (max - min) / max(max, 1))`` of three channel planes (elementwise:
    much faster than a reduce over a last axis of 3); the dtype follows the planes'."""
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    return mx, mn, (mx - mn) / np.maximum(mx, 1.0)


def marker_ink(r: np.ndarray, g: np.ndarray, b: np.ndarray, dark_ink: np.ndarray) -> np.ndarray:
    """Pixels of green, blue or red marker ink on white-balanced planes, or ``dark_ink`` (the
    caller's rule for black/grey marker, which tissue detection and QC set differently)."""
    red_ink = (r > g + RED_INK_MARGIN) & (r > b + RED_INK_MARGIN)
    return (g > r + PEN_MARGIN) | ((r <= g) & (b > r + 3 * PEN_MARGIN)) | dark_ink | red_ink


def sample_pixels(rgb: np.ndarray, mask: np.ndarray | None, limit: int) -> np.ndarray:
    """``(N, 3)`` pixels of ``rgb`` (those under ``mask`` when given, in row-major order), every
    k-th of them when there are more than ``limit`` (``k = n // limit + 1``).

    Bit for bit ``rgb[mask][::k]``, but only the kept pixels are gathered.
    """
    flat = rgb.reshape(-1, 3)
    if mask is None:
        return flat[:: flat.shape[0] // limit + 1] if flat.shape[0] > limit else flat
    rows = np.flatnonzero(mask)
    return flat[rows[:: rows.size // limit + 1] if rows.size > limit else rows]
