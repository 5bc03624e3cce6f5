"""The faster exact reader: tifffile + imagecodecs where its pixels equal OpenSlide's, OpenSlide otherwise.

Every kind of tiled TIFF the fast path takes is written here (small, generated), opened with
``open_slide`` and compared region by region with a plain OpenSlide reader of the same file:
``read_region`` and ``read_region_resized`` (the heatmap hot path), inside, across tile borders
and past the slide's edges, on every level.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from engine.errors import SlideOpenError
from engine.slides import open_slide
from engine.slides.fast_reader import FastTiffReader, open_fast, reader_backend
from engine.slides.openslide_reader import OpenSlideReader
from engine.slides.tifffile_reader import TiffFileReader

W, H, TILE = 600, 456, 128
REAL_SVS = Path(__file__).resolve().parents[3] / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def _image(w: int = W, h: int = H) -> np.ndarray:
    """Smooth colour waves plus noise: every JPEG block differs, chroma varies."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([190 + 50 * np.sin(x / 37.0 + c) * np.cos(y / 23.0 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 16, (h, w, 3)), 0, 255).astype(np.uint8)


def _aperio(w: int, h: int, codec: str = "JPEG/RGB Q=85") -> str:
    return f"Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) {codec}|AppMag = 20|MPP = 0.4990"


def _write(path: Path, img: np.ndarray, aperio: bool, levels: int = 3, **kw: object) -> Path:
    """A pyramid of top-level tiled pages (each half the previous), Aperio or generic TIFF."""
    h, w = img.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        lvl = img
        for i in range(levels):
            desc = (_aperio(w, h) if i == 0 else f"Aperio Image Library v12.0.15 \n{w}x{h} -> x") if aperio else None
            tw.write(lvl, tile=(TILE, TILE), description=desc, metadata=None, subfiletype=1 if i else 0, **kw)
            lvl = np.ascontiguousarray(lvl[::2, ::2])
    return path


def _split_tables(jpeg: bytes) -> tuple[bytes, bytes]:
    """``(JPEGTables, abbreviated stream)`` of a complete JPEG: DQT and DHT move to the tables."""
    i, tables, rest = 2, b"", b""
    while True:
        marker = jpeg[i : i + 2]
        if marker == b"\xff\xda":  # start of scan: the rest is entropy-coded data
            rest += jpeg[i:]
            break
        n = struct.unpack(">H", jpeg[i + 2 : i + 4])[0]
        seg = jpeg[i : i + 2 + n]
        if marker in (b"\xff\xdb", b"\xff\xc4"):
            tables += seg
        else:
            rest += seg
        i += 2 + n
    return b"\xff\xd8" + tables + b"\xff\xd9", b"\xff\xd8" + rest


def _write_jpegtables(path: Path, img: np.ndarray, colour_transform: bool = True) -> Path:
    """One-level Aperio SVS whose tiles share their tables in a JPEGTables tag (as Aperio writes).

    ``colour_transform=False`` stores RGB samples in the JPEG without the YCbCr transform (and no
    Adobe marker saying so): decoders disagree on such files.
    """
    import imagecodecs

    h, w = img.shape[:2]
    tables, tiles = b"", []
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            tile = np.zeros((TILE, TILE, 3), np.uint8)
            part = img[y : y + TILE, x : x + TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            out = "ycbcr" if colour_transform else "rgb"
            tables, abbreviated = _split_tables(imagecodecs.jpeg8_encode(tile, level=85, outcolorspace=out))
            tiles.append(abbreviated)
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            iter(tiles),
            shape=(h, w, 3),
            dtype=np.uint8,
            tile=(TILE, TILE),
            compression=7,
            photometric="rgb",
            description=_aperio(w, h),
            metadata=None,
            extratags=[(347, 7, len(tables), tables, True)],
        )
    return path


