"""A thumbnail's level decoded from both ends (issue 15): same pixels, same errors, no thread left.

``striped_thumbnail`` reads a pyramid level whole; with the tifffile reader a helper thread
decodes the level's stored tiles from the other end meanwhile (``engine/slides/prefetch.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from engine.errors import SlideOpenError
from engine.slides import prefetch, resample
from engine.slides.artefacts import corrupt_tiles, tile_grid, write_tiled_tiff
from engine.slides.damage import tolerant_thumbnail
from engine.slides.synthetic import make_texture
from engine.slides.tifffile_reader import TiffFileReader


@contextmanager
def _no_prefetch(reader: object, level: int) -> Iterator[None]:
    yield


def _helpers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "metascope-prefetch"]


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb = make_texture(1280, 1024, 0.5, seed=4).render(0, 0, 1280, 1024)
    return write_tiled_tiff(tmp_path_factory.mktemp("prefetch") / "p.tif", rgb, tile=64, levels=2)


def _thumbnail(path: Path, monkeypatch: pytest.MonkeyPatch, on: bool) -> tuple[np.ndarray, dict[str, int]]:
    decoded: dict[str, int] = {}
    with TiffFileReader(path) as reader:
        real = reader._segment

        def segment(level: int, index: int) -> np.ndarray:
            with reader._lock:
                fresh = (level, index) not in reader._cache
            if fresh:
                name = threading.current_thread().name
                decoded[name] = decoded.get(name, 0) + 1
            return real(level, index)

        with monkeypatch.context() as m:
            m.setattr(reader, "_segment", segment)
            if not on:
                m.setattr(prefetch, "prefetching", _no_prefetch)
            return reader.thumbnail(320), decoded


def test_same_thumbnail_with_the_level_decoded_from_both_ends(pyramid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TiffFileReader(pyramid) as reader:
        assert reader.info.level_dimensions[1] == (640, 512)  # the level the thumbnail reads whole
    got, decoded = _thumbnail(pyramid, monkeypatch, on=True)
    want, _ = _thumbnail(pyramid, monkeypatch, on=False)
    np.testing.assert_array_equal(got, want)
    assert decoded.get("metascope-prefetch", 0) > 0  # the helper did decode some of them
    assert not _helpers()


def test_a_damaged_tile_is_met_and_reported_by_the_reading_thread(
    pyramid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(pyramid.read_bytes())
    rows, cols, _ = tile_grid(damaged, page=1)
    corrupt_tiles(damaged, [rows * cols - 3, 5], page=1)  # one near each end
    results = []
    for on in (True, False):
        with monkeypatch.context() as m:
            if not on:
                m.setattr(prefetch, "prefetching", _no_prefetch)
            with TiffFileReader(damaged) as reader:
                with pytest.raises(SlideOpenError) as err:
                    reader.thumbnail(320)
                tn = tolerant_thumbnail(reader, 320)
            results.append((str(err.value), tn.rgb, tn.damaged))
        assert not _helpers()
    (msg1, rgb1, dmg1), (msg0, rgb0, dmg0) = results
    assert msg1 == msg0
    np.testing.assert_array_equal(rgb1, rgb0)
    np.testing.assert_array_equal(dmg1, dmg0)


def test_an_error_on_the_helper_thread_reaches_the_caller(pyramid: Path) -> None:
    with TiffFileReader(pyramid) as reader:
        real = reader._segment

        def segment(level: int, index: int) -> np.ndarray:
            if threading.current_thread().name == "metascope-prefetch":
                raise MemoryError("no room for a tile")
            return real(level, index)

        reader._segment = segment  # type: ignore[method-assign]
        with pytest.raises(MemoryError, match="no room"):
            reader.thumbnail(320)
    assert not _helpers()


def test_the_helper_stops_when_the_read_fails(pyramid: Path) -> None:
    with TiffFileReader(pyramid) as reader:
        started = threading.Event()
        real = reader.prefetch_level

        def prefetch_level(level: int, stop: threading.Event) -> None:
            started.set()
            real(level, stop)

        def read_region(*args: object) -> np.ndarray:
            started.wait(5)
            raise SlideOpenError("unreadable level")

        reader.prefetch_level = prefetch_level  # type: ignore[method-assign]
        reader.read_region = read_region  # type: ignore[method-assign]
        with pytest.raises(SlideOpenError, match="unreadable level"):
            resample.striped_thumbnail(reader, 320)
    assert not _helpers()


def test_readers_without_the_hook_get_no_thread() -> None:
    from engine.slides.base import ArrayReader

    reader = ArrayReader(np.full((400, 300, 3), 200, np.uint8), mpp=0.5, levels=2)
    with prefetch.prefetching(reader, 1):
        assert not _helpers()
