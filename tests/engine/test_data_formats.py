"""Dataset formats: every reader gives the right patches, labels, classes, ids and resolution."""

from __future__ import annotations

import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from engine.data import PCAM_MPP, DatasetError, detect_format, infer_positive_class, open_dataset
from tests.fixtures.datasets import make_folder_dataset, make_kaggle_dataset


def _purple(img: np.ndarray) -> float:
    """Darkness of a patch: the toy signal (class 1 darker/purple)."""
    return 255.0 - float(img.mean())


def _assert_signal(ds) -> None:
    pos = [_purple(ds.read(i)) for i in np.flatnonzero(ds.labels == ds.positive_class)]
    neg = [_purple(ds.read(i)) for i in np.flatnonzero((ds.labels != ds.positive_class) & (ds.labels >= 0))]
    assert min(pos) > max(neg)


def test_kaggle_competition_root(kaggle_dataset: Path) -> None:
    ds = open_dataset(kaggle_dataset)
    assert ds.fmt == "kaggle"
    assert len(ds) == 24 and ds.class_names == ("0", "1") and ds.positive_class == 1
    assert ds.describe()["counts"] == {"0": 12, "1": 12}
    assert ds.mpp == pytest.approx(PCAM_MPP) and ds.mpp_source == "format"
    assert ds.patch_size == (96, 96)
    # ids are the CSV ids (no extension), in CSV order, so a submission CSV can be written
    first = (kaggle_dataset / "train_labels.csv").read_text().splitlines()[1].split(",")[0]
    assert ds.ids[0] == first and ds.paths[0].endswith(f"train/{first}.tif")
    img = ds.read(0)
    assert img.dtype == np.uint8 and img.shape == (96, 96, 3)
    _assert_signal(ds)


def test_kaggle_csv_path_flat_layout_and_options(kaggle_flat_dataset: Path, kaggle_dataset: Path) -> None:
    ds = open_dataset(kaggle_flat_dataset / "labels.csv", mpp=0.5)
    assert ds.fmt == "kaggle" and len(ds) == 24 and ds.mpp == 0.5 and ds.mpp_source == "user"
    ds = open_dataset(kaggle_flat_dataset, class_names=("normal", "tumour"))
    assert ds.class_names == ("normal", "tumour") and ds.positive_class == 1
    # the competition's unlabelled test set: a CSV of ids resolved into test/, or the folder
    sub = open_dataset(kaggle_dataset / "sample_submission.csv", labelled=False)
    assert len(sub) == 6 and (sub.labels == -1).all() and Path(sub.paths[0]).parent.name == "test"
    folder = open_dataset(kaggle_dataset / "test", labelled=False)
    assert folder.fmt == "images" and sorted(folder.ids) == sorted(sub.ids)


def test_class_folders(folder_dataset: Path, folder_dataset_3class: Path) -> None:
    ds = open_dataset(folder_dataset)
    assert ds.fmt == "folders" and ds.class_names == ("normal", "tumor") and ds.positive_class == 1
    assert ds.mpp is None and ds.mpp_source == "unknown"
    assert {Path(p).suffix for p in ds.paths} == {".png", ".jpg"}
    _assert_signal(ds)
    three = open_dataset(folder_dataset_3class, mpp=0.5)
    assert three.class_names == ("lymphocytes", "stroma", "tumour") and three.positive_class == 2
    assert np.bincount(three.labels).tolist() == [12, 12, 12]


def test_folders_nested_subfolders_become_groups(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for cls in ("0", "1"):
        for patient in ("p1", "p2"):
            make_folder_dataset(root / cls / patient, ("x",), per_class=2)
    ds = open_dataset(root)
    assert ds.class_names == ("0", "1") and ds.groups is not None
    assert len(np.unique(ds.groups)) == 2  # patient p1 across both classes is one group


def test_pcam_h5_lazy_pair(pcam_h5_dataset: Path) -> None:
    ds = open_dataset(pcam_h5_dataset)
    assert ds.fmt == "pcam_h5" and len(ds) == 24 and ds.class_names == ("0", "1")
    assert ds.mpp == pytest.approx(PCAM_MPP) and ds.paths is None
    assert ds.groups is not None and len(np.unique(ds.groups)) == 6  # slides from *_meta.csv
    assert np.array_equal(ds.read(5), ds.read(4))  # PCam's byte-identical repeats
    batch = ds.read_many([7, 3, 3, 20])
    assert batch.shape == (4, 96, 96, 3) and np.array_equal(batch[0], ds.read(7)) and np.array_equal(batch[3], ds.read(20))
    _assert_signal(ds)
    # the y file, or a folder with a split chosen, give the same pair
    assert len(open_dataset(pcam_h5_dataset.with_name("camelyonpatch_level_2_split_valid_y.h5"))) == 8
    assert len(open_dataset(pcam_h5_dataset.parent, split="train")) == 24
    with pytest.raises(DatasetError, match="several PCam pairs"):
        open_dataset(pcam_h5_dataset.parent)


def test_pcam_h5_threads_and_pickle(pcam_h5_dataset: Path) -> None:
    ds = open_dataset(pcam_h5_dataset)
    expected = [ds.read(i).sum() for i in range(len(ds))]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: ds.read(i).sum(), range(len(ds))))
    assert got == expected
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn-ed data-loader worker receives
    assert np.array_equal(clone.read(3), ds.read(3))