def _regions(info: object, level: int, n: int, seed: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Random regions at whole level pixels: inside, across tile borders, past the edges."""
    rng = np.random.default_rng(seed)
    lw, lh = info.level_dimensions[level]  # type: ignore[attr-defined]
    ds = info.level_downsamples[level]  # type: ignore[attr-defined]
    out = [((0, 0), (min(lw, 97), min(lh, 97))), ((round((lw - 50) * ds), round((lh - 40) * ds)), (90, 70))]
    for _ in range(n):
        x, y = int(rng.integers(-30, lw)), int(rng.integers(-30, lh))
        out.append(((round(x * ds), round(y * ds)), (int(rng.integers(1, 260)), int(rng.integers(1, 260)))))
    return out


def assert_same_as_openslide(path: Path, n: int = 12) -> SlideOpenError | None:
    """``open_slide``'s pixels equal a plain OpenSlide reader's, on every level."""
    with open_slide(path) as fast, OpenSlideReader(path) as slow:
        assert fast.info.level_dimensions == slow.info.level_dimensions
        for level in range(slow.info.level_count):
            for k, (xy, size) in enumerate(_regions(slow.info, level, n, seed=level)):
                a, b = slow.read_region(xy, level, size), fast.read_region(xy, level, size)
                assert np.array_equal(a, b), (level, xy, size)
                out = (96, 96) if k % 2 else (size[0] // 2 + 1, size[1] // 2 + 1)
                a, b = slow.read_region_resized(xy, level, size, out), fast.read_region_resized(xy, level, size, out)
                assert np.array_equal(a, b), ("resized", level, xy, size)
    return None


# ------------------------------------------------------------------------------------ kinds


@pytest.mark.parametrize(
    ("name", "aperio", "kw"),
    [
        ("jpeg-rgb", True, {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 85}}),
        ("jpeg-rgb", False, {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 85}}),
        # YCbCr with 2x2 chroma subsampling: both upsample the same way (libjpeg-turbo, fancy upsampling)
        (
            "jpeg-ycbcr-420",
            False,
            {"photometric": "ycbcr", "subsampling": (2, 2), "compression": "jpeg", "compressionargs": {"level": 85}},
        ),
        (
            "jpeg-ycbcr-420",
            True,
            {"photometric": "ycbcr", "subsampling": (2, 2), "compression": "jpeg", "compressionargs": {"level": 85}},
        ),
        ("deflate", False, {"photometric": "rgb", "compression": "zlib"}),
        ("lzw", True, {"photometric": "rgb", "compression": "lzw"}),
        ("none", False, {"photometric": "rgb", "compression": None}),
        # Aperio JPEG 2000, RGB (33005): OpenJPEG on both sides
        ("j2k-33005", True, {"photometric": "rgb", "compression": 33005}),
    ],
)
def test_fast_path_is_identical_to_openslide(tmp_path: Path, name: str, aperio: bool, kw: dict[str, object]) -> None:
    path = _write(tmp_path / f"{name}.{'svs' if aperio else 'tif'}", _image(), aperio, **kw)
    with open_slide(path) as r:
        assert isinstance(r, FastTiffReader), reader_backend(r)
        assert r.exact_levels == (0, 1, 2)
        assert r.info.vendor == ("aperio" if aperio else "generic-tiff")
        assert "tifffile" in reader_backend(r)
    assert_same_as_openslide(path)


def test_jpegtables_aperio_is_fast_and_identical(tmp_path: Path) -> None:
    path = _write_jpegtables(tmp_path / "tables.svs", _image())
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].jpegtables is not None
    with open_slide(path) as r:
        assert isinstance(r, FastTiffReader)
    assert_same_as_openslide(path)


def test_decoders_that_disagree_leave_the_file_to_openslide(tmp_path: Path) -> None:
    """RGB samples in a JPEG without the colour transform: tifffile and OpenSlide differ."""
    path = _write_jpegtables(tmp_path / "rgbjpeg.svs", _image(), colour_transform=False)
    with open_slide(path) as r, TiffFileReader(path) as t:
        assert isinstance(r, OpenSlideReader)
        assert reader_backend(r) == "openslide"
        assert not np.array_equal(r.read_region((0, 0), 0, (W, H)), t.read_region((0, 0), 0, (W, H)))


def test_aperio_ycbcr_jpeg2000_stays_with_openslide(tmp_path: Path) -> None:
    """33003 (YCbCr JPEG 2000): OpenSlide converts the colours itself, tifffile does not match it."""
    path = _write(tmp_path / "j2k-33003.svs", _image(), True, photometric="ycbcr", compression=33003)
    with open_slide(path) as r:
        assert isinstance(r, OpenSlideReader)
    assert_same_as_openslide(path, n=4)


def test_only_levels_that_match_are_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "mixed.svs", _image(), True, photometric="rgb", compression="zlib")
    real = TiffFileReader.read_level_region

    def off_on_level_1(self: TiffFileReader, level: int, xy: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        out = real(self, level, xy, size)
        return out ^ 1 if level == 1 else out

    monkeypatch.setattr(TiffFileReader, "read_level_region", off_on_level_1)
    with open_slide(path) as r, OpenSlideReader(path) as slow:
        assert isinstance(r, FastTiffReader) and r.exact_levels == (0, 2)
        assert np.array_equal(r.read_region((64, 32), 1, (200, 150)), slow.read_region((64, 32), 1, (200, 150)))


def test_fractional_downsample_reads_go_to_openslide(tmp_path: Path) -> None:
    """Level 1 of a 601 x 457 slide is 300 x 228 (downsample ~2.003): OpenSlide interpolates
    sub-pixel positions there, so only whole-pixel reads may be tifffile's."""
    path = _write(tmp_path / "odd.svs", _image(601, 457), True, levels=2, photometric="rgb", compression="zlib")
    assert_same_as_openslide(path, n=10)


def test_switch_off_and_no_tiff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "z.svs", _image(), True, levels=1, photometric="rgb", compression="zlib")
    monkeypatch.setenv("METASCOPE_FAST_DECODE", "0")
    with open_slide(path) as r:
        assert isinstance(r, OpenSlideReader)
    monkeypatch.delenv("METASCOPE_FAST_DECODE")
    slow = OpenSlideReader(path)
    with open_fast(slow, path) as fast:  # owns (and closes) the OpenSlide reader
        assert isinstance(fast, FastTiffReader)
        assert fast.info is slow.info


