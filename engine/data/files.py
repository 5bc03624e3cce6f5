"""Image-file formats: the Kaggle layout (images + ``id,label`` CSV), class folders, and
unlabelled image folders / CSVs of paths (for prediction)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.data.base import (
    IMAGE_EXTS,
    PCAM_MPP,
    FileDataset,
    check_mpp,
    infer_positive_class,
    parse_size,
    sort_class_names,
    unit_of_column,
)
from engine.data.tables import (
    GROUP_COLUMNS,
    ID_COLUMNS,
    LABEL_COLUMNS,
    PATH_COLUMNS,
    code_labels,
    find_column,
    list_images,
    match_ids,
    peek_header,
    read_table,
    strip_ext,
    table_files,
)
from engine.errors import DatasetError


def _mpp(mpp: float | None, default: float | None) -> tuple[float | None, str]:
    user = check_mpp(mpp)
    if user is not None:
        return user, "user"
    if default is not None:
        return default, "format"
    return None, "unknown"


def is_label_csv(path: Path) -> bool:
    """True when the CSV's header has an id column and a label column."""
    header = peek_header(path)
    return any(c in header for c in ID_COLUMNS) and any(c in header for c in LABEL_COLUMNS)


def _resolve_kaggle(path: Path, csv_path: str | os.PathLike[str] | None, images: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """Find ``(csv, image folder)`` for a Kaggle-layout path (folder or CSV)."""
    if csv_path is not None:
        csv_file = Path(csv_path)
    elif path.is_file():
        csv_file = path
    elif (path / "train_labels.csv").is_file() and (path / "train").is_dir():
        csv_file = path / "train_labels.csv"
    else:
        all_csvs = table_files(path)
        csvs = [p for p in all_csvs if is_label_csv(p)] or (all_csvs if len(all_csvs) == 1 else [])
        if not csvs:
            raise DatasetError(f"{path}: no CSV with 'id' and 'label' columns found next to the images")
        if len(csvs) > 1:
            preferred = [p for p in csvs if p.name.lower() in ("labels.csv", "train_labels.csv")]
            if len(preferred) != 1:
                raise DatasetError(
                    f"{path}: several label CSVs ({', '.join(p.name for p in csvs)}); give the CSV's path"
                )
            csvs = preferred
        csv_file = csvs[0]
    if images is not None:
        return csv_file, Path(images)
    # competition style: train_labels.csv next to train/
    stem = csv_file.stem
    for suffix in ("_labels", "-labels", "_label", "_labeled"):
        if stem.lower().endswith(suffix):
            sibling = csv_file.parent / stem[: -len(suffix)]
            if sibling.is_dir():
                return csv_file, sibling
    if path.is_dir():
        return csv_file, path
    return csv_file, csv_file.parent


def open_kaggle(
    path: Path,
    *,
    labelled: bool = True,
    mpp: float | None = None,
    csv: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    positive_class: str | int | None = None,
    resize: int | Sequence[int] | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    group_column: str | None = None,
) -> FileDataset:
    """Open the Kaggle layout: image files named ``<id>.<ext>`` and a CSV ``id,label``.

    Args:
        path: the image folder holding a label CSV, the CSV itself, or the competition root
            (``ROOT/train/`` + ``ROOT/train_labels.csv``).
        labelled: ``False`` reads only the id column (labels ``-1``).
        mpp: microns per pixel; default ``PCAM_MPP`` (the Kaggle set is PCam at 10x).
        csv: the CSV, when it is not found from ``path``.
        images: the image folder, when it is not ``path`` or the CSV's ``<name>`` sibling.
        class_names: names per integer label (or the allowed label names).
        positive_class: positive class name or index (default: inferred).
        resize: ``(h, w)`` or side to resize every patch to (allows mixed sizes).
        id_column, label_column, group_column: column names when not the usual ones.

    Raises:
        DatasetError: no CSV, CSV without id/label columns, ids matching no image, empty.
    """
    csv_file, folder = _resolve_kaggle(path, csv, images)
    header, rows = read_table(csv_file)
    id_col = find_column(header, id_column, ID_COLUMNS)
    label_col = find_column(header, label_column, LABEL_COLUMNS) if labelled else None
    if id_col is None or (labelled and label_col is None):
        need = "'id' and 'label' columns" if labelled else "an 'id' column"
        raise DatasetError(f"CSV {csv_file} has no {need} (columns: {', '.join(header) or 'none'})")
    if not rows:
        raise DatasetError(f"CSV {csv_file} lists no images (the dataset is empty)")
    warnings: list[str] = []
    seen: dict[str, int] = {}
    keep: list[list[str]] = []
    conflicts = 0
    width = max(id_col, label_col if label_col is not None else 0) + 1
    for r in rows:
        r = r + [""] * (width - len(r))
        key = r[id_col]
        if key in seen:
            if label_col is not None and keep[seen[key]][label_col] != r[label_col]:
                conflicts += 1
            continue
        seen[key] = len(keep)
        keep.append(r)
    if len(keep) < len(rows):
        msg = f"{len(rows) - len(keep)} rows of {csv_file.name} repeat an id (the first row is used)"
        if conflicts:
            raise DatasetError(f"{conflicts} ids in {csv_file.name} appear with different labels")
        warnings.append(msg)
    raw_ids = [r[id_col] for r in keep]
    files = list_images(folder)
    paths, found = match_ids(raw_ids, folder, files)
    n_found = sum(found)
    if n_found == 0 and images is None:
        # e.g. sample_submission.csv next to test/: look one folder down
        for sub in sorted(p for p in csv_file.parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
            sub_files = list_images(sub)
            sub_paths, sub_found = match_ids(raw_ids, sub, sub_files)
            if sum(sub_found) > n_found:
                folder, files, paths, found, n_found = sub, sub_files, sub_paths, sub_found, sum(sub_found)
    if n_found == 0:
        example_file = next(iter(files), None)
        raise DatasetError(
            f"none of the {len(raw_ids)} ids in {csv_file.name} match an image in {folder} "
            f"(e.g. id {raw_ids[0]!r}; "
            + (f"images there are named like {example_file!r})" if example_file else "the folder holds no images)")
        )
    listed = {os.path.basename(p) for p, f in zip(paths, found, strict=True) if f}
    extra = len(files) - len(listed)
    if extra > 0:
        warnings.append(f"{extra} images in {folder.name}/ are not listed in {csv_file.name} (ignored)")
    if label_col is not None:
        labels, names, positive = code_labels(
            [r[label_col] for r in keep], class_names, positive_class, notes=warnings
        )
    else:
        labels = np.full(len(keep), -1, np.int64)
        names = tuple(class_names or ())
        positive = infer_positive_class(names, positive_class) if names else -1
    group_col = find_column(header, group_column, GROUP_COLUMNS)
    groups = None
    if group_col is not None:
        values = [r[group_col] if group_col < len(r) else "" for r in keep]
        _, groups = np.unique(np.array(values, dtype=object).astype(str), return_inverse=True)
    value, source = _mpp(mpp, PCAM_MPP)
    ds = FileDataset(
        paths,
        labels,
        [strip_ext(os.path.basename(i)) if ("/" in i or "\\" in i) else strip_ext(i) for i in raw_ids],
        names,
        positive,
        fmt="kaggle",
        source=str(path),
        mpp=value,
        mpp_source=source,
        groups=groups,
        resize=parse_size(resize),
        open_warnings=warnings,
    )
    if group_col is not None:
        ds.group_unit = unit_of_column(header[group_col])
    return ds


def _walk_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted by path."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(
            os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")
        )
    return sorted(out)


def class_folders(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that hold images (at any depth)."""
    out = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith(".") and _has_image(Path(entry.path)):
            out.append(Path(entry.path))
    return out


def _has_image(folder: Path) -> bool:
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(f.lower().endswith(IMAGE_EXTS) and not f.startswith(".") for f in filenames):
            return True
    return False


def _unique_ids(paths: Sequence[str], root: Path) -> list[str]:
    """File stems as ids; relative paths (without extension) where stems collide."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [os.path.splitext(os.path.relpath(p, root))[0].replace(os.sep, "/") for p in paths]


def open_folders(
    root: Path,
    *,
    labelled: bool = True,
    mpp: float | None = None,
    class_names: Sequence[str] | None = None,
    positive_class: str | int | None = None,
    resize: int | Sequence[int] | None = None,
) -> FileDataset:
    """Open class folders ``ROOT/<class name>/**/*.{png,jpg,jpeg,tif,tiff,bmp}``.

    Class names are the folder names, sorted (numerically when all are integers). Images in
    nested sub-folders of a class folder (``ROOT/tumor/patient_07/*.png``) are grouped by that
    sub-folder's name across classes, so grouped splits keep a patient on one side.

    Args:
        root: the folder holding one sub-folder per class.
        labelled: ``False`` ignores the folder names (labels ``-1``).
        mpp: microns per pixel of the images (unknown by default).
        class_names: restrict to and order by these class folders.
        positive_class: positive class name or index (default: inferred from the names).
        resize: ``(h, w)`` or side to resize every patch to (allows mixed sizes).

    Raises:
        DatasetError: no class folder with images, a named class folder missing.
    """
    folders = class_folders(root)
    if not folders:
        if list_images(root):
            raise DatasetError(
                f"{root} holds images but no class folders and no label CSV: put each class in its own "
                "folder, add an 'id,label' CSV, or open it unlabelled for prediction"
            )
        raise DatasetError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTS)})")
    by_name = {f.name: f for f in folders}
    warnings: list[str] = []
    if class_names is not None:
        names = [str(n) for n in class_names]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DatasetError(f"{root}: no image folder for class {', '.join(missing)}")
        ignored = sorted(set(by_name) - set(names))
        if ignored:
            warnings.append(f"folders not among the classes are ignored: {', '.join(ignored)}")
    else:
        names = sort_class_names(list(by_name))
    empty = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".") and e.name not in by_name)
    if empty:
        warnings.append(f"folders without images are ignored: {', '.join(empty)}")
    paths: list[str] = []
    labels: list[int] = []
    group_keys: list[str] = []
    nested = False
    for k, name in enumerate(names):
        folder = by_name[name]
        for p in _walk_images(folder):
            rel = os.path.relpath(p, folder)
            parts = rel.split(os.sep)
            if len(parts) > 1:
                nested = True
                group_keys.append("d:" + parts[0])
            else:
                group_keys.append("f:" + p)
            paths.append(p)
            labels.append(k)
    groups = np.unique(np.array(group_keys, dtype=str), return_inverse=True)[1] if nested else None
    value, source = _mpp(mpp, None)
    label_arr = np.asarray(labels, np.int64)
    final_names: tuple[str, ...] = tuple(names)
    if not labelled:
        label_arr = np.full(len(paths), -1, np.int64)
        final_names = ()
    ds = FileDataset(
        paths,
        label_arr,
        _unique_ids(paths, root),
        final_names,
        infer_positive_class(final_names, positive_class) if final_names else -1,
        fmt="folders",
        source=str(root),
        mpp=value,
        mpp_source=source,
        groups=groups,
        resize=parse_size(resize),
        open_warnings=warnings,
    )
    ds.group_unit = "folder"  # nested sub-folders (e.g. one per patient) group the patches
    return ds


