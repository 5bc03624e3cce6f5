"""tifffile backend: the TIFFs OpenSlide cannot read, read region by region with bounded memory.

Covers what real files bring that OpenSlide 4 does not: JPEG 2000 (34712), WebP, JPEG XL,
zstd and other codecs in tiled TIFFs (decoded by imagecodecs); pyramids stored as SubIFDs or
OME-TIFF (OpenSlide shows only their level 0); strip-based (non-tiled) TIFFs too large to
decode at once; palette, greyscale, 16-bit, CMYK, planar and alpha images.

Only the tiles or strips that a region touches are read (``os.pread``, so threads never share
a file position) and decoded; a small LRU cache of decoded segments makes row-by-row tile
scans decode each segment about once. Uncompressed pages are memory-mapped.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import SlideOpenError
from engine.slides.base import SlideInfo, SlideReader, checked_region_size
from engine.slides.image_reader import tiff_to_rgb
from engine.slides.mpp import mpp_from_aperio, mpp_from_ome, mpp_from_tiff_tags
from engine.slides.resample import striped_thumbnail

# Decoded segments kept per open slide (see OpenSlideReader.DEFAULT_CACHE_BYTES for the sizing).
DEFAULT_CACHE_BYTES = 128 * 1024 * 1024
# A compressed segment (tile or strip) this large must be decoded whole for any read: refuse
# it instead of exhausting memory (a 100,000 px wide single-strip JPEG TIFF, for example).
MAX_SEGMENT_PIXELS = 64 * 1024 * 1024
# A pyramid level whose aspect ratio differs more than this from level 0 is not a level
# (it is a label or macro image).
ASPECT_TOLERANCE = 0.02
# Pages smaller than this on their longer side are never pyramid levels (labels, thumbnails
# of associated images); they are not needed for a thumbnail either.
MIN_LEVEL_SIDE = 64


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def codec_problem(page: Any, path: str) -> str | None:
    """A one-line message when no installed codec decodes ``page``'s compression, else ``None``."""
    import tifffile

    code = int(page.compression)
    if code == 1 or code in tifffile.TIFF.DECOMPRESSORS:
        return None
    name = getattr(page.compression, "name", str(code))
    return (
        f"{path}: the image data uses TIFF compression {code} ({name}), which MetaScope cannot decode; "
        "convert the file (e.g. with vips tiffsave --compression jpeg --tile --pyramid)"
    )


def planes_problem(series: Any, path: str) -> str | None:
    """A one-line message when a tifffile series has several planes (channels, z, time)."""
    extra = [ax for ax in series.axes if ax not in "YXS"]
    if not any(series.shape[series.axes.index(ax)] > 1 for ax in extra):
        return None
    shape = "x".join(str(n) for n in series.shape)
    return (
        f"{path}: the image has several planes ({series.axes} {shape}: channels, z-stack or time); "
        "MetaScope reads RGB or greyscale slides"
    )


