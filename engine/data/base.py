"""The patch dataset interface shared by every format, and the file-backed implementation.

A :class:`PatchDataset` is an indexable set of RGB patches with integer labels. Patches are read
one at a time with :meth:`PatchDataset.read` (thread-safe; datasets pickle cheaply, so a
``spawn``-ed data-loader worker reopens files lazily).
"""

from __future__ import annotations

import abc
import hashlib
import io
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError

#: Microns per pixel of PatchCamelyon patches and of the Kaggle histopathologic-cancer-detection
#: set derived from it (CAMELYON16 slides at 10x, level 2 of 0.243 um/px scans).
PCAM_MPP = 0.972

#: File suffixes read as patch images (case-insensitive).
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Class names treated as "the thing to detect" / "the normal class" when choosing the positive
# class of a binary dataset. Matched against lower-case names as whole words or prefixes.
_POSITIVE_RE = re.compile(
    r"^(1|yes|true|pos|positive|tumou?r\w*|metast\w*|cancer\w*|malignan\w*|carcinoma\w*|lesion\w*|"
    r"abnormal|invasive\w*|n\+.*|mets?)$"
)
_NEGATIVE_RE = re.compile(
    r"^(0|no|false|neg|negative|normal\w*|benign\w*|healthy|background|non[-_ ]?tumou?r\w*|"
    r"other|stroma\w*|n0)$"
)


def infer_positive_class(class_names: Sequence[str], positive: str | int | None = None) -> int:
    """Index of the positive class (the class whose probability a heatmap shows).

    Args:
        class_names: the dataset's class names, in index order.
        positive: a class name or index chosen by the user; ``None`` infers it: the highest
            of numbered classes (``0/1``, ``1/2``), else a tumour-like name (``tumor``,
            ``metastasis``, ...), else the class that is not normal-like in a two-class set,
            else the last class.

    Returns:
        The index, or ``-1`` for a dataset without classes.

    Raises:
        DatasetError: ``positive`` names no class.
    """
    names = [str(n) for n in class_names]
    if positive is not None:
        if isinstance(positive, (int, np.integer)) and not isinstance(positive, bool):
            if 0 <= int(positive) < len(names):
                return int(positive)
        elif str(positive) in names:
            return names.index(str(positive))
        raise DatasetError(f"positive class {positive!r} is not one of the classes {', '.join(names) or '(none)'}")
    if not names:
        return -1
    lower = [n.strip().lower() for n in names]
    if all(n.lstrip("-").isdigit() for n in lower):
        # numbered classes (0/1, 1/2, grades 0-3) are in numeric order: the highest number is
        # the class to detect (with 1/2 coding, "1" is not "yes")
        return len(names) - 1
    hits = [i for i, n in enumerate(lower) if _POSITIVE_RE.match(n)]
    if len(hits) == 1:
        return hits[0]
    if len(names) == 2:
        neg = [i for i, n in enumerate(lower) if _NEGATIVE_RE.match(n)]
        if len(neg) == 1:
            return 1 - neg[0]
    return len(names) - 1


def sort_class_names(names: Sequence[str]) -> list[str]:
    """Names sorted numerically when all are integers (``"2" < "10"``), else alphabetically."""
    try:
        return sorted(names, key=lambda n: (int(n), n))
    except ValueError:
        return sorted(names, key=lambda n: (n.lower(), n))


