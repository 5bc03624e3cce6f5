"""Real-world slide files MetaScope has not seen: codecs, pyramids, resolutions, image modes, names.

Each case asserts what a user notices: the file opens and shows the right pixels at the right
resolution, or one clear line says why not. Files are generated small (768 x 512 px).
"""

from __future__ import annotations

import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.errors import ConfigError, MetaScopeError, MissingMppError, NoTissueError, SlideOpenError
from engine.slides import TilingConfig, detect_tissue, open_slide, plan_tiles, read_tile
from engine.slides.fast_reader import FastTiffReader
from engine.slides.image_reader import ImageReader
from engine.slides.openslide_reader import OpenSlideReader
from engine.slides.synthetic import make_texture
from engine.slides.tifffile_reader import TiffFileReader

W, H = 768, 512
TILE = (256, 256)


@pytest.fixture(scope="module")
def texture_rgb() -> tuple[np.ndarray, np.ndarray]:
    """The synthetic H&E texture at 0.5 um/px, ``(H, W, 3)``, and its tissue mask ``(H, W)``."""
    tex = make_texture(W, H, 0.5, seed=3)
    return tex.render(0, 0, W, H), tex.masks((H, W))[0]


def aperio_description(mpp: object = 0.5, codec: str = "JPEG/RGB Q=90") -> str:
    return (
        f"Aperio Image Library v12.0.15 \r\n{W}x{H} [0,0 {W}x{H}] ({TILE[0]}x{TILE[1]}) {codec}"
        f"|AppMag = 20|MPP = {mpp}"
    )


def one_line(exc: pytest.ExceptionInfo[MetaScopeError]) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def check_opens_like(path: Path, rgb: np.ndarray, truth: np.ndarray, max_mean_diff: float) -> object:
    """The slide opens, its pixels match ``rgb`` and tissue detection finds the tissue."""
    with open_slide(path) as r:
        assert r.info.dimensions == (W, H)
        got = r.read_region((0, 0), 0, (W, H))
        assert got.dtype == np.uint8 and got.shape == (H, W, 3)
        assert np.abs(got.astype(int) - rgb).mean() <= max_mean_diff
        tm = detect_tissue(r, 256)
        small = np.asarray(Image.fromarray(truth).resize(tm.mask.shape[::-1], Image.NEAREST))
        assert tm.tissue_fraction == pytest.approx(small.mean(), abs=0.08)
        plan = plan_tiles(r, TilingConfig(96, 0.97), tm, slide_mpp=r.info.mpp_or(0.5))
        assert plan.n_tiles > 0
        assert read_tile(r, plan, plan.level0_xy[0]).shape == (96, 96, 3)
        return type(r)


# ---------------------------------------------------------------------------- codecs


@pytest.mark.parametrize(
    ("codec", "backend", "tolerance"),
    [
        # OpenSlide's view, decoded by tifffile where proven identical (engine/slides/fast_reader.py)
        ("none", FastTiffReader, 0.0),
        ("lzw", FastTiffReader, 0.0),
        ("zlib", FastTiffReader, 0.0),
        ("packbits", OpenSlideReader, 0.0),
        ("zstd", OpenSlideReader, 0.0),
        ("jpeg", FastTiffReader, 3.0),
        # codecs OpenSlide lacks: read through tifffile + imagecodecs
        ("jpeg2000", TiffFileReader, 0.0),
        ("webp", TiffFileReader, 3.0),
        ("jpegxl", TiffFileReader, 3.0),
    ],
)
def test_tiled_tiff_codecs(
    tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray], codec: str, backend: type, tolerance: float
) -> None:
    rgb, truth = texture_rgb
    path = tmp_path / f"{codec}.tif"
    args = {"compressionargs": {"level": 0}} if codec == "jpeg2000" else {}
    tifffile.imwrite(
        path, rgb, tile=TILE, photometric="rgb", compression=None if codec == "none" else codec, metadata=None, **args
    )
    assert check_opens_like(path, rgb, truth, tolerance) is backend


