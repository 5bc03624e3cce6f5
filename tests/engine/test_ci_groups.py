"""Bootstrap confidence intervals resample whole patients / slides when groups are known."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from engine.data import open_dataset
from engine.data.base import resampling_groups
from engine.mil.metrics import classification_metrics as mil_metrics
from engine.train.metrics import bootstrap_auc_ci, bootstrap_ci95
from tests.fixtures.datasets import make_kaggle_dataset


def _clustered(n_groups: int = 12, per_group: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches of a patient share label and score: the evidence is ``n_groups`` cases, not N."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_groups) % 2
    group_score = np.clip(labels * 0.3 + rng.uniform(0.2, 0.6, n_groups), 0, 1)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = labels[groups]
    score = np.clip(group_score[groups] + rng.normal(0, 0.01, groups.size), 0, 1)
    return y, score, groups


def test_grouped_ci_is_wider_than_case_ci_for_clustered_patches() -> None:
    y, score, groups = _clustered()
    case = bootstrap_auc_ci(y, score, n_boot=300)
    cluster = bootstrap_auc_ci(y, score, n_boot=300, groups=groups)
    assert cluster[1] - cluster[0] > 2 * (case[1] - case[0])
    probs = np.stack([1 - score, score], 1)
    ci_case = bootstrap_ci95(y, probs, n_boot=300)
    ci_group = bootstrap_ci95(y, probs, n_boot=300, groups=np.char.add("P", np.char.zfill(groups.astype(str), 2)))  # any labels
    assert ci_case["auc"] == list(case)
    assert ci_group["auc"] == list(cluster)
    for k in ("accuracy", "sensitivity", "specificity"):
        assert ci_group[k][1] - ci_group[k][0] >= ci_case[k][1] - ci_case[k][0]


def test_group_of_one_case_each_matches_case_bootstrap_in_distribution() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    probs = np.clip(np.stack([1 - y, y], 1) * 0.3 + rng.uniform(0, 0.7, (400, 2)), 0, 1)
    probs /= probs.sum(1, keepdims=True)
    a = bootstrap_ci95(y, probs, n_boot=400)
    b = bootstrap_ci95(y, probs, n_boot=400, groups=np.arange(400))
    for k in a:
        assert np.allclose(a[k], b[k], atol=0.03)
    with pytest.raises(ValueError, match="one entry per case"):
        bootstrap_auc_ci(y, probs[:, 1], groups=np.arange(3))


def test_datasets_report_their_group_unit(tmp_path: Path) -> None:
    root = make_kaggle_dataset(tmp_path / "k", per_class=4, size=8, competition_layout=False)
    csv_path = root / "labels.csv"
    rows = list(csv.reader(csv_path.open()))
    rows = [rows[0] + ["patient_id"]] + [r + [f"P{i // 3}"] for i, r in enumerate(rows[1:])]
    csv_path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    ds = open_dataset(root, labelled=True)
    groups, unit = resampling_groups(ds, [0, 1, 2, 3])
    assert unit == "patient" and groups is not None and groups.tolist() == [0, 0, 0, 1]
    plain = make_kaggle_dataset(tmp_path / "plain", per_class=2, size=8, competition_layout=False)
    assert resampling_groups(open_dataset(plain, labelled=True)) == (None, "case")


def test_mil_metrics_resample_patients_with_several_slides() -> None:
    y, score, groups = _clustered(n_groups=10, per_group=3, seed=2)
    probs = np.stack([1 - score, score], 1)
    by_slide = mil_metrics(y, probs, ["N0", "N+"], n_boot=200, patients=[f"p{i}" for i in range(y.size)])
    by_patient = mil_metrics(y, probs, ["N0", "N+"], n_boot=200, patients=[f"p{g}" for g in groups])
    assert by_slide["ci_resampling"] == "slide" and by_patient["ci_resampling"] == "patient"
    assert by_slide["auc_ci95"] == mil_metrics(y, probs, ["N0", "N+"], n_boot=200)["auc_ci95"]
    width = lambda m: m["auc_ci95"][1] - m["auc_ci95"][0]  # noqa: E731
    assert width(by_patient) > width(by_slide)