def open_images(
    path: Path,
    *,
    labelled: bool = False,
    mpp: float | None = None,
    resize: int | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    path_column: str | None = None,
    images: str | os.PathLike[str] | None = None,
) -> FileDataset:
    """Open unlabelled patches for prediction: a folder of images (recursive) or a CSV of paths.

    A CSV needs a ``path`` column (relative to the CSV's folder, or absolute) or an ``id``
    column naming ``<id>.<ext>`` files next to it (or in ``images``).

    Args:
        path: folder or CSV.
        labelled: must be ``False`` (an image list has no labels).
        mpp: microns per pixel of the images (unknown by default).
        resize: ``(h, w)`` or side to resize every patch to.
        class_names: class names to carry (e.g. the model's), labels stay ``-1``.
        path_column: the CSV column with paths or ids, when not the usual one.
        images: the image folder for a CSV of ids.

    Raises:
        DatasetError: no images, CSV without a path/id column, labelled requested.
    """
    if labelled:
        raise DatasetError(f"{path}: a plain list of images has no labels; use class folders or an 'id,label' CSV")
    warnings: list[str] = []
    if path.is_file():
        header, rows = read_table(path)
        col = find_column(header, path_column, PATH_COLUMNS + ID_COLUMNS)
        if col is None:
            raise DatasetError(f"CSV {path} has no 'path' or 'id' column (columns: {', '.join(header) or 'none'})")
        values = [r[col] for r in rows if col < len(r) and r[col]]
        if not values:
            raise DatasetError(f"CSV {path} lists no images (the dataset is empty)")
        folder = Path(images) if images is not None else path.parent
        if header[col].lower() in PATH_COLUMNS and any(v.lower().endswith(IMAGE_EXTS) for v in values[:100]):
            paths = [v if os.path.isabs(v) else str(folder / v) for v in values]
        else:
            paths, found = match_ids(values, folder, list_images(folder))
            if not any(found):
                raise DatasetError(f"none of the {len(values)} ids in {path.name} match an image in {folder}")
        ids = [strip_ext(os.path.basename(v)) for v in values]
    else:
        paths = _walk_images(path)
        if not paths:
            raise DatasetError(f"no images found under {path} (looked for {', '.join(IMAGE_EXTS)})")
        ids = _unique_ids(paths, path)
    if len(set(ids)) < len(ids):
        warnings.append(f"{len(ids) - len(set(ids))} ids repeat; predictions will repeat them too")
    value, source = _mpp(mpp, None)
    names = tuple(str(n) for n in class_names) if class_names else ()
    return FileDataset(
        paths,
        np.full(len(paths), -1, np.int64),
        ids,
        names,
        infer_positive_class(names) if names else -1,
        fmt="images",
        source=str(path),
        mpp=value,
        mpp_source=source,
        resize=parse_size(resize),
        open_warnings=warnings,
    )
