"""Evaluation metrics, plots and predictions with an exported model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DatasetError, ModelPackageError
from engine.export import export_onnx
from engine.train import TrainConfig, train
from engine.train.evaluate import dihedral, evaluate, predict
from engine.train.metrics import bootstrap_auc_ci, classification_metrics, roc_auc
from tests.fixtures.datasets import make_folder_dataset, make_kaggle_dataset


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    data = make_folder_dataset(root / "data", per_class=32, size=32)
    train(TrainConfig(data=str(data), mpp=0.5, epochs=2, batch_size=16, lr=3e-3, seed=3), root / "run")
    export_onnx(root / "run", root / "toy.onnx", exporter="torchscript")
    return root / "toy.onnx"


def test_metrics_match_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    m = classification_metrics(y, probs)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.5 and m["accuracy"] == 0.5
    rng = np.random.default_rng(0)
    yy = rng.integers(0, 2, 400)
    lo, hi = bootstrap_auc_ci(yy, yy + rng.normal(0, 0.8, 400))
    assert lo < roc_auc(yy, yy + rng.normal(0, 0.8, 400)) + 0.1 and lo < hi


def test_dihedral_covers_eight_distinct_views() -> None:
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    views = {dihedral(x, k).tobytes() for k in range(8)}
    assert len(views) == 8


def test_evaluate_writes_metrics_plots_and_predictions(model: Path, tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "test", per_class=20, size=32, seed=11)  # unseen patches
    res = evaluate(model, data, tmp_path / "out", device="cpu", tta=True)
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m == json.loads(json.dumps(res.metrics))
    assert m["auc"] > 0.95 and m["accuracy"] > 0.9 and m["n"] == 40 and m["tta"] is True
    lo, hi = m["ci95"]["auc"]
    assert lo <= m["auc"] <= hi
    assert set(m["ci95"]) == {"auc", "accuracy", "sensitivity", "specificity"}
    assert m["ci_resampling"] == "case"  # class folders without sub-folders: no groups
    assert np.array(m["confusion_matrix"]).sum() == 40 and m["positive_class"] == "tumor"
    for png in ("roc.png", "calibration.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").read_text().splitlines()))
    assert len(rows) == 40 and set(rows[0]) == {"id", "label", "p_normal", "p_tumor", "predicted", "source", "index"}
    assert all(Path(r["source"]).is_file() for r in rows) and [int(r["index"]) for r in rows] == list(range(40))
    tumour = [float(r["p_tumor"]) for r in rows if r["label"] == "tumor"]
    assert np.mean(tumour) > 0.8


def test_predict_writes_probabilities_and_kaggle_submission(model: Path, tmp_path: Path) -> None:
    folder = make_folder_dataset(tmp_path / "plain", per_class=5, size=32, seed=12)
    res = predict(model, folder / "tumor", tmp_path / "p.csv", fmt="images", device="cpu")
    rows = list(csv.DictReader(res.path.read_text().splitlines()))
    assert res.kind == "probabilities" and len(rows) == 5
    assert all(float(r["p_tumor"]) > 0.5 and r["predicted"] == "tumor" for r in rows)

    kaggle = make_kaggle_dataset(tmp_path / "kaggle", per_class=4, size=32, n_test=0, competition_layout=False)
    sub = predict(model, kaggle, tmp_path / "submission.csv", device="cpu")
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert sub.kind == "submission" and lines[0] == "id,label" and len(lines) == 9
    assert all(0.0 <= float(line.split(",")[1]) <= 1.0 for line in lines[1:])


def test_evaluate_bad_input(model: Path, tmp_path: Path) -> None:
    unlabelled = make_folder_dataset(tmp_path / "u", per_class=3, size=32)
    with pytest.raises(DatasetError):
        evaluate(model, unlabelled / "normal", tmp_path / "o", fmt="images", device="cpu")
    other = make_folder_dataset(tmp_path / "o3", classes=("a", "b", "c"), per_class=3, size=32)
    with pytest.raises(DatasetError, match="do not match the model"):
        evaluate(model, other, tmp_path / "o", device="cpu")
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    with pytest.raises(ModelPackageError):
        evaluate(tmp_path / "bad.onnx", other, tmp_path / "o", device="cpu")
