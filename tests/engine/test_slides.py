"""Slide readers and open_slide: backends, info fields, region reads, bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import ConfigError, MetaScopeError, MissingMppError, SlideOpenError
from engine.slides import ArrayReader, open_slide
from engine.slides.fast_reader import FastTiffReader
from engine.slides.image_reader import ImageReader
from engine.slides.openslide_reader import rgba_to_rgb_white
from engine.slides.synthetic import SyntheticSlide


def test_svs_info_fields(synthetic_svs: SyntheticSlide) -> None:
    with open_slide(synthetic_svs.path) as r:
        info = r.info
        assert isinstance(r, FastTiffReader)  # OpenSlide's view, pixels decoded by tifffile
        assert info.vendor == "aperio"
        assert info.dimensions == (4096, 3072)
        assert info.level_dimensions == ((4096, 3072), (2048, 1536), (1024, 768))
        assert info.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert info.mpp == pytest.approx((0.5, 0.5))
        assert not info.mpp_from_user
        assert info.objective_power == 20
        assert info.associated_images == ("label",)
        d = info.to_dict()
        assert d["mpp_source"] == "file"
        assert d["level_count"] == 3


def test_generic_tiff_has_no_mpp_and_never_guesses(synthetic_tiff_no_mpp: SyntheticSlide) -> None:
    with open_slide(synthetic_tiff_no_mpp.path) as r:
        assert r.info.vendor == "generic-tiff"
        assert r.info.mpp is None
        assert r.info.to_dict()["mpp_source"] is None
        assert r.info.associated_images == ()
        with pytest.raises(MissingMppError, match="--mpp"):
            r.info.mpp_or(None)


def test_caller_mpp_fills_in_and_overrides(synthetic_tiff_no_mpp: SyntheticSlide, synthetic_svs: SyntheticSlide) -> None:
    with open_slide(synthetic_tiff_no_mpp.path, mpp=0.25) as r:
        assert r.info.mpp == (0.25, 0.25)
        assert r.info.mpp_from_user
        assert r.info.to_dict()["mpp_source"] == "user"
    with open_slide(synthetic_svs.path, mpp=0.3) as r:
        assert r.info.mpp == (0.3, 0.3)
        assert r.info.mpp_from_user


@pytest.mark.parametrize("bad", [0, -1, float("nan"), 500, "abc"])
def test_implausible_mpp_is_a_config_error(synthetic_svs: SyntheticSlide, bad: object) -> None:
    with pytest.raises(ConfigError, match="mpp"):
        open_slide(synthetic_svs.path, mpp=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [0, 1, 2])
def test_region_reads_match_ground_truth(synthetic_svs: SyntheticSlide, level: int) -> None:
    """Pixels read through OpenSlide equal the rendered texture (up to JPEG loss) at every level."""
    with open_slide(synthetic_svs.path) as r:
        ds = r.info.level_downsamples[level]
        xy = (1200, 1000)  # over the tumour edge: nuclei, stroma and background structure
        got = r.read_region(xy, level, (256, 192))
        assert got.dtype == np.uint8 and got.shape == (192, 256, 3)
        want = synthetic_svs.render_region(*xy, 256, 192, ds)
        assert np.abs(got.astype(int) - want).mean() < 5
        # an ArrayReader (2x box pyramid) over the full-resolution texture of the same area agrees
        crop = ArrayReader(synthetic_svs.render_region(*xy, 1024, 768), mpp=0.5, levels=3)
        ref = crop.read_region((0, 0), level, (256 // 2**level, 192 // 2**level))
        got_small = got[: ref.shape[0], : ref.shape[1]].astype(int)
        assert np.abs(got_small - ref).mean() < 12


def test_reads_outside_the_slide_are_white(synthetic_svs: SyntheticSlide) -> None:
    with open_slide(synthetic_svs.path) as r:
        out = r.read_region((-100, -100), 0, (50, 50))
        assert (out == 255).all()
        edge = r.read_region((4096 - 10, 100), 0, (20, 20))
        assert (edge[:, 10:] == 255).all()


def test_alpha_is_composited_over_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[0, 1] = (100, 100, 100, 128)
    out = rgba_to_rgb_white(rgba)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[1, 1].tolist() == [255, 255, 255]
    assert 170 <= out[0, 1, 0] <= 180


def test_thumbnail_size_and_content(synthetic_svs: SyntheticSlide, synthetic_tiff_no_mpp: SyntheticSlide) -> None:
    with open_slide(synthetic_tiff_no_mpp.path) as r:
        assert r.thumbnail(100_000).shape == (1536, 2048, 3)  # never upsampled
    with open_slide(synthetic_svs.path) as r:
        th = r.thumbnail(512)
        assert th.shape == (384, 512, 3) and th.dtype == np.uint8
        # the thumbnail shows the tissue where the ground truth has it
        tissue = synthetic_svs.tissue_mask((384, 512))
        assert th[tissue].mean() < th[~tissue].mean() - 40


def test_striped_thumbnail_matches_whole_level(
    synthetic_svs: SyntheticSlide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge single level is read in strips; the result matches a one-piece resize."""
    from engine.slides import resample

    with open_slide(synthetic_svs.path) as r:
        whole = r.thumbnail(300).astype(int)
        monkeypatch.setattr(resample, "WHOLE_LEVEL_MAX_PIXELS", 1000)
        strips = resample.striped_thumbnail(r, 300, strip_budget_bytes=200_000).astype(int)
    assert strips.shape == whole.shape
    assert np.abs(strips - whole).mean() < 2


