"""Validation report and train/validation splits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from engine.data import DatasetError, duplicate_groups, merge_groups, open_dataset, split_dataset, validate_dataset
from engine.errors import Cancelled
from engine.jobs import CancelToken, ProgressEvent


def test_clean_dataset_report(kaggle_dataset: Path) -> None:
    ds = open_dataset(kaggle_dataset)
    events: list[ProgressEvent] = []
    rep = validate_dataset(ds, progress=events.append)
    assert rep.ok and rep.errors == () and rep.counts == {"0": 12, "1": 12}
    assert rep.sizes == {"96x96": 24} and rep.duplicate_groups == ()
    assert events[-1].step == events[-1].total == 24
    d = rep.to_dict()
    json.dumps(d)
    assert d["ok"] and d["patches"] == 24 and d["mpp"] == pytest.approx(0.972)
    rep.raise_if_errors()


def test_pcam_duplicates_found_and_kept_together(pcam_h5_dataset: Path) -> None:
    ds = open_dataset(pcam_h5_dataset)
    rep = validate_dataset(ds)
    assert rep.ok and rep.duplicate_groups == ((4, 5), (16, 17)) and rep.duplicate_files == 4
    assert rep.duplicates_by_class == {"0": {"groups": 1, "files": 2}, "1": {"groups": 1, "files": 2}}
    assert any("byte-identical" in w for w in rep.warnings)
    g = duplicate_groups(ds)
    assert g[4] == g[5] and g[16] == g[17] and len(np.unique(g)) == 22
    for seed in range(5):
        tr, va = split_dataset(ds, 0.25, "grouped", seed=seed)
        assert (4 in tr) == (5 in tr) and (16 in va) == (17 in va)


@pytest.mark.parametrize(
    ("key", "field", "count", "match"),
    [
        ("missing_file", "missing", 2, "2 files named in the dataset do not exist"),
        ("unreadable", "unreadable", 2, "2 images cannot be read"),
        ("mixed_sizes", "size_mismatches", 2, "2 images are not 96x96 px"),
        ("unknown_labels", "unknown_labels", 2, "2 patches have a label that is not one of the classes"),
        ("one_class", "errors", 1, "only 1 class with patches"),
    ],
)
def test_broken_datasets_reported(broken_datasets: dict[str, Path], key: str, field: str, count: int, match: str) -> None:
    rep = validate_dataset(open_dataset(broken_datasets[key]))
    assert not rep.ok
    assert len(getattr(rep, field)) == count
    assert any(match in e for e in rep.errors), rep.errors
    with pytest.raises(DatasetError) as info:
        rep.raise_if_errors()
    assert "\n" not in str(info.value) and match in str(info.value)


def test_missing_files_found_without_reading_images(broken_datasets: dict[str, Path]) -> None:
    rep = validate_dataset(open_dataset(broken_datasets["missing_file"]), check_images=False)
    assert not rep.checked_images and len(rep.missing) == 2 and not rep.ok


def test_mixed_sizes_are_a_warning_when_resizing(broken_datasets: dict[str, Path]) -> None:
    rep = validate_dataset(open_dataset(broken_datasets["mixed_sizes"], resize=96))
    assert rep.ok and len(rep.size_mismatches) == 2 and any("resized" in w for w in rep.warnings)


def test_validation_cancel(folder_dataset: Path) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        validate_dataset(open_dataset(folder_dataset), cancel=token)


def test_stratified_split(folder_dataset_3class: Path) -> None:
    ds = open_dataset(folder_dataset_3class)
    tr, va = split_dataset(ds, 0.25, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(ds)
    assert np.bincount(ds.labels[va]).tolist() == [3, 3, 3]
    again = split_dataset(ds, 0.25, seed=3)
    assert np.array_equal(again[1], va)
    assert not np.array_equal(split_dataset(ds, 0.25, seed=4)[1], va)


def test_grouped_split_keeps_groups_and_balances(kaggle_dataset: Path) -> None:
    ds = open_dataset(kaggle_dataset)
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 8, len(ds))
    tr, va = split_dataset(ds, 0.3, "grouped", groups=groups)
    assert not set(groups[tr]) & set(groups[va])
    assert 0 < len(va) < len(ds)


def test_grouped_split_of_slides_is_by_slide(annotated_slide_dataset: Path) -> None:
    ds = open_dataset(annotated_slide_dataset, mpp=1.0, size=32)
    tr, va = split_dataset(ds, 0.5, "grouped")
    assert set(ds.slide_index[tr]).isdisjoint(set(ds.slide_index[va]))
    rep = validate_dataset(ds)
    assert rep.ok and rep.sizes == {"32x32": len(ds)}


def test_split_errors(folder_dataset: Path) -> None:
    ds = open_dataset(folder_dataset)
    with pytest.raises(DatasetError, match="between 0 and 1"):
        split_dataset(ds, 1.5)
    with pytest.raises(DatasetError, match="unknown split strategy"):
        split_dataset(ds, 0.2, "random")
    with pytest.raises(DatasetError, match="one group"):
        split_dataset(ds, 0.2, "grouped", groups=np.zeros(len(ds), int))


def test_merge_groups_joins_chains() -> None:
    slides = np.array([0, 0, 1, 1, 2, 2])
    dups = np.array([0, 1, 2, 1, 4, 5])  # patch 1 (slide 0) and 3 (slide 1) are copies
    m = merge_groups(slides, dups)
    assert m[0] == m[1] == m[2] == m[3] and m[4] == m[5] and m[4] != m[0]


@pytest.mark.realdata
def test_real_pcam_patches(shared_data: Path) -> None:
    """The real PCam JPEG patches as class folders: 10,000 per class, the byte-identical repeats
    of the positive class found, and a grouped split that leaks no copy."""
    t0 = time.perf_counter()
    ds = open_dataset(shared_data / "pcam" / "train")
    assert ds.class_names == ("0", "1") and ds.positive_class == 1
    rep = validate_dataset(ds)
    elapsed = time.perf_counter() - t0
    assert rep.ok and rep.counts == {"0": 10_000, "1": 10_000} and rep.sizes == {"96x96": 20_000}
    # ../shared/data/README.md counts 687 groups / 1,609 files over train + valid together:
    # 607 / 1,436 of them lie in train (and 80 / 173 in valid), all in the positive class
    assert rep.duplicates_by_class == {"1": {"groups": 607, "files": 1436}}
    assert elapsed < 60, f"validating 20,000 JPEGs took {elapsed:.1f} s"
    tr, va = split_dataset(ds, 0.2, "grouped", seed=0)
    g = rep.group_ids()
    assert not set(g[tr]) & set(g[va])
    assert abs(len(va) - 4000) < 50 and abs(ds.labels[va].mean() - 0.5) < 0.01
