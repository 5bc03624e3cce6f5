"""Synthetic slides: deterministic texture, tumour looks like tumour, ground truth, cancel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import Cancelled, ConfigError
from engine.jobs import CancelToken, ProgressEvent
from engine.slides import open_slide
from engine.slides.synthetic import (
    FAKE_PATIENT_ID,
    Ellipse,
    SyntheticSlide,
    make_array_slide,
    make_texture,
    render_region,
    write_synthetic_slide,
)


def test_texture_is_deterministic_and_tile_independent() -> None:
    tex = make_texture(4096, 3072, seed=3)
    whole = tex.render(1000, 900, 512, 384)
    assert np.array_equal(whole, tex.render(1000, 900, 512, 384))
    stitched = np.concatenate(
        [np.concatenate([tex.render(1000 + i * 256, 900 + j * 192, 256, 192) for i in range(2)], axis=1) for j in range(2)]
    )
    assert np.array_equal(whole, stitched)
    assert not np.array_equal(whole, make_texture(4096, 3072, seed=4).render(1000, 900, 512, 384))
    assert np.array_equal(render_region(1000, 900, 64, 64, seed=3), whole[:64, :64])


def test_tumour_is_dense_dark_purple_and_stroma_pink() -> None:
    tumour = Ellipse(1000.0, 1000.0, 400.0, 400.0)
    tex = make_texture(2000, 2000, tissue_regions=(Ellipse(1000.0, 1000.0, 900.0, 900.0),), tumour_regions=(tumour,))
    t = tex.render(900, 900, 200, 200).astype(float)
    s = tex.render(1500, 1500, 200, 200).astype(float)
    g = tex.render(0, 0, 64, 64)
    assert (g == 250).all()  # glass
    # hematoxylin absorbs red and green: tumour is darker and bluer than the stroma
    assert t.mean() < s.mean() - 30
    assert (t[..., 2] - t[..., 1]).mean() > (s[..., 2] - s[..., 1]).mean()
    dark = lambda a: (a.mean(axis=2) < 110).mean()  # noqa: E731 - nucleus pixels
    assert dark(t) > 0.3 and dark(s) < 0.1 and dark(s) > 0.002


def test_ground_truth_masks(synthetic_svs: SyntheticSlide) -> None:
    e = synthetic_svs.tumour_regions[0]
    m = synthetic_svs.tumour_mask(4.0)
    assert m.shape == (768, 1024)
    assert m.sum() * 16 == pytest.approx(np.pi * e.rx * e.ry, rel=0.03)
    assert synthetic_svs.tumour_mask((10, 20)).shape == (10, 20)
    assert synthetic_svs.tissue_mask(4.0)[m].all()
    frac = synthetic_svs.tumour_fraction(np.array([[1500, 1300], [10, 10]]), 186)
    assert frac[0] == 1.0 and frac[1] == 0.0


def test_written_slide_matches_its_texture_losslessly(tmp_path: Path) -> None:
    s = write_synthetic_slide(tmp_path / "z.tif", 700, 500, flavour="generic", compression="zlib", levels=2, tile=128)
    assert s.level_dimensions == ((700, 500), (350, 250))
    with open_slide(s.path) as r:
        assert np.array_equal(r.read_region((0, 0), 0, (700, 500)), s.render_region(0, 0, 700, 500))
        assert np.array_equal(r.read_region((0, 0), 1, (350, 250)), s.render_region(0, 0, 350, 250, 2.0))


def test_label_carries_fake_patient_id(synthetic_svs: SyntheticSlide) -> None:
    assert synthetic_svs.label_text == FAKE_PATIENT_ID
    with open_slide(synthetic_svs.path) as r:
        label = r.associated_image("label")
    assert (label.mean(axis=2) < 100).mean() > 0.01  # text and frame are drawn


def test_progress_and_cancel(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    write_synthetic_slide(tmp_path / "p.svs", 600, 400, tile=128, levels=2, progress=events.append)
    assert events[-1].step == events[-1].total == 4 + 2
    token = CancelToken()

    def cancel_after_first(ev: ProgressEvent) -> None:
        token.cancel()

    with pytest.raises(Cancelled):
        write_synthetic_slide(tmp_path / "c.svs", 600, 400, tile=128, progress=cancel_after_first, cancel=token)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.svs"]  # nothing half-written


def test_array_slide_and_bad_arguments(tmp_path: Path) -> None:
    reader, truth = make_array_slide(512, 384, mpp=None)
    assert reader.info.mpp is None and not truth.mpp_in_file
    assert reader.info.level_count == 3
    with pytest.raises(ConfigError):
        write_synthetic_slide(tmp_path / "x.svs", 100, 100, flavour="hamamatsu")
    with pytest.raises(ConfigError):
        write_synthetic_slide(tmp_path / "x.svs", 100, 100, compression="webp")
    with pytest.raises(ConfigError):
        write_synthetic_slide(tmp_path / "x.svs", 100, 100, tile=100)
    with pytest.raises(ConfigError):
        Ellipse(0, 0, 0, 5)
    assert not (tmp_path / "x.svs").exists()