def test_aperio_jpeg2000_variants(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    """Aperio 33005 (RGB) and 33003 (YCbCr) JPEG 2000 via OpenSlide; standard 34712 via tifffile."""
    rgb, truth = texture_rgb
    f = rgb.astype(np.float32)
    ycc = np.dstack(
        [
            0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2],
            128 - 0.168736 * f[..., 0] - 0.331264 * f[..., 1] + 0.5 * f[..., 2],
            128 + 0.5 * f[..., 0] - 0.418688 * f[..., 1] - 0.081312 * f[..., 2],
        ]
    )
    ycc = np.clip(ycc + 0.5, 0, 255).astype(np.uint8)
    for name, data, compression in [("rgb", rgb, 33005), ("ycc", ycc, 33003), ("std", rgb, "jpeg2000")]:
        path = tmp_path / f"j2k-{name}.svs"
        tifffile.imwrite(
            path, data, tile=TILE, photometric="rgb", compression=compression,
            description=aperio_description(codec="J2K/YUV16 Q=70"), metadata=None,
        )
        backend = check_opens_like(path, rgb, truth, 1.0)
        # RGB JPEG 2000 decodes identically with tifffile; OpenSlide's own YCbCr conversion does not
        assert backend is {"rgb": FastTiffReader, "ycc": OpenSlideReader, "std": TiffFileReader}[name]
        with open_slide(path) as r:
            assert r.info.vendor == "aperio"
            assert r.info.mpp == pytest.approx((0.5, 0.5))


