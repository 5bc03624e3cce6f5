"""Drawing the QC mask: QC-flagged tiles hatched in their reason's colour, unreadable tiles solid.

Shared by ``overlay.png`` (:mod:`engine.infer.outputs`), the ``metascope qc`` report and the
app's QC layer, so all three look the same.
"""

from __future__ import annotations

import numpy as np

from engine.slides.qc import REASON_RGB, REASONS, UNREADABLE

#: Period in pixels of the diagonal hatching, and the share of it drawn in colour.
HATCH_PERIOD = 6
HATCH_ON = 2


def reason_rgba(codes: np.ndarray, hatch: bool = True) -> np.ndarray:
    """``uint8`` ``(H, W, 4)`` layer for a reason-code image (0 / NaN-free ints); transparent at 0.

    Artefacts are hatched (stripes of the reason colour, the rest lightly tinted); unreadable
    tiles are solid; background is a light grey wash.
    """
    codes = np.asarray(codes)
    h, w = codes.shape
    out = np.zeros((h, w, 4), dtype=np.uint8)
    # only the flagged pixels are looked at (usually a small share of the image)
    for code in np.unique(codes[codes > 0]):
        code = int(code)
        if code >= len(REASONS):
            continue
        m = codes == code
        rgb = REASON_RGB[REASONS[code]]
        out[m, :3] = rgb
        if code == UNREADABLE:
            out[m, 3] = 230
        elif REASONS[code] == "background":
            out[m, 3] = 60
        elif hatch:
            ys, xs = np.nonzero(m)  # row-major, the order of out[m]
            out[m, 3] = np.where((ys + xs) % HATCH_PERIOD < HATCH_ON, 235, 70)
        else:
            out[m, 3] = 235
    return out


def paint_reasons(img: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Blend :func:`reason_rgba` of ``codes`` (float with NaN, or ints) into RGB ``img`` in place."""
    c = np.nan_to_num(np.asarray(codes, dtype=np.float32), nan=0.0).astype(np.int16)
    layer = reason_rgba(c)
    m = layer[..., 3] > 0
    a = layer[m, 3:4].astype(np.float32) / 255.0
    img[m] = np.clip(img[m] * (1 - a) + layer[m, :3] * a + 0.5, 0, 255).astype(np.uint8)
    return img
