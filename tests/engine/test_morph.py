"""Fast binary morphology (engine/slides/morph.py) and hole filling: the same pixels as scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.slides import morph
from engine.slides.tissue import _fill_small_holes

ELEMENTS = {
    "cross": (morph.CROSS, None),
    "square3": (morph.SQUARE3, np.ones((3, 3), bool)),
    "square2": (morph.SQUARE2, np.ones((2, 2), bool)),
}


def _masks(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.ones((1, 9), bool), np.ones((6, 1), bool)]
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        out.append(rng.random((h, w)) < rng.random())
    return out


@pytest.mark.parametrize("name", sorted(ELEMENTS))
@pytest.mark.parametrize("op", ["binary_dilation", "binary_erosion", "binary_opening", "binary_closing"])
def test_morphology_equals_scipy(name: str, op: str) -> None:
    element, structure = ELEMENTS[name]
    for mask in _masks(seed=len(name) + len(op), n=60):
        for iterations in (1, 2, 3):
            want = getattr(ndimage, op)(mask, structure=structure, iterations=iterations)
            got = getattr(morph, op)(mask, element, iterations)
            assert got.dtype == bool and got.shape == mask.shape
            np.testing.assert_array_equal(got, want, err_msg=f"{op} {name} x{iterations} on {mask.shape}")


def _fill_small_holes_flood(mask: np.ndarray, max_size: float) -> np.ndarray:
    """The previous implementation (scipy's flood fill), as the reference."""
    if max_size <= 0 or not mask.any():
        return mask
    holes = ndimage.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    labels, _ = ndimage.label(holes)
    small = np.bincount(labels.ravel()) <= max_size
    small[0] = False
    return mask | small[labels]


def test_small_holes_are_filled_as_by_the_flood_fill() -> None:
    rng = np.random.default_rng(7)
    for mask in _masks(seed=11, n=400):
        if rng.random() < 0.5:
            mask = ndimage.binary_closing(mask)  # rings and blobs with real holes
        for max_size in (0, 1, 3, 20, 1e9):
            np.testing.assert_array_equal(_fill_small_holes(mask, max_size), _fill_small_holes_flood(mask, max_size))