def test_unlabelled_images(unlabelled_image_folder: Path, tmp_path: Path) -> None:
    ds = open_dataset(unlabelled_image_folder, labelled=False)
    assert ds.fmt == "images" and len(ds) == 10 and (ds.labels == -1).all() and ds.class_names == ()
    assert ds.ids[0] == "patch_00"
    csv = tmp_path / "list.csv"
    csv.write_text("path\n" + "\n".join(str(p) for p in sorted(unlabelled_image_folder.glob("*.png"))[:4]) + "\n")
    listed = open_dataset(csv, labelled=False)
    assert len(listed) == 4 and listed.read(0).shape == (96, 96, 3)


def test_mixed_sizes_error_unless_resizing(broken_datasets: dict[str, Path]) -> None:
    ds = open_dataset(broken_datasets["mixed_sizes"])
    small = [i for i, p in enumerate(ds.paths) if "900" in p]
    with pytest.raises(DatasetError, match="mixed sizes"):
        ds.read(small[0])
    resized = open_dataset(broken_datasets["mixed_sizes"], resize=48, mpp=0.5)
    assert resized.patch_size == (48, 48) and resized.read(small[0]).shape == (48, 48, 3)
    assert resized.mpp == pytest.approx(1.0)  # 96 px at 0.5 um/px shown as 48 px


def test_annotated_slides(annotated_slide_dataset: Path) -> None:
    ds = open_dataset(annotated_slide_dataset, mpp=1.0, size=32)
    assert ds.fmt == "annotated_slides" and ds.class_names == ("Normal", "Tumor") and ds.positive_class == 1
    assert ds.patch_size == (32, 32) and ds.mpp == 1.0 and ds.paths is None
    # two slides (one FeatureCollection, one plain list with a MultiPolygon), grouped by slide
    assert len(np.unique(ds.groups)) == 2 and set(ds.describe()["slides"]) == {"slide_a.tif", "slide_b.tif"}
    tumour = np.flatnonzero(ds.labels == 1)
    normal = np.flatnonzero(ds.labels == 0)
    assert len(tumour) >= 20 and len(normal) >= 10
    # patches whose centre lies inside the tumour annotation are the dark purple ones
    assert np.mean([_purple(ds.read(i)) for i in tumour]) > np.mean([_purple(ds.read(i)) for i in normal]) + 25
    with_bg = open_dataset(annotated_slide_dataset, mpp=1.0, size=32, background="Background", max_per_slide=5)
    assert with_bg.class_names == ("Normal", "Tumor", "Background") and with_bg.positive_class == 1
    assert np.bincount(with_bg.labels).tolist() == [10, 10, 10]


def test_positive_class_inference() -> None:
    assert infer_positive_class(("0", "1")) == 1
    assert infer_positive_class(("normal", "tumor")) == 1
    assert infer_positive_class(("Tumour", "benign")) == 0
    assert infer_positive_class(("metastasis", "normal")) == 0
    assert infer_positive_class(("a", "b", "c")) == 2
    assert infer_positive_class(("neg", "pos"), "neg") == 0
    with pytest.raises(DatasetError):
        infer_positive_class(("a", "b"), "c")


def test_detect_format(kaggle_dataset: Path, folder_dataset: Path, pcam_h5_dataset: Path, annotated_slide_dataset: Path) -> None:
    assert detect_format(kaggle_dataset) == "kaggle"
    assert detect_format(folder_dataset) == "folders"
    assert detect_format(pcam_h5_dataset) == "pcam_h5"
    assert detect_format(annotated_slide_dataset) == "annotated_slides"
    assert detect_format(folder_dataset, labelled=False) == "images"


@pytest.mark.parametrize(
    ("key", "match"),
    [
        ("empty", "no images found"),
        ("bad_csv", "no 'id' and 'label' columns"),
        ("csv_mismatch", "none of the 4 ids"),
        ("no_annotations", "no classified polygon annotations"),
    ],
)
def test_errors_are_one_clear_line(broken_datasets: dict[str, Path], key: str, match: str) -> None:
    with pytest.raises(DatasetError, match=match) as info:
        open_dataset(broken_datasets[key])
    assert "\n" not in str(info.value)


def test_one_class_and_bad_arguments(broken_datasets: dict[str, Path], folder_dataset: Path, tmp_path: Path) -> None:
    ds = open_dataset(broken_datasets["one_class"])
    with pytest.raises(DatasetError, match="only 1 class"):
        ds.require_classes(2)
    with pytest.raises(DatasetError, match="only 1 class"):
        open_dataset(broken_datasets["one_class"], require_classes=2)
    with pytest.raises(DatasetError, match="dataset not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        open_dataset(folder_dataset, fmt="zip")
    with pytest.raises(DatasetError, match="does not apply"):
        open_dataset(folder_dataset, csv="x.csv")
    with pytest.raises(DatasetError, match="microns per pixel"):
        open_dataset(folder_dataset, mpp=-1)
    img = next(folder_dataset.rglob("*.png"))
    with pytest.raises(DatasetError, match="single image"):
        open_dataset(img)


def test_kaggle_missing_and_extra_files(tmp_path: Path) -> None:
    root = make_kaggle_dataset(tmp_path / "k", per_class=3, ext=".png", competition_layout=False)
    shutil.copy(next(root.glob("*.png")), root / "extra.png")
    ds = open_dataset(root)
    assert any("not listed" in w for w in ds.open_warnings)
    next(root.glob("*.png")).unlink()
    ds = open_dataset(root)
    missing = [i for i, p in enumerate(ds.paths) if not Path(p).exists()]
    with pytest.raises(DatasetError, match="not found"):
        ds.read(missing[0])