def test_label_is_listed_but_read_only_on_request(synthetic_svs: SyntheticSlide) -> None:
    with open_slide(synthetic_svs.path) as r:
        assert "label" in r.info.associated_images
        label = r.associated_image("label")
        assert label.shape == (300, 400, 3)
        with pytest.raises(KeyError):
            r.associated_image("macro")


def test_concurrent_reads_are_consistent(synthetic_svs: SyntheticSlide) -> None:
    with open_slide(synthetic_svs.path) as r:
        coords = [(x, y) for x in range(0, 4096, 700) for y in range(0, 3072, 700)]
        expected = {c: r.read_region(c, 0, (128, 128)) for c in coords}
        errors: list[str] = []

        def worker() -> None:
            for c in coords:
                if not np.array_equal(r.read_region(c, 0, (128, 128)), expected[c]):
                    errors.append(str(c))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


# ---------------------------------------------------------------------------- plain images


def test_png_opens_as_one_level_image(png_image: Path) -> None:
    with open_slide(png_image) as r:
        assert isinstance(r, ImageReader)
        assert r.info.vendor == "image"
        assert r.info.dimensions == (300, 200)
        assert r.info.mpp is None
        want = np.asarray(Image.open(png_image))
        assert np.array_equal(r.read_region((10, 20), 0, (50, 40)), want[20:60, 10:60])


def test_jpeg_grey_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    grey = np.tile(np.arange(256, dtype=np.uint8), (20, 1))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    Image.fromarray(np.full((30, 40, 3), 120, np.uint8)).save(tmp_path / "photo.jpg", quality=95)
    with open_slide(tmp_path / "grey.png") as r:
        assert r.read_region((0, 0), 0, (256, 20))[0, 100].tolist() == [100, 100, 100]
    with open_slide(tmp_path / "alpha.png") as r:
        px = r.read_region((0, 0), 0, (10, 10))
        assert px[0, 0].tolist() == [200, 0, 0] and px[9, 9].tolist() == [255, 255, 255]
    with open_slide(tmp_path / "photo.jpg") as r:
        assert r.info.dimensions == (40, 30)
        assert abs(int(r.read_region((5, 5), 0, (1, 1))[0, 0, 0]) - 120) <= 2