class _Level:
    """One pyramid level: a tifffile page read by segments (or a memory map)."""

    def __init__(self, page: Any, fd: int, path: str) -> None:
        import tifffile

        problem = codec_problem(page, path)
        if problem is not None:
            raise SlideOpenError(problem)
        self.page = page
        self.fd = fd
        self.path = path
        self.height = int(page.imagelength)
        self.width = int(page.imagewidth)
        self.samples = int(page.samplesperpixel)
        self.separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and self.samples > 1
        self.photometric = int(page.photometric)
        self.colormap = page.colormap if page.photometric == tifffile.PHOTOMETRIC.PALETTE else None
        # decoded samples are already RGB uint8 (tifffile converts JPEG's YCbCr while decoding)
        self.rgb_bytes = (
            self.samples == 3
            and not self.separate
            and page.dtype == np.uint8
            and (
                page.photometric == tifffile.PHOTOMETRIC.RGB
                or (page.photometric == tifffile.PHOTOMETRIC.YCBCR and int(page.compression) == 7)
            )
        )
        self.tiled = bool(page.is_tiled)
        if self.tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self.seg_h, self.seg_w = min(int(page.rowsperstrip) or self.height, self.height), self.width
        self.rows = math.ceil(self.height / self.seg_h)
        self.cols = math.ceil(self.width / self.seg_w)
        self.per_plane = self.rows * self.cols
        self.memmap: np.ndarray | None = None
        if page.is_memmappable and not self.separate and self.colormap is None:
            dtype = page.dtype.newbyteorder(page.parent.byteorder)
            shape = (self.height, self.width, self.samples)
            self.memmap = np.memmap(path, dtype=dtype, mode="r", offset=int(page.dataoffsets[0]), shape=shape)
        elif self.seg_h * self.seg_w > MAX_SEGMENT_PIXELS:
            raise SlideOpenError(
                f"{path}: the image is stored as compressed blocks of {self.seg_w}x{self.seg_h} px, too large to "
                "read piecewise; convert it to a tiled pyramidal TIFF (e.g. with vips tiffsave --tile --pyramid)"
            )
        n = len(page.dataoffsets)
        expected = self.per_plane * (self.samples if self.separate else 1)
        if self.memmap is None and n < expected:
            raise SlideOpenError(f"{path}: the TIFF lists {n} data blocks but its size needs {expected}")

    def decode_segment(self, index: int) -> np.ndarray:
        """Decode segment ``index``: array ``(seg_h', seg_w', samples_in_segment)`` cropped to the image."""
        page = self.page
        offset = int(page.dataoffsets[index])
        count = int(page.databytecounts[index])
        r, c = divmod(index % self.per_plane, self.cols)
        h = min(self.seg_h, self.height - r * self.seg_h)
        w = min(self.seg_w, self.width - c * self.seg_w)
        if count == 0:
            # sparse TIFF: a block never written is empty (white once converted)
            fill = np.iinfo(page.dtype).max if page.dtype.kind in "ui" else 1.0
            return np.full((h, w, 1 if self.separate else self.samples), fill, dtype=page.dtype)
        data = os.pread(self.fd, count, offset)
        if len(data) < count:
            raise SlideOpenError(f"{self.path}: the slide is truncated (a tile ends past the end of the file)")
        try:
            seg, _indices, _shape = page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        except Exception as exc:  # codecs raise their own error types for damaged data
            raise SlideOpenError(f"{self.path}: the slide is damaged ({_one_line(exc)})") from exc
        if seg is None:
            raise SlideOpenError(f"{self.path}: the slide is damaged (block {index} cannot be decoded)")
        seg = np.asarray(seg)
        # tifffile returns (depth, height, width, samples) padded to the full tile size
        seg = seg.reshape(seg.shape[-3], seg.shape[-2], seg.shape[-1]) if seg.ndim >= 3 else seg[..., None]
        return seg[:h, :w]


