"""Lookup tables, channel planes and one-thread colour products change nothing (issue 15).

Tissue detection and slide QC take the white-balanced thumbnail and its optical density from
256-entry tables per channel as contiguous planes (``engine/slides/colour.py``), the stain check
gathers only the tissue pixels it samples and multiplies by the stain matrix in blocks of rows
that OpenBLAS runs on one thread, and QC reuses tissue detection's smoothed saturation. Here each
piece is compared with the expression it replaced, and a generated slide with artefacts (and its
greyscale and DAB versions) goes through tissue detection, QC and the heatmap both ways.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from engine.infer.pipeline import InferenceConfig, compute_heatmap
from engine.slides import colour, qc, tissue
from engine.slides.artefacts import add_bubble, add_fold, draw_pen, to_dab, to_greyscale
from engine.slides.base import ArrayReader
from engine.slides.synthetic import make_texture


def _old_img(rgb: np.ndarray, glass: np.ndarray) -> np.ndarray:
    return np.minimum(rgb.astype(np.float32) * (255.0 / glass), 255.0)


def _old_planes(rgb: np.ndarray, glass: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = _old_img(rgb, glass)
    return img[..., 0], img[..., 1], img[..., 2]


def _old_od_planes(rgb: np.ndarray, glass: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    od = qc.rgb_to_od(_old_img(rgb, glass))
    return od[..., 0], od[..., 1], od[..., 2]


def _old_sample(rgb: np.ndarray, mask: np.ndarray | None, limit: int) -> np.ndarray:
    sel = rgb[mask] if mask is not None else rgb.reshape(-1, 3)
    return sel[:: sel.shape[0] // limit + 1] if sel.shape[0] > limit else sel


def _every_level(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    flat = rgb.reshape(-1)
    n = min(flat.size, 256 * 5)
    flat[:n] = np.tile(np.arange(256, dtype=np.uint8), 5)[:n]  # every level in every channel and lane
    return rgb


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_planes_equal_the_per_pixel_expressions(dtype: type) -> None:
    rng = np.random.default_rng(1)
    for shape, glass in (((37, 53), (255, 255, 255)), ((61, 29), (231.5, 244.0, 239.25)), ((1, 7), (160, 200, 255))):
        rgb = _every_level(rng, shape)
        g = np.asarray(glass, dtype=dtype)
        for got, want in zip(colour.balanced_planes(rgb, g), _old_planes(rgb, g), strict=True):
            assert got.dtype == want.dtype and got.flags.c_contiguous
            np.testing.assert_array_equal(got, want)
        for got, want in zip(colour.balanced_od_planes(rgb, g), _old_od_planes(rgb, g), strict=True):
            assert got.dtype == want.dtype == np.float32
            np.testing.assert_array_equal(got, want)


def test_sampled_pixels_equal_all_then_every_kth() -> None:
    rng = np.random.default_rng(3)
    for shape, p, limit in (
        ((300, 500), 0.7, 20_000),
        ((300, 500), 0.05, 20_000),
        ((40, 50), 1.0, 2000),
        ((9, 9), 0.0, 5),
    ):
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        mask = rng.random(shape) < p
        for m in (mask, None):
            np.testing.assert_array_equal(colour.sample_pixels(rgb, m, limit), _old_sample(rgb, m, limit))


def test_blocked_stain_product_equals_one_product() -> None:
    rng = np.random.default_rng(2)
    for n in (0, 1, 5, qc.MATMUL_ROWS - 1, qc.MATMUL_ROWS, qc.MATMUL_ROWS + 3, 2 * qc.MATMUL_ROWS + 17):
        od = (rng.random((n, 3)) * 2.5).astype(np.float32)
        od[rng.random((n, 3)) < 0.1] = 0.0
        np.testing.assert_array_equal(qc._rows_matmul(od, qc.HED_FROM_RGB), od @ qc.HED_FROM_RGB)


@pytest.fixture(scope="module")
def artefact_rgb() -> np.ndarray:
    rgb = make_texture(1024, 1024, 0.5, seed=11).render(0, 0, 1024, 1024)
    draw_pen(rgb, [(120, 200), (480, 300), (900, 150)], width=40, colour="green")
    draw_pen(rgb, [(150, 850), (600, 900)], width=30, colour="black")
    add_fold(rgb, (350, 350, 700, 620))
    add_bubble(rgb, (760, 700), 120)
    rgb[300:330, 600:640] = 246  # a small hole
    return rgb


def _old_way(m: pytest.MonkeyPatch) -> None:
    """The previous computations: per-pixel expressions on the interleaved image, one product,
    all tissue pixels gathered, and QC smoothing its own saturation."""
    m.setattr(tissue, "balanced_planes", _old_planes)
    m.setattr(qc, "balanced_planes", _old_planes)
    m.setattr(qc, "balanced_od_planes", _old_od_planes)
    m.setattr(qc, "_rows_matmul", lambda a, b: a @ b)
    m.setattr(qc, "sample_pixels", _old_sample)
    detect = tissue.tissue_from_rgb
    m.setattr(tissue, "tissue_from_rgb", lambda *a, **k: dataclasses.replace(detect(*a, **k), saturation=None))


@pytest.mark.parametrize("variant", ["he", "greyscale", "dab"])
def test_tissue_and_qc_are_unchanged(artefact_rgb: np.ndarray, variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = {"he": artefact_rgb, "greyscale": to_greyscale(artefact_rgb), "dab": to_dab(artefact_rgb)}[variant]

    def run():  # type: ignore[no-untyped-def]
        mask = tissue.tissue_from_rgb(rgb, 4.0, 0.5)
        # glass given (as the planner does) and found here; the tissue's box and a crop of it
        crop = np.zeros(mask.mask.shape, bool)
        crop[100:700, 150:800] = mask.mask[100:700, 150:800]
        return (
            mask,
            qc.thumbnail_qc(rgb, mask.mask, qc.QCSettings(), mask.glass, mask.saturation),
            qc.thumbnail_qc(rgb, crop, qc.QCSettings()),
            # tissue everywhere: the whole thumbnail is checked (no crop), with the saturation given
            qc.thumbnail_qc(rgb, np.ones(mask.mask.shape, bool), qc.QCSettings(), mask.glass, mask.saturation),
        )

    new = run()
    with monkeypatch.context() as m:
        _old_way(m)
        old = run()
    np.testing.assert_array_equal(new[0].mask, old[0].mask)
    assert new[0].method == old[0].method
    for (s1, c1, f1), (s0, c0, f0) in zip(new[1:], old[1:], strict=True):
        assert s1 == s0 and f1 == f0
        np.testing.assert_array_equal(c1, c0)
    if variant == "he":
        codes = set(np.unique(new[1][1]).tolist())
        assert {qc.PEN, qc.FOLD, qc.BUBBLE} <= codes, codes  # every check had work to do


def test_heatmap_is_unchanged(artefact_rgb: np.ndarray, demo_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run():  # type: ignore[no-untyped-def]
        return compute_heatmap(ArrayReader(artefact_rgb, mpp=0.5, levels=3), demo_onnx, InferenceConfig(batch_size=16))

    new = run()
    with monkeypatch.context() as m:
        _old_way(m)
        old = run()
    assert new.plan.qc.counts() == old.plan.qc.counts() and new.plan.qc.counts()["pen"]
    np.testing.assert_array_equal(new.plan.qc.code_map, old.plan.qc.code_map)
    np.testing.assert_array_equal(new.plan.level0_xy, old.plan.level0_xy)
    np.testing.assert_array_equal(new.grid, old.grid)
    np.testing.assert_array_equal(new.probabilities, old.probabilities)
    for res in (new, old):
        res.summary["qc"].pop("seconds")  # the QC step's own time
    assert new.summary == old.summary