def test_plain_tiff_mpp_from_resolution_tags(tmp_path: Path) -> None:
    import tifffile

    img = np.full((64, 96, 3), 200, np.uint8)
    # 20,000 px per cm = 0.5 um/px
    tifffile.imwrite(tmp_path / "cm.tif", img, photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    # 72 dpi is a print resolution, not a microscope: no mpp rather than a guess
    tifffile.imwrite(tmp_path / "dpi.tif", img, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with open_slide(tmp_path / "cm.tif") as r:
        assert r.info.vendor == "image"
        assert r.info.mpp == pytest.approx((0.5, 0.5))
    with open_slide(tmp_path / "dpi.tif") as r:
        assert r.info.mpp is None


def test_large_plain_image_gets_a_pyramid(tmp_path: Path) -> None:
    img = np.zeros((300, 5000, 3), np.uint8)
    img[:, 2500:] = 255
    Image.fromarray(img).save(tmp_path / "wide.png")
    with open_slide(tmp_path / "wide.png") as r:
        assert r.info.level_count >= 2
        assert r.info.level_downsamples[1] == 2.0
        th = r.thumbnail(500)
        assert th.shape == (30, 500, 3)
        assert th[:, :240].mean() < 5 and th[:, 260:].mean() > 250


# ---------------------------------------------------------------------------- bad input


def _one_line_error(exc: pytest.ExceptionInfo[MetaScopeError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideOpenError) as exc:
        open_slide(tmp_path / "nope.svs")
    assert "no such file" in _one_line_error(exc)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SlideOpenError) as exc:
        open_slide(tmp_path)
    assert "folder" in _one_line_error(exc)


def test_text_file_named_svs(not_a_slide: Path) -> None:
    with pytest.raises(SlideOpenError) as exc:
        open_slide(not_a_slide)
    assert "not a slide" in _one_line_error(exc)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.ndpi").write_bytes(b"")
    with pytest.raises(SlideOpenError) as exc:
        open_slide(tmp_path / "empty.ndpi")
    assert "empty" in _one_line_error(exc)


def test_corrupt_png(tmp_path: Path) -> None:
    data = (tmp_path / "x.png")
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(data)
    data.write_bytes(data.read_bytes()[:60])
    with pytest.raises(SlideOpenError) as exc:
        open_slide(data)
    _one_line_error(exc)


def test_truncated_slide_is_reported_at_open(truncated_slide: Path) -> None:
    with pytest.raises(SlideOpenError) as exc:
        open_slide(truncated_slide)
    assert "truncated" in _one_line_error(exc)


def test_damaged_tiles_raise_slide_open_error_during_reads(synthetic_svs: SyntheticSlide, tmp_path: Path) -> None:
    """A file whose tile data is garbage opens, but reading the damaged tile is a typed error."""
    import tifffile

    assert synthetic_svs.path is not None
    data = bytearray(synthetic_svs.path.read_bytes())
    with tifffile.TiffFile(synthetic_svs.path) as tf:
        page = tf.pages[0]
        cols = -(-page.imagewidth // page.tilewidth)
        index = 1 * cols + 1  # tile (row 1, col 1): not one the open-time probe reads
        off, n = page.dataoffsets[index], page.databytecounts[index]
    data[off : off + n] = bytes(n)
    bad = tmp_path / "damaged.svs"
    bad.write_bytes(bytes(data))
    with open_slide(bad) as r:
        with pytest.raises(SlideOpenError) as exc:
            r.read_region((300, 300), 0, (64, 64))
        assert "damaged" in _one_line_error(exc)


# ---------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_aperio_slide(shared_data: Path) -> None:
    from engine.slides import TilingConfig, detect_tissue, plan_tiles, read_tile

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    with open_slide(path) as r:
        assert r.info.vendor == "aperio"
        assert r.info.dimensions == (2220, 2967)
        assert r.info.mpp == pytest.approx((0.499, 0.499), abs=1e-3)
        assert r.info.objective_power == 20
        tissue = detect_tissue(r, max_size=1024)
        assert 0.2 < tissue.tissue_fraction < 0.7
        plan = plan_tiles(r, TilingConfig(96, 0.97), tissue)
        assert plan.level == 0 and plan.tile_size_level0 == 187
        assert 40 < plan.n_tiles < 150
        tile = read_tile(r, plan, plan.level0_xy[len(plan) // 2])
        assert tile.shape == (96, 96, 3)
        assert tile.std() > 10  # real texture, not blank glass
