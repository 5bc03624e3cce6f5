"""``open_dataset``: one entry point for every patch dataset format, with format detection."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from engine.data.base import IMAGE_EXTS, PatchDataset
from engine.data.files import class_folders, is_label_csv, open_folders, open_images, open_kaggle
from engine.data.pcam_h5 import H5_EXTS, PCamH5Dataset, find_pairs, resolve_pair
from engine.data.slides import ANNOTATION_EXTS, SLIDE_EXTS
from engine.data.tables import list_images, peek_header, table_files
from engine.errors import DatasetError

FORMATS = ("kaggle", "folders", "pcam_h5", "annotated_slides", "images")



def detect_format(path: Path, labelled: bool = True) -> str:
    """Guess the format of ``path`` from names and CSV headers only (no image is read).

    Raises:
        DatasetError: nothing recognisable at ``path``.
    """
    if path.is_file():
        name = path.name.lower()
        if name.endswith(H5_EXTS):
            return "pcam_h5"
        if name.endswith((".csv", ".tsv", ".txt")):
            header = peek_header(path)
            if "slide" in header or "slide_path" in header:
                return "annotated_slides"
            if labelled:
                return "kaggle"
            return "images" if not is_label_csv(path) else "kaggle"
        if name.endswith(ANNOTATION_EXTS):
            return "annotated_slides"
        if name.endswith(IMAGE_EXTS):
            raise DatasetError(f"{path} is a single image; give the folder (or CSV) that holds the dataset")
        raise DatasetError(f"{path}: not a dataset (expected a folder, a label CSV or a PCam *_x.h5 file)")
    if not path.is_dir():
        raise DatasetError(f"dataset not found: {path}")
    if find_pairs(path):
        return "pcam_h5"
    if (path / "train_labels.csv").is_file() and (path / "train").is_dir():
        return "kaggle" if labelled else "images"
    if _has_annotated_slides(path):
        return "annotated_slides"
    csvs = table_files(path)
    has_images = bool(list_images(path))
    if csvs and has_images:
        return "kaggle"  # images next to a CSV: a Kaggle layout (its CSV is checked on opening)
    if class_folders(path):
        return "folders" if labelled else "images"
    if has_images:
        return "images" if not labelled else "kaggle" if csvs else "folders"
    raise DatasetError(f"no images found under {path} (looked for {', '.join(IMAGE_EXTS)}, *_x.h5, or slides with GeoJSON)")


def _has_annotated_slides(folder: Path) -> bool:


    names = {e.name.lower() for e in os.scandir(folder) if e.is_file()}
    stems = {n[: -len(ext)] for n in names for ext in ANNOTATION_EXTS if n.endswith(ext)}
    if not stems:
        return False
    slide_stems = {n[: -len(ext)] for n in names for ext in SLIDE_EXTS if n.endswith(ext)}
    # QuPath names exports "<image>.geojson" or "<image>.<ext>.geojson"
    return bool(stems & (slide_stems | {n for n in names if n.endswith(SLIDE_EXTS)}))


def _call(opener: Any, path: Path, fmt: str, opts: dict[str, Any]) -> PatchDataset:
    params = inspect.signature(opener).parameters
    unknown = sorted(set(opts) - set(params))
    if unknown:
        allowed = sorted(p for p in params if p not in ("path", "root", "self", "x_path", "y_path"))
        raise DatasetError(
            f"option {', '.join(unknown)} does not apply to the {fmt} format (options: {', '.join(allowed)})"
        )
    return opener(path, **opts)


def open_dataset(
    path: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    mpp: float | None = None,
    labelled: bool = True,
    require_classes: int = 0,
    **opts: Any,
) -> PatchDataset:
    """Open a patch dataset.

    Formats (``fmt``; ``"auto"`` detects from names and CSV headers):

    - ``kaggle``: a folder of ``<id>.tif|png|jpg`` plus a CSV ``id,label`` (the folder, the
      CSV, or the competition root ``ROOT/train/`` + ``ROOT/train_labels.csv``). Options
      ``csv``, ``images``, ``class_names``, ``positive_class``, ``resize``, ``id_column``,
      ``label_column``, ``group_column``. mpp defaults to 0.972 (PCam, 10x).
    - ``folders``: ``ROOT/<class name>/*.png|jpg|jpeg|tif|tiff``. Options ``class_names``,
      ``positive_class``, ``resize``.
    - ``pcam_h5``: a ``*_x.h5`` / ``*_y.h5`` pair (either file, or a folder with one pair).
      Options ``split``, ``class_names``, ``positive_class``, ``resize``. mpp defaults to 0.972.
    - ``annotated_slides``: slides with QuPath GeoJSON annotations (a folder, or a CSV manifest
      with ``slide,annotations`` columns). Options: see :func:`engine.data.slides.open_annotated_slides`.
    - ``images`` (unlabelled, for prediction): a folder of images or a CSV of paths/ids.

    Args:
        path: file or folder.
        fmt: format name or ``"auto"``.
        mpp: microns per pixel of the patches when the format does not know it.
        labelled: ``False`` opens any format without labels (labels ``-1``), for prediction.
        require_classes: raise unless this many classes hold patches (``2`` for training).
        **opts: format options (listed above).

    Raises:
        DatasetError: missing path, unknown format or option, unreadable or unusable dataset.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"dataset not found: {p}")
    if fmt not in ("auto", *FORMATS):
        raise DatasetError(f"unknown dataset format {fmt!r} (choose auto, {', '.join(FORMATS)})")
    if fmt == "auto":
        fmt = detect_format(p, labelled)
    if fmt == "kaggle":
        ds: PatchDataset = _call(open_kaggle, p, fmt, {"labelled": labelled, "mpp": mpp, **opts})
    elif fmt == "folders":
        ds = _call(open_folders, p, fmt, {"labelled": labelled, "mpp": mpp, **opts})
    elif fmt == "images":
        if (p / "train_labels.csv").is_file() and (p / "train").is_dir() and "images" not in opts:
            p = p / "train"
        ds = _call(open_images, p, fmt, {"labelled": labelled, "mpp": mpp, **opts})
    elif fmt == "pcam_h5":
        split = opts.pop("split", None)
        x, y = resolve_pair(p, split)
        ds = _call(PCamH5Dataset, x, fmt, {"y_path": y, "labelled": labelled, "mpp": mpp, **opts})
    else:
        from engine.data.slides import open_annotated_slides

        ds = _call(open_annotated_slides, p, fmt, {"labelled": labelled, "mpp": mpp, **opts})
    if require_classes and labelled:
        ds.require_classes(require_classes)
    return ds
