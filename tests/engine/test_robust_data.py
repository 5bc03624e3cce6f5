"""Patch datasets as users really have them: other class names, junk files, odd extensions,
label tables from spreadsheets, mixed image modes. Each opens with the right classes and
positive class, validates, splits and reads RGB patches, or fails with one clear line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import open_dataset, split_dataset, validate_dataset
from engine.data.base import sort_class_names
from engine.errors import DatasetError

SIDE = 32


def patch(k: int, i: int) -> np.ndarray:
    """A distinct ``(32, 32, 3)`` patch for class ``k``, copy ``i`` (no accidental duplicates)."""
    rng = np.random.default_rng(1000 * k + i)
    arr = rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
    arr[..., 0] = (60 * k + 20) % 256
    return arr


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    elif mode is not None:
        img = img.convert(mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
    img.save(path, format=fmt[path.suffix.lower()])


def make_folders(root: Path, classes: list[str], ext: str = ".png", n: int = 4) -> Path:
    for k, name in enumerate(classes):
        for i in range(n):
            save(root / name / f"p{i}{ext}", patch(k, i))
    return root


def check_usable(root: Path, classes: tuple[str, ...], positive: str, per_class: int = 4, **kw: object) -> None:
    ds = open_dataset(root, **kw)  # type: ignore[arg-type]
    assert ds.class_names == classes
    assert ds.class_names[ds.positive_class] == positive
    assert ds.class_counts() == {c: per_class for c in classes}
    report = validate_dataset(ds)
    assert report.ok, report.errors
    train, val = split_dataset(ds, 0.25)
    assert len(train) + len(val) == len(ds) and len(val) > 0
    batch = ds.read_many(range(len(ds)))
    assert batch.shape == (len(ds), SIDE, SIDE, 3) and batch.dtype == np.uint8


# ---------------------------------------------------------------------------- class folders


@pytest.mark.parametrize(
    ("classes", "positive"),
    [
        (["normal", "tumor"], "tumor"),
        (["benign", "metastasis"], "metastasis"),
        (["Normal", "Tumour"], "Tumour"),
        (["non-tumor", "tumor"], "tumor"),
        (["N0", "N+"], "N+"),
        (["healthy", "lesion"], "lesion"),
        (["0", "1"], "1"),
        (["1", "2"], "2"),  # numbered classes: the highest is positive, not "1" as in "yes"
        (["lymphocytes", "stroma", "tumour"], "tumour"),
        (["adipose", "lymph", "metastatic", "stroma"], "metastatic"),
    ],
)
def test_class_folder_names(tmp_path: Path, classes: list[str], positive: str) -> None:
    check_usable(make_folders(tmp_path / "ds", classes), tuple(sort_class_names(classes)), positive)


def test_junk_files_from_other_systems_are_ignored(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "ds", ["normal", "tumor"])
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (root / "normal" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (root / "tumor" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(100))
    (root / "tumor" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "tumor" / "._p0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(100))  # macOS resource fork
    (root / "normal" / ".~lock.notes.csv#").write_text("x")
    save(root / ".thumbnails" / "t.png", patch(5, 0))  # a hidden folder of images
    save(root / "tumor" / ".hidden.png", patch(5, 1))
    (root / "README.txt").write_text("patches from slide 12\n")
    (root / "__MACOSX" / "tumor").mkdir(parents=True)
    (root / "__MACOSX" / "tumor" / "._p1.png").write_bytes(b"\x00\x05\x16\x07")
    check_usable(root, ("normal", "tumor"), "tumor")


@pytest.mark.parametrize("ext", [".PNG", ".JPG", ".Jpeg", ".TIF", ".TIFF", ".BMP"])
def test_uppercase_extensions(tmp_path: Path, ext: str) -> None:
    check_usable(make_folders(tmp_path / "ds", ["normal", "tumor"], ext=ext), ("normal", "tumor"), "tumor")


@pytest.mark.parametrize(("mode", "ext"), [("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("CMYK", ".jpg"), ("I;16", ".tif"), ("LA", ".png")])
def test_odd_image_modes_mixed_into_rgb(tmp_path: Path, mode: str, ext: str) -> None:
    root = make_folders(tmp_path / "ds", ["normal", "tumor"], ext=ext if mode != "CMYK" else ".jpg")
    odd = root / "tumor" / f"p0{ext}"
    save(odd, patch(1, 0), mode)
    ds = open_dataset(root)
    arr = ds.read(ds.paths.index(str(odd)))  # type: ignore[union-attr]
    assert arr.shape == (SIDE, SIDE, 3) and arr.dtype == np.uint8
    if mode in ("L", "I;16", "LA"):
        assert (arr[..., 0] == arr[..., 1]).all()  # grey shown as grey
    check_usable(root, ("normal", "tumor"), "tumor")


def test_transparent_patch_pixels_read_as_white(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "ds", ["normal", "tumor"])
    rgba = np.dstack([patch(1, 0), np.full((SIDE, SIDE), 255, np.uint8)])
    rgba[:, :8, 3] = 0
    Image.fromarray(rgba).save(root / "tumor" / "p0.png")
    ds = open_dataset(root)
    arr = ds.read(ds.paths.index(str(root / "tumor" / "p0.png")))  # type: ignore[union-attr]
    assert (arr[:, :8] == 255).all()


# ---------------------------------------------------------------------------- Kaggle tables


def make_kaggle(
    root: Path,
    header: str,
    row: Callable[[int], str],
    *,
    n: int = 8,
    ext: str = ".tif",
    csv_name: str = "labels.csv",
    encoding: str = "utf-8",
    bom: bool = False,
    newline: str = "\n",
) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        save(root / f"id{i:03d}{ext}", patch(i % 2, i))
    text = newline.join([header, *(row(i) for i in range(n))]) + newline
    (root / csv_name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return root


@pytest.mark.parametrize(
    ("case", "header", "row", "classes", "positive", "kw"),
    [
        ("extra columns, other order", "label,notes,id,slide", lambda i: f'{i % 2},"x, y",id{i:03d},s{i % 3}', ("0", "1"), "1", {}),
        ("whitespace", " id , label ", lambda i: f"  id{i:03d} ,  {i % 2} ", ("0", "1"), "1", {}),
        ("BOM", "id,label", lambda i: f"id{i:03d},{i % 2}", ("0", "1"), "1", {"bom": True}),
        ("CRLF, quoted", '"id","label"', lambda i: f'"id{i:03d}","{i % 2}"', ("0", "1"), "1", {"newline": "\r\n"}),
        ("semicolon", "id;label", lambda i: f"id{i:03d};{i % 2}", ("0", "1"), "1", {}),
        ("tab, .tsv", "id\tlabel", lambda i: f"id{i:03d}\t{i % 2}", ("0", "1"), "1", {"csv_name": "labels.tsv"}),
        ("upper-case .CSV", "id,label", lambda i: f"id{i:03d},{i % 2}", ("0", "1"), "1", {"csv_name": "LABELS.CSV"}),
        ("capitalised header", "ID,Label", lambda i: f"id{i:03d},{i % 2}", ("0", "1"), "1", {}),
        ("True/False", "id,label", lambda i: f"id{i:03d},{'True' if i % 2 else 'False'}", ("False", "True"), "True", {}),
        ("tumor/normal", "filename,class", lambda i: f"id{i:03d},{'tumor' if i % 2 else 'normal'}", ("normal", "tumor"), "tumor", {}),
        ("float labels", "id,label", lambda i: f"id{i:03d},{float(i % 2)}", ("0", "1"), "1", {}),
        ("1/2 coding", "id,label", lambda i: f"id{i:03d},{i % 2 + 1}", ("1", "2"), "2", {}),
        ("ids with extension", "id,label", lambda i: f"id{i:03d}.tif,{i % 2}", ("0", "1"), "1", {}),
        ("extension case differs", "id,label", lambda i: f"id{i:03d}.tif,{i % 2}", ("0", "1"), "1", {"ext": ".TIF"}),
        ("Excel UTF-16", "id\tlabel", lambda i: f"id{i:03d}\t{i % 2}", ("0", "1"), "1", {"encoding": "utf-16"}),
        ("Excel Windows-1252", "id,label", lambda i: f"id{i:03d},{'tumör' if i % 2 else 'normal'}", ("normal", "tumör"), "tumör", {"encoding": "cp1252"}),
    ],
)
def test_kaggle_label_tables(
    tmp_path: Path,
    case: str,
    header: str,
    row: Callable[[int], str],
    classes: tuple[str, ...],
    positive: str,
    kw: dict[str, object],
) -> None:
    root = make_kaggle(tmp_path / "ds", header, row, **kw)  # type: ignore[arg-type]
    check_usable(root, classes, positive)
    ds = open_dataset(root)
    assert ds.ids == [f"id{i:03d}" for i in range(8)]
    assert list(ds.labels) == [classes.index(c) for c in [classes[1] if i % 2 else classes[0] for i in range(8)]]


def test_label_spellings_differing_in_case_are_one_class(tmp_path: Path) -> None:
    spellings = ["Tumor", "tumor", "normal", "Normal "]
    root = make_kaggle(tmp_path / "ds", "id,label", lambda i: f"id{i:03d},{spellings[i % 4]}")
    ds = open_dataset(root)
    assert ds.class_names == ("normal", "tumor")
    assert ds.class_counts() == {"normal": 4, "tumor": 4}
    report = validate_dataset(ds)
    assert report.ok
    assert any("letter case" in w for w in report.warnings)


def test_competition_layout_with_extra_columns_and_bom(tmp_path: Path) -> None:
    root = tmp_path / "histopathologic-cancer-detection"
    (root / "train").mkdir(parents=True)
    for i in range(8):
        save(root / "train" / f"{i:040x}.tif", patch(i % 2, i))
    rows = [f"{i % 2},{i:040x},fold{i % 4}" for i in range(8)]
    (root / "train_labels.csv").write_bytes(b"\xef\xbb\xbf" + ("label,id,fold\r\n" + "\r\n".join(rows) + "\r\n").encode())
    check_usable(root, ("0", "1"), "1")


def test_binary_file_named_csv_is_one_clear_line(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "ds", ["a"], n=2)
    for i in range(2):
        save(root / f"x{i}.png", patch(0, i))
    (root / "labels.csv").write_bytes(b"PK\x03\x04\x00\x00" + bytes(200))  # an .xlsx renamed
    with pytest.raises(DatasetError) as exc:
        open_dataset(root)
    msg = str(exc.value)
    assert msg and "\n" not in msg


def test_tiff_patches_pillow_cannot_decode(tmp_path: Path) -> None:
    """Kaggle-style .tif patches written tiled, as JPEG 2000, planar or 16-bit by other tools."""
    import tifffile

    root = tmp_path / "ds"
    root.mkdir()
    variants = [
        {"tile": (16, 16), "compression": "jpeg2000", "compressionargs": {"level": 0}},
        {"tile": (16, 16), "compression": "zlib"},
        {"planarconfig": "separate"},
        {"tile": (16, 16), "dtype": np.uint16},
    ]
    for i in range(8):
        kw = dict(variants[i % len(variants)])
        data = patch(i % 2, i)
        if kw.pop("dtype", None) is not None:
            data = data.astype(np.uint16) * 257
        if kw.get("planarconfig") == "separate":
            data = np.moveaxis(data, 2, 0).copy()
        tifffile.imwrite(root / f"id{i:03d}.tif", data, photometric="rgb", **kw)
    (root / "labels.csv").write_text("id,label\n" + "".join(f"id{i:03d},{i % 2}\n" for i in range(8)))
    check_usable(root, ("0", "1"), "1")
    ds = open_dataset(root)
    for i in range(8):
        assert np.array_equal(ds.read(i), patch(i % 2, i))
