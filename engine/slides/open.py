"""``open_slide``: one entry point that picks the reader backend for a file."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import struct
from pathlib import Path

from engine.errors import ConfigError, SlideOpenError
from engine.slides.base import SlideReader

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide", ".dcm")
# A caller-supplied resolution outside this range is a typo (e.g. 50 for 0.5), not a microscope.
MPP_RANGE = (0.01, 100.0)
# Side of the regions read to prove the pixel data can be decoded.
PROBE_PX = 16
# Single-level TIFFs up to this many pixels are decoded whole (fast); larger ones piecewise.
PLAIN_IMAGE_MAX_PIXELS = 64 * 1024 * 1024

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def validate_mpp(mpp: float | None) -> float | None:
    """Check a user-supplied microns-per-pixel value.

    Raises:
        ConfigError: not a finite number within 0.01-100 um/px.
    """
    if mpp is None:
        return None
    try:
        value = float(mpp)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"mpp must be a number of microns per pixel, got {mpp!r}") from exc
    if not math.isfinite(value) or not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        raise ConfigError(
            f"mpp must be between {MPP_RANGE[0]} and {MPP_RANGE[1]} microns per pixel, got {mpp!r} "
            "(a 20x scan is about 0.5, a 40x scan about 0.25)"
        )
    return value


def open_slide(path: str | os.PathLike[str], mpp: float | None = None, *, probe: bool = True) -> SlideReader:
    """Open a whole-slide image or a plain image.

    OpenSlide handles every format it recognises (SVS, NDPI, MRXS, SCN, BIF, VMS, tiled TIFF,
    DICOM); other files are tried as plain images (PNG, JPEG, BMP, non-pyramidal TIFF). For SVS
    and generic tiled TIFF, the levels whose pixels tifffile + imagecodecs decode identically
    (checked on this file) are read that way, which is faster
    (:mod:`engine.slides.fast_reader`; ``METASCOPE_FAST_DECODE=0`` turns it off).

    Args:
        path: the slide file.
        mpp: microns per level-0 pixel supplied by the user. It fills in a missing resolution
            and overrides the file's one; ``info.mpp_from_user`` then tells them apart.
        probe: read a few small regions at open time so that a truncated or damaged file is
            reported here rather than halfway through a heatmap.

    Returns:
        An open :class:`SlideReader` (use it as a context manager).

    Raises:
        SlideOpenError: the file is missing, a folder, unreadable, not a slide or image, or damaged.
        ConfigError: ``mpp`` is not a plausible resolution.
    """
    user_mpp = validate_mpp(mpp)
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise SlideOpenError(f"{p}: no such file")
    if p.is_dir():
        raise SlideOpenError(
            f"{p}: is a folder, not a slide file (for MRXS open the .mrxs file, for DICOM one of its .dcm files)"
        )
    if not os.access(p, os.R_OK):
        raise SlideOpenError(f"{p}: permission denied")
    size = p.stat().st_size
    if size == 0:
        raise SlideOpenError(f"{p}: the file is empty")

    with open(p, "rb") as fh:
        magic = fh.read(4)
    is_tiff = magic in _TIFF_MAGIC
    if is_tiff:
        _check_tiff_complete(p, size)

    from engine.slides.openslide_reader import detect_vendor

    reader: SlideReader
    vendor = detect_vendor(p)
    if vendor is not None:
        reader = _open_with_openslide(p, vendor, is_tiff)
    elif is_tiff:
        reader = _open_plain_tiff(p)
    elif _looks_like_image(p):
        from engine.slides.image_cache import is_large_image, open_large_image
        from engine.slides.image_reader import ImageReader

        # large JPEG / PNG slides (BALNMP) are read tile by tile from a pyramid cache built once
        reader = open_large_image(p) if is_large_image(p) else ImageReader(p)
    else:
        raise SlideOpenError(
            f"{p}: not a slide or image MetaScope can read "
            "(supported: SVS, NDPI, MRXS, SCN, BIF, VMS, tiled TIFF, OME-TIFF, DICOM, PNG, JPEG, TIFF)"
        )

    if user_mpp is not None:
        reader.info = dataclasses.replace(reader.info, mpp=(user_mpp, user_mpp), mpp_from_user=True)
    if probe:
        try:
            # a TIFF's truncation is caught above from its tag directories: a probe that hits a
            # single damaged tile must not cost the whole slide (damaged tiles are left out later)
            probe_read(reader, tolerant=is_tiff)
        except SlideOpenError:
            reader.close()
            raise
    return reader


def probe_read(reader: SlideReader, tolerant: bool = False) -> None:
    """Decode a few small regions (centre of level 0, last corner of every level).

    Writers store a level's tiles in row order and the levels one after the other, so the
    bottom-right corners are the last data in the file: a truncated file fails here.

    Args:
        reader: the open slide.
        tolerant: a few damaged tiles are allowed (files whose completeness is checked
            otherwise): only a level 0 none of whose probes decode fails.

    Raises:
        SlideOpenError: a region cannot be decoded.
    """
    info = reader.info
    w0, h0 = info.dimensions
    s = PROBE_PX
    probes = [((max(0, w0 // 2 - s // 2), max(0, h0 // 2 - s // 2)), 0, (s, s))]
    for level, ((lw, lh), ds) in enumerate(zip(info.level_dimensions, info.level_downsamples, strict=True)):
        x = max(0, lw - s)
        y = max(0, lh - s)
        probes.append(((int(x * ds), int(y * ds)), level, (min(s, lw), min(s, lh))))
    if not tolerant:
        for xy, level, size in probes:
            reader.read_region(xy, level, size)
        return
    probes.append(((0, 0), 0, (min(s, w0), min(s, h0))))
    first: SlideOpenError | None = None
    level0_ok = False
    for xy, level, size in probes:
        try:
            reader.read_region(xy, level, size)
            level0_ok = level0_ok or level == 0
        except SlideOpenError as exc:
            first = first or exc
    if not level0_ok and first is not None:
        raise SlideOpenError(f"{' '.join(str(first).split())} (no part of level 0 that was probed can be decoded)") from first


def _open_with_openslide(p: Path, vendor: str, is_tiff: bool) -> SlideReader:
    """OpenSlide for the formats it detects, tifffile where OpenSlide falls short on a TIFF.

    OpenSlide refuses tiled TIFFs whose codec it lacks (JPEG 2000 34712, WebP, JPEG XL) and
    shows only level 0 of pyramids stored as SubIFDs or OME-TIFF; tifffile reads both.
    """
    from engine.slides.openslide_reader import OpenSlideReader

    try:
        reader: SlideReader = OpenSlideReader(p)
    except SlideOpenError as exc:
        if not is_tiff:
            raise
        return _tifffile_fallback(p, exc)
    if not (is_tiff and vendor == "generic-tiff" and reader.info.level_count == 1):
        return _faster(reader, p, is_tiff)
    levels, _pixels, planes = _tiff_shape(p)
    if planes is not None:
        # OpenSlide would show the first channel as if it were the slide
        reader.close()
        raise SlideOpenError(planes)
    if levels > 1:
        from engine.slides.tifffile_reader import TiffFileReader

        try:
            better = TiffFileReader(p)
        except SlideOpenError:
            return reader
        reader.close()
        return better
    return _faster(reader, p, is_tiff)


def _faster(reader: SlideReader, p: Path, is_tiff: bool) -> SlideReader:
    """OpenSlide's reader, with tifffile decoding the levels where that is proven identical."""
    from engine.slides.fast_reader import fast_decode_enabled, open_fast

    if not is_tiff or not fast_decode_enabled():
        return reader
    return open_fast(reader, p)