def check_mpp(mpp: float | None) -> float | None:
    """Validate a microns-per-pixel value given by the user (``None`` passes)."""
    if mpp is None:
        return None
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise DatasetError(f"microns per pixel must be a number, got {mpp!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 100:
        raise DatasetError(f"microns per pixel must be between 0 and 100, got {mpp!r}")
    return value


def parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``96`` or ``(h, w)`` -> ``(h, w)``; ``None`` passes.

    Raises:
        DatasetError: not one or two positive integers.
    """
    if size is None:
        return None
    values = [size] if isinstance(size, (int, np.integer)) else list(size)
    if len(values) == 1:
        values = values * 2
    try:
        h, w = (int(v) for v in values)
    except (TypeError, ValueError):
        raise DatasetError(f"patch size must be one or two positive integers, got {size!r}") from None
    if len(values) != 2 or h <= 0 or w <= 0 or h > 16384 or w > 16384:
        raise DatasetError(f"patch size must be one or two positive integers, got {size!r}")
    return h, w


@dataclass(frozen=True, slots=True)
class ItemCheck:
    """The result of checking one patch (see :meth:`PatchDataset.check_items`).

    Attributes:
        digest: content hash (16 bytes) of the stored patch, or ``None`` when not read.
        size: ``(height, width)`` in pixels as stored, or ``None`` when unknown.
        error: why the patch cannot be read, or ``None``.
        missing: the file does not exist.
    """

    digest: bytes | None = None
    size: tuple[int, int] | None = None
    error: str | None = None
    missing: bool = False


class PatchDataset(abc.ABC):
    """Labelled (or unlabelled) RGB patches.

    Attributes:
        labels: ``int64`` array ``(N,)``, class index per patch; ``-1`` = unlabelled/unknown.
        class_names: class names in index order (empty for an unlabelled set).
        positive_class: index of the class a heatmap shows (``-1`` when there are no classes).
        ids: one string per patch (Kaggle ids without extension; used in submission CSVs).
        paths: file per patch, or ``None`` when patches are not files (HDF5, slides).
        groups: ``int64`` array ``(N,)`` of group ids (slide, patient) or ``None``.
        mpp: microns per pixel of the patches as :meth:`read` returns them, or ``None``.
        patch_size: ``(height, width)`` in pixels of the patches :meth:`read` returns.
        source: the path the dataset was opened from.
        fmt: format name (``kaggle``, ``folders``, ``pcam_h5``, ``annotated_slides``, ``images``).
        open_warnings: problems noticed while opening (shown in the validation report).
    """

    labels: np.ndarray
    class_names: tuple[str, ...]
    positive_class: int
    ids: list[str]
    paths: list[str] | None
    groups: np.ndarray | None
    mpp: float | None
    patch_size: tuple[int, int]
    source: str
    fmt: str
    open_warnings: tuple[str, ...] = ()
    #: where :attr:`mpp` comes from: ``"format"``, ``"user"``, ``"slides"`` or ``"unknown"``
    mpp_source: str = "unknown"
    #: whether hashing every patch is cheap (stored patches) or means cutting them (slides)
    hashing_is_cheap: bool = True
    #: what :attr:`groups` are (``"patient"``, ``"slide"``, ``"folder"``, ``"group"``): the unit
    #: confidence intervals resample; ``""`` = guess from the format (:func:`resampling_groups`)
    group_unit: str = ""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def read(self, i: int) -> np.ndarray:
        """Patch ``i`` as ``uint8`` RGB, shape ``(H, W, 3)`` with ``(H, W) == patch_size``.

        Raises:
            DatasetError: the patch cannot be read (missing or damaged file, wrong size).
        """

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        """Patches ``indices`` stacked: ``uint8`` ``(B, H, W, 3)``."""
        h, w = self.patch_size
        out = np.empty((len(indices), h, w, 3), np.uint8)
        for j, i in enumerate(indices):
            out[j] = self.read(int(i))
        return out

    def check_items(self, indices: Sequence[int], decode: bool = True) -> list[ItemCheck]:
        """Check patches for the validation report: content hash, stored size, readability.

        The default reads every patch; file-backed datasets hash file bytes instead.
        """
        out: list[ItemCheck] = []
        for i in indices:
            try:
                arr = self.read(int(i))
            except DatasetError as exc:
                out.append(ItemCheck(error=str(exc)))
                continue
            out.append(ItemCheck(digest=_digest(arr.tobytes()), size=(arr.shape[0], arr.shape[1])))
        return out

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    def class_counts(self) -> dict[str, int]:
        """Patches per class name (plus ``"unlabelled"`` when some labels are -1/unknown)."""
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        out = {name: int(counts[k]) for k, name in enumerate(self.class_names)}
        n_unknown = int(np.sum((self.labels < 0) | (self.labels >= len(self.class_names))))
        if n_unknown:
            out["unlabelled"] = n_unknown
        return out

    def require_classes(self, n: int = 2) -> None:
        """Raise unless at least ``n`` classes have patches (training needs two).

        Raises:
            DatasetError: fewer than ``n`` classes hold patches.
        """
        present = [name for name, c in self.class_counts().items() if c > 0 and name != "unlabelled"]
        if len(present) < n:
            if not present:
                raise DatasetError(f"{self.source}: no labelled patches (training needs {n} classes)")
            raise DatasetError(
                f"{self.source}: only {len(present)} class with patches ({', '.join(present)}); "
                f"training needs at least {n}"
            )

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: format, source, size, counts per class, mpp, groups."""
        return {
            "format": self.fmt,
            "source": self.source,
            "patches": len(self),
            "patch_size": list(self.patch_size),
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "counts": self.class_counts(),
            "groups": int(len(np.unique(self.groups))) if self.groups is not None else None,
            "warnings": list(self.open_warnings),
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.fmt} {len(self)} patches {self.class_counts()} from {self.source}>"


def unit_of_column(name: str) -> str:
    """The group unit a group column's header names: ``"patient"``, ``"slide"`` or ``"group"``."""
    low = name.strip().lower()
    if "patient" in low or low.startswith("case"):
        return "patient"
    if "slide" in low or "wsi" in low:
        return "slide"
    return "group"


def resampling_groups(ds: PatchDataset, indices: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
    """Groups for cluster-bootstrap confidence intervals of patches ``indices`` (default all).

    Returns:
        ``(groups or None, unit)``: the ``(n,)`` group ids and what they are (``"patient"``,
        ``"slide"``, ``"folder"``, ``"group"``), or ``(None, "case")`` when the dataset has no
        groups, so single patches are resampled.
    """
    if ds.groups is None:
        return None, "case"
    groups = np.asarray(ds.groups)
    if indices is not None:
        groups = groups[np.asarray(indices, dtype=np.int64)]
    unit = ds.group_unit
    if not unit:
        slides = getattr(ds, "slide_paths", None)
        if slides is not None:  # patches cut from slides: grouped by patient where a manifest names one
            unit = "patient" if len(np.unique(ds.groups)) < len(slides) else "slide"
        else:
            unit = "slide" if ds.fmt == "pcam_h5" else "group"
    return groups, unit


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _to_rgb_uint8(img: Any) -> np.ndarray:
    """A PIL image in any mode -> ``uint8`` ``(H, W, 3)`` RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) or 1.0
        arr = (arr / (65535.0 if hi > 255 else 255.0) * 255.0).clip(0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        # transparent pixels are glass/background: white, as the slide readers show them
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        a = rgba[..., 3:4]
        return ((rgba[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _tifffile_read(data: bytes) -> np.ndarray:
    """Fallback for TIFF flavours Pillow cannot decode (tiled, JPEG 2000, planar, 16-bit).

    Pixels are converted as the slide readers convert them (palette colours, alpha over white).
    """
    import tifffile

    from engine.slides.image_reader import to_rgb_uint8

    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        page = tf.pages.first
        arr = page.asarray()
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
            cmap = np.asarray(page.colormap)
            lut = ((cmap >> 8) if cmap.max() > 255 else cmap).astype(np.uint8).T
            arr = lut[np.clip(arr.astype(np.int64), 0, lut.shape[0] - 1)]
        elif page.photometric == tifffile.PHOTOMETRIC.MINISWHITE and arr.dtype.kind in "ui":
            arr = np.iinfo(arr.dtype).max - arr
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] > 4):
        raise ValueError(f"unsupported TIFF layout {arr.shape}")
    return np.ascontiguousarray(to_rgb_uint8(arr))


def read_image_file(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file's pixels as RGB uint8 (:func:`decode_image`).

    Raises:
        DatasetError: the file is missing, unreadable or not a decodable image.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to ``uint8`` ``(H, W, 3)`` RGB.

    Raises:
        DatasetError: the bytes are not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _to_rgb_uint8(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if name.lower().endswith((".tif", ".tiff")):
            try:
                return _tifffile_read(data)
            except Exception as tiff_exc:  # tifffile raises many types for damaged files
                raise DatasetError(f"cannot read image {name}: {tiff_exc}") from exc
        raise DatasetError(f"cannot read image {name}: {exc}") from exc


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (no decoding).

    Raises:
        DatasetError: missing or not an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if str(path).lower().endswith((".tif", ".tiff")):
            try:
                arr = _tifffile_read(Path(path).read_bytes())
                return arr.shape[0], arr.shape[1]
            except Exception:  # fall through to the error below
                pass
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    # box filter averages when shrinking (no aliasing of nuclei), bilinear when enlarging
    resample = Image.BOX if arr.shape[0] >= h and arr.shape[1] >= w else Image.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((w, h), resample), dtype=np.uint8)


class FileDataset(PatchDataset):
    """Patches stored one per image file (Kaggle layout, class folders, unlabelled folders/CSVs).

    Args:
        paths: image file per patch (may name missing files: reported by validation).
        labels: class index per patch, ``-1`` for unknown.
        ids: id per patch.
        class_names: class names in index order.
        positive_class: positive class index (``-1`` without classes).
        fmt: format name.
        source: path the dataset was opened from.
        mpp: microns per pixel of the stored images, or ``None``.
        mpp_source: ``"format"``, ``"user"`` or ``"unknown"``.
        groups: group id per patch, or ``None``.
        resize: ``(h, w)`` every patch is resized to, or ``None`` to require one size.
        open_warnings: problems noticed while opening.

    Raises:
        DatasetError: no patches, or none of the first files can be read to learn the size.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        ids: Sequence[str],
        class_names: Sequence[str],
        positive_class: int,
        *,
        fmt: str,
        source: str,
        mpp: float | None,
        mpp_source: str,
        groups: np.ndarray | None = None,
        resize: tuple[int, int] | None = None,
        open_warnings: Sequence[str] = (),
    ) -> None:
        if not len(paths):
            raise DatasetError(f"{source}: the dataset is empty (no images)")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = list(ids)
        self.class_names = tuple(class_names)
        self.positive_class = int(positive_class)
        self.fmt = fmt
        self.source = source
        self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
        self.open_warnings = tuple(open_warnings)
        self._resize_to = resize
        native = self._probe_size()
        self.native_size = native
        self.patch_size = resize if resize is not None else native
        # the stored images' resolution scaled to what read() returns (first image's size)
        if mpp is not None and resize is not None and resize != native:
            mpp = mpp * native[1] / resize[1]
        self.mpp = mpp
        self.mpp_source = mpp_source

    def _probe_size(self) -> tuple[int, int]:
        last: DatasetError | None = None
        for p in self.paths[:32]:
            try:
                return image_size(p)
            except DatasetError as exc:
                last = exc
        raise DatasetError(f"{self.source}: cannot read any of the first images ({last})")

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        path = self.paths[i]
        arr = read_image_file(path)
        if (arr.shape[0], arr.shape[1]) != self.patch_size:
            if self._resize_to is None:
                raise DatasetError(
                    f"image {path} is {arr.shape[1]}x{arr.shape[0]} px but the dataset's patches are "
                    f"{self.patch_size[1]}x{self.patch_size[0]} (mixed sizes: resize the images, or ask for resizing)"
                )
            arr = _resize(arr, self._resize_to)
        return arr

    def check_items(self, indices: Sequence[int], decode: bool = True) -> list[ItemCheck]:
        """Hash each file's bytes and read its size from the header; decode it when ``decode``."""
        from PIL import Image, UnidentifiedImageError

        out: list[ItemCheck] = []
        for i in indices:
            path = self.paths[int(i)]
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                out.append(ItemCheck(error="file not found", missing=True))
                continue
            except OSError as exc:
                out.append(ItemCheck(error=f"cannot read: {exc.strerror or exc}"))
                continue
            digest = _digest(data)
            try:
                with Image.open(io.BytesIO(data)) as img:
                    size = (img.height, img.width)
                    if decode:
                        if img.format == "JPEG":
                            # DCT-domain downscaling still entropy-decodes every block, so a
                            # truncated or corrupt file fails, at a fraction of the cost
                            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                        img.load()
                out.append(ItemCheck(digest=digest, size=size))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                try:
                    arr = decode_image(data, path)
                    out.append(ItemCheck(digest=digest, size=(arr.shape[0], arr.shape[1])))
                except DatasetError:
                    out.append(ItemCheck(digest=digest, error=f"not a readable image ({exc})"))
        return out


class DigestCache:
    """Per-dataset cache of content digests (validation computes them; splits reuse them)."""

    _lock = threading.Lock()
    _store: dict[int, tuple[Any, list[bytes | None]]] = {}

    @classmethod
    def get(cls, ds: PatchDataset) -> list[bytes | None] | None:
        with cls._lock:
            entry = cls._store.get(id(ds))
        if entry is not None and entry[0]() is ds:
            return entry[1]
        return None

    @classmethod
    def put(cls, ds: PatchDataset, digests: list[bytes | None]) -> None:
        import weakref

        with cls._lock:
            # drop entries of datasets that no longer exist
            for key in [k for k, (ref, _) in cls._store.items() if ref() is None]:
                del cls._store[key]
            cls._store[id(ds)] = (weakref.ref(ds), digests)
