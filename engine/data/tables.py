"""CSV label tables: reading, column detection and label coding (shared by the file formats)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.data.base import IMAGE_EXTS, infer_positive_class, sort_class_names
from engine.errors import DatasetError

ID_COLUMNS = ("id", "image_id", "image", "filename", "file", "file_name", "path", "patch")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "y")
GROUP_COLUMNS = ("group", "patient", "patient_id", "slide", "slide_id", "wsi", "case", "case_id")
PATH_COLUMNS = ("path", "filename", "file", "file_name", "image")


#: Suffixes of label tables (case-insensitive).
TABLE_EXTS = (".csv", ".tsv")


def decode_text(data: bytes) -> str:
    """Decode a text table as spreadsheet programs save it.

    A byte-order mark decides (UTF-8, UTF-16, UTF-32: Excel's "Unicode text" is UTF-16);
    otherwise UTF-8, else Windows-1252 (Excel's "CSV" on Western Windows), else Latin-1.
    """
    boms = (
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe\x00\x00", "utf-32"),
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    )
    for bom, codec in boms:
        if data.startswith(bom):
            return data.decode(codec)
    for codec in ("utf-8", "cp1252"):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _delimiter(first_line: str) -> str:
    return max((",", ";", "\t"), key=first_line.count)


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read a CSV (comma, semicolon or tab separated; see :func:`decode_text` for encodings).

    Returns:
        ``(header, rows)``: header names stripped, rows as lists of stripped strings.

    Raises:
        DatasetError: missing, unreadable, or without a header row.
    """
    try:
        text = decode_text(Path(path).read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"CSV not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read CSV {path}: {exc}") from None
    if "\x00" in text:
        raise DatasetError(f"{path} is not a text table (it holds binary data)")
    first = text.split("\n", 1)[0]
    reader = csv.reader(text.splitlines(), delimiter=_delimiter(first))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetError(f"CSV {path} is empty") from None
    rows = [[c.strip() for c in r] for r in reader if any(c.strip() for c in r)]
    return header, rows


def peek_header(path: Path) -> list[str]:
    """The header row of a CSV, lower-cased and unquoted (empty list when unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return []
    text = decode_text(head)
    if "\x00" in text:
        return []
    first = text.splitlines()[0] if text else ""
    row = next(csv.reader([first], delimiter=_delimiter(first)), [])
    return [h.strip().lower() for h in row]


def table_files(folder: Path) -> list[Path]:
    """Label tables directly in ``folder`` (``.csv``/``.tsv`` in any letter case), sorted."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in TABLE_EXTS and p.is_file() and not p.name.startswith("."))
    except OSError:
        return []


def find_column(header: Sequence[str], wanted: str | None, aliases: Sequence[str]) -> int | None:
    """Index of column ``wanted`` (case-insensitive), else of the first alias present, else None.

    Raises:
        DatasetError: ``wanted`` was given and is not a column.
    """
    lower = [h.lower() for h in header]
    if wanted is not None:
        if wanted.lower() not in lower:
            raise DatasetError(f"the CSV has no column {wanted!r} (columns: {', '.join(header)})")
        return lower.index(wanted.lower())
    for alias in aliases:
        if alias in lower:
            return lower.index(alias)
    return None


def _as_int(value: str) -> int | None:
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def _merge_spellings(values: Sequence[str], notes: list[str] | None) -> list[str]:
    """Map labels that differ only in letter case (``Tumor``/``tumor``) to their commonest spelling.

    Hand-edited label tables mix spellings of one class; counting them as separate classes
    would train a model on a split class.
    """
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    by_key: dict[str, list[str]] = {}
    for v in counts:
        by_key.setdefault(v.casefold(), []).append(v)
    rename: dict[str, str] = {}
    for spellings in by_key.values():
        if len(spellings) > 1:
            best = max(spellings, key=lambda v: (counts[v], v))
            for v in spellings:
                if v != best:
                    rename[v] = best
            if notes is not None:
                others = ", ".join(repr(v) for v in sorted(spellings) if v != best)
                notes.append(f"labels {others} are read as {best!r} (same name, different letter case)")
    return [rename.get(v, v) for v in values] if rename else list(values)


def code_labels(
    values: Sequence[str],
    class_names: Sequence[str] | None,
    positive: str | int | None,
    *,
    notes: list[str] | None = None,
) -> tuple[np.ndarray, tuple[str, ...], int]:
    """Turn label strings into class indices.

    Integer labels ``0..K-1`` index the classes directly (names ``"0".."K-1"`` unless
    ``class_names`` gives names per index); other labels are class names, sorted, with
    spellings that differ only in letter case merged. Blank or unknown labels (not in
    ``class_names``) become ``-1`` and are reported by validation.

    Args:
        values: one label string per patch (stripped).
        class_names: the allowed class names in index order, or ``None`` to use the labels.
        positive: positive class name or index, or ``None`` to infer it.
        notes: receives one-line remarks for the validation report (merged spellings).

    Returns:
        ``(labels int64 (N,), class_names, positive_class)``.
    """
    if class_names is not None:
        names = tuple(str(n) for n in class_names)
        if not names:
            raise DatasetError("class names must not be empty")
        index = {n: k for k, n in enumerate(names)}
        out = np.full(len(values), -1, np.int64)
        for j, v in enumerate(values):
            if v in index:
                out[j] = index[v]
            else:
                iv = _as_int(v) if v else None
                if iv is not None and 0 <= iv < len(names):
                    out[j] = iv
        return out, names, infer_positive_class(names, positive)
    present = {v for v in values if v != ""}
    if any(_as_int(v) is None for v in present):
        values = _merge_spellings(values, notes)
        present = {v for v in values if v != ""}
    ints = {v: _as_int(v) for v in present}
    if present and all(i is not None for i in ints.values()):
        unique = sorted({i for i in ints.values() if i is not None})
        if (unique[0] == 0 and unique[-1] == len(unique) - 1) or (unique[0] >= 0 and unique[-1] <= 1):
            names = tuple(str(k) for k in range(unique[-1] + 1))
            code = {v: int(i) for v, i in ints.items() if i is not None}
        else:
            names = tuple(str(k) for k in unique)
            code = {v: unique.index(int(i)) for v, i in ints.items() if i is not None}
    else:
        names = tuple(sort_class_names(list(present)))
        code = {n: k for k, n in enumerate(names)}
    out = np.fromiter((code.get(v, -1) for v in values), dtype=np.int64, count=len(values))
    return out, names, infer_positive_class(names, positive)


def list_images(folder: Path) -> dict[str, str]:
    """Image files directly in ``folder``: ``{file name: full path}`` (one directory scan)."""
    out: dict[str, str] = {}
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.lower().endswith(IMAGE_EXTS) and not entry.name.startswith("."):
                    out[entry.name] = entry.path
    except FileNotFoundError:
        raise DatasetError(f"image folder not found: {folder}") from None
    except NotADirectoryError:
        raise DatasetError(f"not a folder: {folder}") from None
    return out


def match_ids(ids: Sequence[str], folder: Path, files: dict[str, str]) -> tuple[list[str], list[bool]]:
    """Map CSV ids (with or without extension, or relative paths) to image files in ``folder``.

    Returns:
        ``(paths, found)``: a path per id (a not-existing path for ids without a file, using
        the folder's most common extension) and whether it was found.
    """
    by_stem: dict[str, str] = {}
    # prefer lossless/original formats when the same id exists with several extensions
    rank = {e: r for r, e in enumerate((".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg"))}
    for name in sorted(files, key=lambda n: rank.get(os.path.splitext(n)[1].lower(), 9)):
        by_stem.setdefault(os.path.splitext(name)[0], files[name])
    exts = [os.path.splitext(n)[1] for n in files]
    common_ext = max(set(exts), key=exts.count) if exts else ".tif"
    paths: list[str] = []
    found: list[bool] = []
    # ids naming the file with another letter case of its extension (``a.tif`` for ``a.TIF``)
    by_lower = {name.lower(): path for name, path in files.items()}
    for raw in ids:
        p = files.get(raw) or by_stem.get(raw)
        if p is None and raw.lower().endswith(IMAGE_EXTS):
            p = by_lower.get(raw.lower())
        if p is None and ("/" in raw or "\\" in raw):
            cand = folder / raw
            if cand.is_file():
                p = str(cand)
        found.append(p is not None)
        paths.append(p if p is not None else str(folder / (raw if raw.lower().endswith(IMAGE_EXTS) else raw + common_ext)))
    return paths, found


def strip_ext(name: str) -> str:
    """``abc.tif`` -> ``abc``; ids without an image extension pass unchanged."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTS else name