class TiffFileReader(SlideReader):
    """A TIFF read with tifffile + imagecodecs. Safe for concurrent ``read_region`` calls.

    Args:
        path: the TIFF file (``.tif``, ``.tiff``, ``.svs``, ``.ome.tif``, ...).
        cache_bytes: size of the decoded-segment cache.
        level_pages: indices of the top-level pages that are the pyramid levels, largest first
            (the caller knows them, e.g. from OpenSlide's view of the file); default: found here.

    Raises:
        SlideOpenError: not a TIFF tifffile can read, or an image layout MetaScope cannot show
            (multi-channel fluorescence, z-stacks, segments too large to decode piecewise).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        level_pages: Sequence[int] | None = None,
    ) -> None:
        import tifffile

        self._path = os.fspath(path)
        self._level_pages = None if level_pages is None else [int(i) for i in level_pages]
        try:
            self._tf = tifffile.TiffFile(self._path)
        except Exception as exc:  # tifffile raises many types for damaged files
            raise SlideOpenError(f"{self._path}: not a readable TIFF ({_one_line(exc)})") from exc
        self._fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            self._levels = self._find_levels()
            self.info = self._read_info()
        except SlideOpenError:
            self.close()
            raise
        except Exception as exc:  # damaged tag structures surface as assorted errors
            self.close()
            raise SlideOpenError(f"{self._path}: not a readable TIFF ({_one_line(exc)})") from exc
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = int(cache_bytes)
        self._lock = threading.Lock()
        # segments being decoded right now: a second thread that needs one waits for it instead
        # of decoding it again (neighbouring model tiles share stored tiles)
        self._decoding: dict[tuple[int, int], threading.Event] = {}

    # ---------------------------------------------------------------------- structure

    def _find_levels(self) -> list[_Level]:
        tf = self._tf
        if self._level_pages is not None:
            return [_Level(tf.pages[i], self._fd, self._path) for i in self._level_pages]
        if not tf.series:
            raise SlideOpenError(f"{self._path}: the TIFF holds no image")
        series = tf.series[0]
        base = series.keyframe
        if base is None:
            raise SlideOpenError(f"{self._path}: the TIFF holds no image")
        problem = planes_problem(series, self._path)
        if problem is not None:
            raise SlideOpenError(problem)
        self._check_samples(base)
        pages = [lvl.keyframe for lvl in series.levels]
        if len(pages) == 1:
            pages = self._generic_pyramid(base)
        levels = [_Level(p, self._fd, self._path) for p in pages if p is not None]
        return levels

    def _check_samples(self, page: Any) -> None:
        import tifffile

        photometric = page.photometric
        ok = {
            tifffile.PHOTOMETRIC.MINISBLACK,
            tifffile.PHOTOMETRIC.MINISWHITE,
            tifffile.PHOTOMETRIC.RGB,
            tifffile.PHOTOMETRIC.PALETTE,
            tifffile.PHOTOMETRIC.YCBCR,
            tifffile.PHOTOMETRIC.SEPARATED,
        }
        if photometric not in ok or page.samplesperpixel > 4 or page.dtype is None or page.dtype.kind not in "uif":
            raise SlideOpenError(
                f"{self._path}: unsupported TIFF pixel layout ({page.photometric.name}, "
                f"{page.samplesperpixel} samples, {page.dtype}); MetaScope reads RGB or greyscale slides"
            )

    def _generic_pyramid(self, base: Any) -> list[Any]:
        """Level 0 plus the top-level pages that are reductions of it, largest first.

        Labels and macro images are left out (by their description, or because their aspect
        ratio differs from level 0's); so are tiny pages.
        """
        aspect = base.imagewidth / base.imagelength
        found: dict[int, Any] = {}
        for page in self._tf.pages[1:]:
            if not hasattr(page, "imagewidth") or page.imagelength < 1:
                continue
            desc = (page.description or "").lower()
            if "label" in desc or "macro" in desc:
                continue
            w, h = page.imagewidth, page.imagelength
            if (
                max(w, h) >= MIN_LEVEL_SIDE
                and w < base.imagewidth
                and h < base.imagelength
                and abs(w / h - aspect) <= ASPECT_TOLERANCE * aspect + 1.0 / min(w, h)
                and page.samplesperpixel == base.samplesperpixel
                and page.dtype == base.dtype
                and page.photometric == base.photometric
            ):
                # of two pages with the same width keep the first (a level before a thumbnail)
                found.setdefault(int(w), page)
        return [base] + [found[w] for w in sorted(found, reverse=True)]

    def _read_info(self) -> SlideInfo:
        tf = self._tf
        base = self._levels[0].page
        w0, h0 = self._levels[0].width, self._levels[0].height
        desc = base.description or ""
        mpp: tuple[float, float] | None = None
        vendor = "tiff"
        if tf.is_ome:
            vendor = "ome-tiff"
            mpp = mpp_from_ome(tf.ome_metadata)
        elif desc.startswith("Aperio"):
            vendor = "aperio"
            a = mpp_from_aperio(desc)
            mpp = (a, a) if a is not None else None
        if mpp is None:
            mpp = mpp_from_tiff_tags(base.tags)
        props = {
            "tiff.Compression": str(base.compression.name),
            "tiff.Photometric": str(base.photometric.name),
            "tiff.Tiled": str(bool(base.is_tiled)),
            "tiff.BigTIFF": str(bool(tf.is_bigtiff)),
        }
        if desc and not tf.is_ome:
            props["tiff.ImageDescription"] = desc[:2000]
        return SlideInfo(
            path=self._path,
            vendor=vendor,
            level_dimensions=tuple((lv.width, lv.height) for lv in self._levels),
            level_downsamples=tuple((w0 / lv.width + h0 / lv.height) / 2 for lv in self._levels),
            mpp=mpp,
            properties=props,
        )

    # ---------------------------------------------------------------------- pixels

    def _segment(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        while True:
            with self._lock:
                seg = self._cache.get(key)
                if seg is not None:
                    self._cache.move_to_end(key)
                    return seg
                busy = self._decoding.get(key)
                if busy is None:
                    done = self._decoding[key] = threading.Event()
                    break
            busy.wait()  # another thread decodes it; a failed decode is retried (and reported) here
        try:
            seg = self._levels[level].decode_segment(index)
            with self._lock:
                self._cache[key] = seg
                self._cache_bytes += seg.nbytes
                # keep at least the newest segment, however large
                while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= old.nbytes
        finally:
            with self._lock:
                self._decoding.pop(key, None)
            done.set()
        return seg

    def prefetch_level(self, level: int, stop: threading.Event) -> None:
        """Decode ``level``'s stored tiles into the cache, the last first, while another thread
        reads the whole level from the first (:func:`engine.slides.prefetch.prefetching`).

        Each tile is decoded once, by whichever thread gets to it first (:meth:`_segment`): tiles
        decoded already or being decoded are passed over, and this returns when ``stop`` is set or
        at the first tile. It does nothing for an uncompressed level or one larger than half the
        cache, and a tile that cannot be decoded ends it quietly: the reading thread meets it and
        reports it.
        """
        lv = self._levels[level]
        if lv.memmap is not None or lv.width * lv.height * lv.samples * lv.page.dtype.itemsize > self._cache_limit // 2:
            return
        for index in range(lv.per_plane * (lv.samples if lv.separate else 1) - 1, -1, -1):
            key = (level, index)
            with self._lock:
                if stop.is_set():
                    return
                if key in self._cache or key in self._decoding:
                    continue
            try:
                self._segment(level, index)
            except SlideOpenError:
                return

    def _raw_region(self, lv: _Level, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Stored samples of ``[x, x+w) x [y, y+h)`` (inside the level): ``(h, w, samples)``."""
        if lv.memmap is not None:
            return np.array(lv.memmap[y : y + h, x : x + w])
        out = np.empty((h, w, lv.samples), dtype=lv.page.dtype)
        r0, r1 = y // lv.seg_h, (y + h - 1) // lv.seg_h
        c0, c1 = x // lv.seg_w, (x + w - 1) // lv.seg_w
        planes = range(lv.samples) if lv.separate else range(1)
        for r in range(r0, r1 + 1):
            sy0 = r * lv.seg_h
            for c in range(c0, c1 + 1):
                sx0 = c * lv.seg_w
                ya, yb = max(y, sy0), min(y + h, sy0 + lv.seg_h, lv.height)
                xa, xb = max(x, sx0), min(x + w, sx0 + lv.seg_w, lv.width)
                for s in planes:
                    seg = self._segment(level, s * lv.per_plane + r * lv.cols + c)
                    part = seg[ya - sy0 : yb - sy0, xa - sx0 : xb - sx0]
                    if lv.separate:
                        out[ya - y : yb - y, xa - x : xb - x, s] = part[..., 0]
                    else:
                        out[ya - y : yb - y, xa - x : xb - x] = part
        return out

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """See :meth:`SlideReader.read_region`.

        Raises:
            SlideOpenError: the slide data cannot be decoded (damaged or truncated file).
            ValueError: ``level`` does not exist or ``size`` is not positive.
        """
        w, h = checked_region_size(self.info, level, size)
        ds = self.info.level_downsamples[level]
        x = int(math.floor(level0_xy[0] / ds))
        y = int(math.floor(level0_xy[1] / ds))
        return self.read_level_region(level, (x, y), (w, h))

    def read_level_region(self, level: int, xy: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """RGB ``uint8`` ``(h, w, 3)`` of ``[x, x+w) x [y, y+h)`` in pixels *of that level*.

        Areas outside the level are white. ``size`` must be positive (not checked here).

        Raises:
            SlideOpenError: the slide data cannot be decoded (damaged or truncated file).
        """
        lv = self._levels[level]
        x, y = int(xy[0]), int(xy[1])
        w, h = int(size[0]), int(size[1])
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        inside = x1 > x0 and y1 > y0
        if lv.rgb_bytes and inside and (x0, y0, x1, y1) == (x, y, x + w, y + h):
            # the whole region lies inside and decodes to RGB bytes: no white canvas, no copy
            return self._raw_region(lv, level, x, y, w, h)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        if inside:
            raw = self._raw_region(lv, level, x0, y0, x1 - x0, y1 - y0)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = tiff_to_rgb(raw, lv.photometric, lv.colormap)
        return out

    def level_page(self, level: int) -> Any:
        """The tifffile page that holds ``level``."""
        return self._levels[level].page

    def thumbnail(self, max_size: int) -> np.ndarray:
        """See :meth:`SlideReader.thumbnail`; reads large levels in strips (bounded memory)."""
        return striped_thumbnail(self, max_size)

    def close(self) -> None:
        # drop memory maps so the file is not held open (Windows locks mapped files)
        for lv in getattr(self, "_levels", ()):
            lv.memmap = None
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None
        tf = getattr(self, "_tf", None)
        if tf is not None:
            tf.close()