def test_damaged_tile_is_left_to_openslide(tmp_path: Path) -> None:
    """A tile tifffile cannot decode is read (and reported) by OpenSlide, as before."""
    from engine.slides.artefacts import corrupt_tiles

    path = _write(tmp_path / "bad.svs", _image(), True, levels=1, photometric="rgb", compression="jpeg")
    corrupt_tiles(path, [0])
    with open_slide(path) as r, OpenSlideReader(path) as slow:
        for reader in (slow, r):
            with pytest.raises(SlideOpenError):
                reader.read_region((0, 0), 0, (TILE, TILE))
        assert np.array_equal(r.read_region((TILE, TILE), 0, (200, 200)), slow.read_region((TILE, TILE), 0, (200, 200)))


def test_concurrent_reads_decode_each_stored_tile_once(tmp_path: Path) -> None:
    import threading

    path = _write(tmp_path / "c.svs", _image(), True, levels=1, photometric="rgb", compression="jpeg")
    with TiffFileReader(path) as t:
        calls: list[int] = []
        lv = t._levels[0]
        real = lv.decode_segment

        def counting(index: int) -> np.ndarray:
            calls.append(index)
            return real(index)

        lv.decode_segment = counting  # type: ignore[method-assign]
        barrier = threading.Barrier(4)

        def work() -> None:
            barrier.wait()
            t.read_region((0, 0), 0, (W, H))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(calls) == list(range(lv.per_plane))


def test_heatmap_reads_decode_each_stored_tile_once(tmp_path: Path) -> None:
    """Model tiles (187 px at 0.5 um/px for 0.972 um/px) share 128 px stored tiles: two read
    threads going through the plan batch by batch decode every stored tile once."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.slides.tiling import TilingConfig, plan_tiles, read_tiles

    img = _image(1200, 900)
    path = _write(tmp_path / "s.svs", img, True, levels=1, photometric="rgb", compression="jpeg")
    with open_slide(path) as r:
        assert isinstance(r, FastTiffReader)
        plan = plan_tiles(r, TilingConfig(96, 0.972), None)  # every grid cell
        lv = r._fast._levels[0]
        calls: list[int] = []
        real = lv.decode_segment

        def counting(index: int) -> np.ndarray:
            calls.append(index)
            return real(index)

        lv.decode_segment = counting  # type: ignore[method-assign]
        batches = [plan.level0_xy[i : i + 8] for i in range(0, plan.n_tiles, 8)]
        with ThreadPoolExecutor(2) as pool:
            tiles = list(pool.map(lambda xy: read_tiles(r, plan, xy), batches))
        assert sum(len(t) for t in tiles) == plan.n_tiles > 8
        assert len(calls) == len(set(calls))  # none decoded twice


def test_heatmap_records_the_reader(tmp_path: Path) -> None:
    from engine.infer.pipeline import InferenceConfig, compute_heatmap
    from engine.slides.synthetic import write_synthetic_slide

    demo = Path(__file__).resolve().parents[2] / "resources" / "models"
    model = demo / "pcam-starter.onnx"
    slide = write_synthetic_slide(tmp_path / "s.svs", 1024, 768, seed=2, levels=1, with_label=False).path
    res = compute_heatmap(slide, model, InferenceConfig(device="cpu", max_tiles=8, qc=False))
    assert res.slide["reader"].startswith("tifffile+imagecodecs")


@pytest.mark.realdata
def test_real_aperio_slide_is_fast_and_identical() -> None:
    if not REAL_SVS.is_file():
        pytest.skip("../shared/data is absent")
    with open_slide(REAL_SVS) as r:
        assert isinstance(r, FastTiffReader) and r.exact_levels == (0,)
    assert_same_as_openslide(REAL_SVS, n=30)