def _tifffile_fallback(p: Path, openslide_error: SlideOpenError) -> SlideReader:
    from engine.slides.tifffile_reader import TiffFileReader

    try:
        return TiffFileReader(p)
    except SlideOpenError as exc:
        problem = _codec_problem(p)
        if problem is not None:
            raise SlideOpenError(problem) from exc
        raise openslide_error from exc


def _open_plain_tiff(p: Path) -> SlideReader:
    """A TIFF that OpenSlide does not take (strip-based, or one page): whole or piecewise.

    Small single-level images are decoded whole (fast views, in-memory pyramid); pyramids
    and large images are read piecewise with bounded memory.
    """
    from engine.slides.image_reader import ImageReader
    from engine.slides.tifffile_reader import TiffFileReader

    levels, pixels, planes = _tiff_shape(p)
    if planes is not None:
        raise SlideOpenError(planes)
    if levels > 1 or pixels > PLAIN_IMAGE_MAX_PIXELS:
        return TiffFileReader(p)
    problem = _codec_problem(p)
    if problem is not None:
        raise SlideOpenError(problem)
    return ImageReader(p)


def _codec_problem(p: Path) -> str | None:
    import tifffile

    from engine.slides.tifffile_reader import codec_problem

    try:
        with tifffile.TiffFile(p) as tf:
            return codec_problem(tf.pages.first, str(p))
    except Exception:  # damaged files are judged by the reader that opens them next
        return None


def _tiff_shape(p: Path) -> tuple[int, int, str | None]:
    """``(pyramid levels, level-0 pixels, several-planes message)`` as tifffile sees the file.

    ``(0, 0, None)`` when tifffile cannot parse it (the reader that opens it next judges).
    """
    import tifffile

    from engine.slides.tifffile_reader import planes_problem

    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            page = series.keyframe
            return len(series.levels), int(page.imagewidth) * int(page.imagelength), planes_problem(series, str(p))
    except Exception:  # damaged files are judged by the reader that opens them next
        return 0, 0, None


def _looks_like_image(p: Path) -> bool:
    """Whether Pillow recognises the file's content as an image (whatever its extension)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as img:
            return img.format is not None
    except Image.DecompressionBombError:
        return True  # an image beyond Pillow's guard: opened through the pyramid cache
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _check_tiff_complete(p: Path, size: int) -> None:
    """Raise when a TIFF's image data points past the end of the file (a truncated copy).

    Reads only the tag directories, not the pixels. Files tifffile cannot parse are left to the
    backends to judge (they report their own errors).
    """
    import numpy as np
    import tifffile

    end = 0
    # tifffile logs a warning for a cut-off directory chain; the error below says it in one line
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with tifffile.TiffFile(p) as tf:
            for page in tf.pages:
                offsets = np.asarray(getattr(page, "dataoffsets", ()) or (), dtype=np.int64)
                counts = np.asarray(getattr(page, "databytecounts", ()) or (), dtype=np.int64)
                if offsets.size and offsets.size == counts.size:
                    end = max(end, int((offsets + counts).max()))
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, struct.error):
        return
    finally:
        log.setLevel(level)
    if end > size:
        raise SlideOpenError(
            f"{p}: the slide is truncated (image data extends to byte {end:,} but the file has {size:,} bytes)"
        )