def test_codec_nobody_decodes_is_one_clear_line(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    for name, tile in [("tiled.svs", TILE), ("strips.tif", None)]:
        path = tmp_path / name
        tifffile.imwrite(path, texture_rgb[0], tile=tile, photometric="rgb", compression="zlib", metadata=None)
        with tifffile.TiffFile(path, mode="r+b") as tf:
            tf.pages[0].tags["Compression"].overwrite(99)  # a code no decoder knows
        with pytest.raises(SlideOpenError) as exc:
            open_slide(path)
        assert "compression 99" in one_line(exc) and "convert" in str(exc.value)


def test_bigtiff(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, truth = texture_rgb
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, rgb, tile=TILE, photometric="rgb", compression="jpeg", bigtiff=True, metadata=None)
    assert check_opens_like(path, rgb, truth, 3.0) is FastTiffReader


# ---------------------------------------------------------------------------- layouts


def test_strip_tiff_read_piecewise_matches(
    tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A strip-based TIFF above the whole-decode limit is read strip by strip, same pixels."""
    from engine.slides import open as open_mod

    rgb, truth = texture_rgb
    monkeypatch.setattr(open_mod, "PLAIN_IMAGE_MAX_PIXELS", 1000)
    for name, kw in {
        "lzw": {"compression": "lzw", "rowsperstrip": 16},
        "raw": {},  # uncompressed: memory-mapped
        "planar": {"compression": "zlib", "rowsperstrip": 8, "planarconfig": "separate"},
    }.items():
        path = tmp_path / f"strips-{name}.tif"
        data = np.moveaxis(rgb, 2, 0).copy() if name == "planar" else rgb
        tifffile.imwrite(path, data, photometric="rgb", metadata=None, **kw)
        assert check_opens_like(path, rgb, truth, 0.0) is TiffFileReader
        with open_slide(path) as r:
            edge = r.read_region((W - 10, H - 10), 0, (30, 30))
            assert np.array_equal(edge[:10, :10], rgb[H - 10 :, W - 10 :])
            assert (edge[10:] == 255).all() and (edge[:, 10:] == 255).all()


def test_single_huge_compressed_strip_is_refused_clearly(
    tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.slides import open as open_mod
    from engine.slides import tifffile_reader

    monkeypatch.setattr(open_mod, "PLAIN_IMAGE_MAX_PIXELS", 1000)
    monkeypatch.setattr(tifffile_reader, "MAX_SEGMENT_PIXELS", 10_000)
    path = tmp_path / "onestrip.tif"
    tifffile.imwrite(path, texture_rgb[0], photometric="rgb", compression="zlib", rowsperstrip=H, metadata=None)
    with pytest.raises(SlideOpenError) as exc:
        open_slide(path)
    assert "tiled pyramidal TIFF" in one_line(exc)


def _write_subifd_pyramid(path: Path, rgb: np.ndarray, levels: int, ome: dict[str, object] | None = None) -> None:
    with tifffile.TiffWriter(path, bigtiff=rgb.nbytes > 2**31) as tw:
        tw.write(rgb, tile=TILE, photometric="rgb", compression="jpeg", subifds=levels - 1, metadata=ome)
        for k in range(1, levels):
            tw.write(rgb[:: 2**k, :: 2**k], tile=TILE, photometric="rgb", compression="jpeg", subfiletype=1)


def test_subifd_pyramid_exposes_its_levels(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    """OpenSlide shows only level 0 of a SubIFD pyramid; MetaScope uses all its levels."""
    rgb, truth = texture_rgb
    path = tmp_path / "subifd.tif"
    _write_subifd_pyramid(path, rgb, 3)
    assert check_opens_like(path, rgb, truth, 3.0) is TiffFileReader
    with open_slide(path) as r:
        assert r.info.level_dimensions == ((768, 512), (384, 256), (192, 128))
        assert r.info.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        low = r.read_region((200, 100), 2, (64, 64))
        assert np.abs(low.astype(int) - rgb[100 : 100 + 256 : 4, 200 : 200 + 256 : 4]).mean() < 4


def test_subifd_pyramid_thumbnail_reads_only_a_small_level(tmp_path: Path) -> None:
    """Thumbnail and tissue detection of an 8192 px SubIFD pyramid stay small and fast."""
    block = make_texture(1024, 1024, 0.5, seed=5).render(0, 0, 1024, 1024)
    big = np.tile(block, (6, 8, 1))  # 8192 x 6144
    path = tmp_path / "big-subifd.tif"
    _write_subifd_pyramid(path, big, 5)
    with open_slide(path) as r:
        assert r.info.level_count == 5
        tracemalloc.start()
        tm = detect_tissue(r, 512)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert tm.shape == (384, 512) and tm.tissue_fraction > 0.2
    assert peak < 24 * 1024 * 1024  # level 0 alone is 150 MB of RGB


def test_ome_tiff_pyramid_mpp_and_units(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, truth = texture_rgb
    path = tmp_path / "slide.ome.tif"
    ome = {"axes": "YXS", "PhysicalSizeX": 500.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 500.0, "PhysicalSizeYUnit": "nm"}
    _write_subifd_pyramid(path, rgb, 2, ome)
    assert check_opens_like(path, rgb, truth, 3.0) is TiffFileReader
    with open_slide(path) as r:
        assert r.info.vendor == "ome-tiff"
        assert r.info.level_count == 2
        assert r.info.mpp == pytest.approx((0.5, 0.5))
    flat = tmp_path / "flat.ome.tif"
    tifffile.imwrite(flat, rgb, photometric="rgb", tile=TILE, metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    with open_slide(flat) as r:
        assert r.info.mpp == pytest.approx((0.25, 0.25))


def test_multichannel_ome_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "fluo.ome.tif"
    data = np.zeros((4, 300, 400), np.uint16)
    with tifffile.TiffWriter(path) as tw:
        tw.write(data, tile=(128, 128), metadata={"axes": "CYX"}, subifds=1)
        tw.write(data[:, ::2, ::2], tile=(128, 128), subfiletype=1)
    with pytest.raises(SlideOpenError) as exc:
        open_slide(path)
    assert "RGB or greyscale" in one_line(exc)


# ---------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("mpp", ["0", "1000", "1e-6", "nan", "-0.5"])
def test_implausible_aperio_mpp_counts_as_missing(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray], mpp: str) -> None:
    path = tmp_path / "odd.svs"
    tifffile.imwrite(path, texture_rgb[0], tile=TILE, photometric="rgb", compression="jpeg", description=aperio_description(mpp), metadata=None)
    with open_slide(path) as r:
        assert r.info.vendor == "aperio"
        assert r.info.mpp is None
        with pytest.raises(MissingMppError) as exc:
            plan_tiles(r, TilingConfig(96, 0.97), detect_tissue(r, 256))
        assert "--mpp" in one_line(exc)
        if mpp in ("1000", "1e-6"):
            assert "not a plausible" in str(exc.value)
    with open_slide(path, mpp=0.5) as r:
        assert plan_tiles(r, TilingConfig(96, 0.97), detect_tissue(r, 256)).n_tiles > 0


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [
        ((72, 72), "INCH", None),  # an image editor's print resolution, not a microscope
        ((96, 96), "INCH", None),
        ((50800, 50800), "INCH", (0.5, 0.5)),
        ((20000, 20000), "CENTIMETER", (0.5, 0.5)),
        ((40000, 40000), "CENTIMETER", (0.25, 0.25)),
        ((20000, 20000), "NONE", None),  # no unit: no physical size
    ],
)
def test_tiff_resolution_units(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray], resolution: tuple[int, int], unit: str, expected: tuple[float, float] | None) -> None:
    for tile in (TILE, None):  # OpenSlide (tiled) and the plain-image path (strips)
        path = tmp_path / f"res-{tile is None}.tif"
        tifffile.imwrite(path, texture_rgb[0], tile=tile, photometric="rgb", compression="zlib", resolution=resolution, resolutionunit=unit, metadata=None)
        with open_slide(path) as r:
            if expected is None:
                assert r.info.mpp is None
            else:
                assert r.info.mpp == pytest.approx(expected)


def test_non_square_pixels_are_one_clear_line(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(path, texture_rgb[0], tile=TILE, photometric="rgb", compression="jpeg", resolution=(20000, 10000), resolutionunit="CENTIMETER", metadata=None)
    with open_slide(path) as r:
        assert r.info.mpp == pytest.approx((0.5, 1.0))
        tm = detect_tissue(r, 256)
        with pytest.raises(ConfigError) as exc:
            plan_tiles(r, TilingConfig(96, 0.97), tm)
        assert "not square" in one_line(exc) and "--mpp" in str(exc.value)
    with open_slide(path, mpp=0.5) as r:  # the user's value settles it
        assert plan_tiles(r, TilingConfig(96, 0.97), detect_tissue(r, 256)).n_tiles > 0
    # scanners that differ by a fraction of a percent are square enough
    near = tmp_path / "near.tif"
    tifffile.imwrite(near, texture_rgb[0], tile=TILE, photometric="rgb", compression="jpeg", resolution=(20000, 20040), resolutionunit="CENTIMETER", metadata=None)
    with open_slide(near) as r:
        assert plan_tiles(r, TilingConfig(96, 0.97), detect_tissue(r, 256)).slide_mpp == pytest.approx(0.4995, abs=1e-3)


# ---------------------------------------------------------------------------- image modes


def test_image_modes_become_rgb(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    rgb = texture_rgb[0][:128, :192]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    pal_img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal_rgb = np.asarray(pal_img.convert("RGB"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    pal_img.save(tmp_path / "palette.png")
    pal_img.save(tmp_path / "palette.tif")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb.astype(np.uint16) * 257, photometric="rgb", tile=(64, 64))
    tifffile.imwrite(tmp_path / "grey-tiled.tif", grey, photometric="minisblack", tile=(64, 64), compression="jpeg2000")
    tifffile.imwrite(tmp_path / "cmyk.tif", np.dstack([255 - rgb, np.zeros(rgb.shape[:2], np.uint8)]), photometric="separated")
    cases = {
        "grey.png": (np.repeat(grey[..., None], 3, 2), 0),
        "grey16.png": (np.repeat(grey[..., None], 3, 2), 1),
        "palette.png": (pal_rgb, 0),
        "palette.tif": (pal_rgb, 0),
        "cmyk.jpg": (rgb, 4),
        "rgb16.tif": (rgb, 0),
        "grey-tiled.tif": (np.repeat(grey[..., None], 3, 2), 1),
        "cmyk.tif": (rgb, 0),
    }
    for name, (want, tol) in cases.items():
        with open_slide(tmp_path / name) as r:
            got = r.read_region((0, 0), 0, (192, 128))
            assert np.abs(got.astype(int) - want).mean() <= tol, name


def test_greyscale_slide_finds_tissue(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, truth = texture_rgb
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, grey, tile=TILE, photometric="minisblack", compression="zlib", metadata=None)
    with open_slide(path) as r:
        tm = detect_tissue(r, 256)
        small = np.asarray(Image.fromarray(truth).resize(tm.mask.shape[::-1], Image.NEAREST))
        assert (tm.mask & small).sum() / small.sum() > 0.9
        assert (tm.mask & ~small).sum() / max(tm.mask.sum(), 1) < 0.05
        assert tm.method.startswith("od-greyscale")


def test_transparent_areas_are_white(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    rgb = texture_rgb[0]
    rgba = np.dstack([rgb, np.full((H, W), 255, np.uint8)])
    rgba[:, : W // 2, 3] = 0  # left half transparent
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    tifffile.imwrite(tmp_path / "alpha.tif", rgba, tile=TILE, photometric="rgb", extrasamples=["unassalpha"], compression="zlib", metadata=None)
    for name in ("alpha.png", "alpha.tif"):
        with open_slide(tmp_path / name) as r:
            got = r.read_region((0, 0), 0, (W, H))
            assert (got[:, : W // 2] == 255).all()
            assert np.array_equal(got[:, W // 2 :], rgb[:, W // 2 :])
            tm = detect_tissue(r, 256)
            assert not tm.mask[:, : tm.shape[1] // 2 - 2].any()


def test_exif_orientation_is_applied(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    rgb = texture_rgb[0][:200, :300]
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    with open_slide(tmp_path / "phone.jpg") as r:
        assert r.info.dimensions == (200, 300)
        got = r.read_region((0, 0), 0, (200, 300))
    assert np.abs(got.astype(int) - np.rot90(rgb, -1)).mean() < 4


def test_image_smaller_than_a_tile_says_so(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    Image.fromarray(texture_rgb[0][200:250, 150:190]).save(tmp_path / "crop.png")
    with open_slide(tmp_path / "crop.png", mpp=0.5) as r:
        tm = detect_tissue(r, 256)
        with pytest.raises(NoTissueError) as exc:
            plan_tiles(r, TilingConfig(96, 0.97), tm)
        assert "smaller than one 96 px tile" in one_line(exc)
        # analysed whole (no tissue mask), the tile overhangs into white and still reads
        plan = plan_tiles(r, TilingConfig(96, 0.97), None)
        assert plan.n_tiles == 1
        tile = read_tile(r, plan, plan.level0_xy[0])
        assert tile.shape == (96, 96, 3) and tile[-5:, -5:].min() == 255


# ---------------------------------------------------------------------------- names and files


def test_wrong_extension_is_read_by_content(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    rgb = texture_rgb[0]
    Image.fromarray(rgb).save(tmp_path / "png-named.svs", format="PNG")
    Image.fromarray(rgb).save(tmp_path / "jpeg-named.tif", format="JPEG", quality=95)
    tifffile.imwrite(tmp_path / "tiff-named.png", rgb, photometric="rgb", metadata=None)
    Image.fromarray(rgb).save(tmp_path / "no-extension", format="PNG")
    for name, tol in [("png-named.svs", 0), ("jpeg-named.tif", 3), ("tiff-named.png", 0), ("no-extension", 0)]:
        with open_slide(tmp_path / name) as r:
            assert r.info.dimensions == (W, H), name
            assert np.abs(r.read_region((0, 0), 0, (W, H)).astype(int) - rgb).mean() <= tol, name


def test_unicode_spaces_and_read_only(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, truth = texture_rgb
    folder = tmp_path / "Präparate 2024 – Lymphknoten"
    folder.mkdir()
    svs = folder / "Fall 12 ü.svs"
    tifffile.imwrite(svs, rgb, tile=TILE, photometric="rgb", compression="jpeg", description=aperio_description(), metadata=None)
    png = folder / "照片 1.png"
    Image.fromarray(rgb).save(png)
    for p in (svs, png):
        os.chmod(p, 0o444)
    try:
        assert check_opens_like(svs, rgb, truth, 3.0) is FastTiffReader
        assert check_opens_like(png, rgb, truth, 0.0) is ImageReader
        with open_slide(svs) as r:
            assert r.info.name == "Fall 12 ü" and r.info.mpp == pytest.approx((0.5, 0.5))
    finally:
        for p in (svs, png):
            os.chmod(p, 0o644)


@pytest.mark.realdata
def test_copy_of_real_slide_renamed_and_read_only(shared_data: Path, tmp_path: Path) -> None:
    """The real Aperio slide under an odd name opens the same."""
    src = shared_data / "slides" / "CMU-1-Small-Region.svs"
    dst = tmp_path / "Schnitt #3 (kopie) é.svs"
    shutil.copy(src, dst)
    os.chmod(dst, 0o444)
    try:
        with open_slide(dst) as r:
            assert r.info.vendor == "aperio" and r.info.dimensions == (2220, 2967)
    finally:
        os.chmod(dst, 0o644)



def test_tifffile_backend_concurrent_reads_are_consistent(tmp_path: Path, texture_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    """The heatmap pipeline reads tiles from several threads; results match a single thread."""
    import threading

    rgb = texture_rgb[0]
    path = tmp_path / "j2k.tif"
    tifffile.imwrite(path, rgb, tile=(128, 128), photometric="rgb", compression="jpeg2000", metadata=None)
    with TiffFileReader(path, cache_bytes=200_000) as r:  # a tiny cache: constant eviction
        coords = [(x, y) for x in range(-50, W, 97) for y in range(-50, H, 89)]
        expected = {c: rgb_window(rgb, c, 100) for c in coords}
        errors: list[tuple[int, int]] = []

        def worker() -> None:
            for c in coords:
                if not np.array_equal(r.read_region(c, 0, (100, 100)), expected[c]):
                    errors.append(c)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def rgb_window(rgb: np.ndarray, xy: tuple[int, int], side: int) -> np.ndarray:
    """``rgb[y:y+side, x:x+side]`` with white outside the image."""
    out = np.full((side, side, 3), 255, np.uint8)
    x, y = xy
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, rgb.shape[1]), min(y + side, rgb.shape[0])
    out[y0 - y : y1 - y, x0 - x : x1 - x] = rgb[y0:y1, x0:x1]
    return out
