"""Binary morphology with small structuring elements, bit-identical to ``scipy.ndimage``.

Tissue detection and slide QC dilate, erode, open and close thumbnail-sized masks with 2x2,
3x3 and cross-shaped elements. ``scipy.ndimage``'s generic per-pixel loop spends ~10 ms per call
on a 1.5 MP mask; an OR / AND of a few shifted slices gives the same pixels in a fraction of
that. Semantics follow scipy's defaults exactly (``border_value=0``, ``origin=0``): pixels
outside the image are False, so erosion clears the border and dilation never grows from it;
``iterations=k`` applies the element k times (tests compare every function with scipy).
"""

from __future__ import annotations

import numpy as np

#: ``(dy, dx)`` offsets of scipy's default element (``generate_binary_structure(2, 1)``).
CROSS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
#: A 3x3 square element (``np.ones((3, 3), bool)``).
SQUARE3 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
#: A 2x2 square element (``np.ones((2, 2), bool)``): scipy centres an even element at index 1
#: for erosion and, reflected, at index 0 for dilation.
SQUARE2 = ((0, 0), (0, 1), (1, 0), (1, 1))


def _reflect(offsets: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return tuple((-dy, -dx) for dy, dx in offsets)


def _even_shift(offsets: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    # offsets of an element given as SQUARE2 (index 0 at the origin): scipy's erosion centre is index 1
    return tuple((dy - 1, dx - 1) for dy, dx in offsets) if offsets == SQUARE2 else offsets


def _combine(mask: np.ndarray, offsets: tuple[tuple[int, int], ...], dilate: bool) -> np.ndarray:
    """OR (dilate) or AND (erode) of ``mask[y + dy, x + dx]`` over ``offsets``; outside is False."""
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = np.zeros((h + 2 * r, w + 2 * r), dtype=bool)
    padded[r : r + h, r : r + w] = m
    out: np.ndarray | None = None
    for dy, dx in offsets:
        view = padded[r + dy : r + dy + h, r + dx : r + dx + w]
        if out is None:
            out = view.copy()
        elif dilate:
            np.logical_or(out, view, out=out)
        else:
            np.logical_and(out, view, out=out)
    assert out is not None
    return out


def binary_dilation(mask: np.ndarray, element: tuple[tuple[int, int], ...] = CROSS, iterations: int = 1) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, structure, iterations)`` for :data:`CROSS`,
    :data:`SQUARE3` or :data:`SQUARE2` (``structure=np.ones((2, 2))``)."""
    offsets = _reflect(_even_shift(element))
    out = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        out = _combine(out, offsets, dilate=True)
    return out


def binary_erosion(mask: np.ndarray, element: tuple[tuple[int, int], ...] = CROSS, iterations: int = 1) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, structure, iterations)`` (border_value 0)."""
    offsets = _even_shift(element)
    out = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        out = _combine(out, offsets, dilate=False)
    return out


def binary_opening(mask: np.ndarray, element: tuple[tuple[int, int], ...] = CROSS, iterations: int = 1) -> np.ndarray:
    """``scipy.ndimage.binary_opening``: erosion, then dilation, each ``iterations`` times."""
    return binary_dilation(binary_erosion(mask, element, iterations), element, iterations)


def binary_closing(mask: np.ndarray, element: tuple[tuple[int, int], ...] = CROSS, iterations: int = 1) -> np.ndarray:
    """``scipy.ndimage.binary_closing``: dilation, then erosion (border_value 0, as scipy)."""
    return binary_erosion(binary_dilation(mask, element, iterations), element, iterations)
