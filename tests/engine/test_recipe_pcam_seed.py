"""The published seed CNN (``seed_cnn_original``), the ``pcam-seed`` recipe and 0/1 submission labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.errors import ConfigError
from tests.fixtures.datasets import make_kaggle_dataset


def test_seed_cnn_original_shapes_and_bce() -> None:
    import torch
    from torch import nn

    from engine.models import build_model

    model = build_model("seed_cnn_original", 2, 96)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert all(c.padding == (0, 0) and c.kernel_size == (3, 3) for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [256, 128, 64, 1]  # one sigmoid output
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 6  # 3 conv blocks + 3 dense layers
    # 96 -> 94/47 -> 45/22 -> 20/10: the first dense layer sees 128 x 10 x 10
    assert convs and model.dense[1].in_features == 128 * 10 * 10
    model.eval()
    x = torch.randn(5, 3, 96, 96)
    with torch.no_grad():
        out, z = model(x), model.logit(x)
    assert out.shape == (5, 2) and z.shape == (5, 1)
    p = torch.sigmoid(z)[:, 0]
    assert torch.allclose(torch.softmax(out, 1)[:, 1], p, atol=1e-6)
    y = torch.tensor([0, 1, 1, 0, 1])
    ce = nn.functional.cross_entropy(out, y)
    bce = nn.functional.binary_cross_entropy_with_logits(z[:, 0], y.float())
    assert torch.allclose(ce, bce, atol=1e-6)  # cross-entropy on the two columns is the paper's BCE
    with torch.no_grad():  # a confident model: no overflow in either class (exported graphs too)
        model.classifier.bias.fill_(80.0)
        out = model(x)
    assert torch.isfinite(out).all() and torch.allclose(torch.softmax(out, 1)[:, 1], torch.ones(5))
    with pytest.raises(ConfigError, match="2 classes"):
        build_model("seed_cnn_original", 3, 96)


def test_recipes() -> None:
    from engine.train.config import AugmentConfig, TrainConfig
    from engine.train.recipes import recipe_config

    seed = recipe_config("pcam-seed", "DATA")
    assert (seed.arch, seed.optimizer, seed.lr, seed.batch_size, seed.epochs) == ("seed_cnn_original", "adam", 1e-3, 1024, 20)
    assert seed.mean == (0.0, 0.0, 0.0) and seed.std == (1.0, 1.0, 1.0)  # pixels / 255 only
    assert seed.augment == AugmentConfig.none() and seed.patience == 0 and seed.val_fraction == 0.2
    assert seed.schedule == "constant" and seed.warmup_epochs == 0 and seed.weight_decay == 0
    assert seed.class_weighting == "none" and seed.recipe == "pcam-seed"
    assert recipe_config("metascope", "DATA") == TrainConfig(data="DATA")
    assert recipe_config("pcam-seed", "DATA", epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe_config("keras", "DATA")
    # older run folders (no optimizer / recipe keys) still load
    d = TrainConfig(data="x").to_dict()
    del d["optimizer"], d["recipe"]
    assert TrainConfig.from_dict(d).optimizer == "adamw"


@pytest.mark.slow
def test_pcam_seed_train_export_heatmap_submission(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_kaggle_dataset(tmp_path / "kaggle", per_class=24, size=32, n_test=6)
    run = tmp_path / "run"
    assert main(["train", "patches", "--data", str(data), "--out", str(run), "--recipe", "pcam-seed",
                 "--epochs", "2", "--batch-size", "16", "--mpp", "0.5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "finished" and summary["epochs"] == 2
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["recipe"] == "pcam-seed" and cfg["arch"] == "seed_cnn_original" and cfg["batch_size"] == 16
    assert cfg["augment"]["flips"] is False and cfg["mean"] == [0.0, 0.0, 0.0] and cfg["optimizer"] == "adam"

    model = tmp_path / "seed.onnx"
    assert main(["export", str(run), "--out", str(model)]) == 0
    capsys.readouterr()
    from engine.infer.preprocess import to_probabilities
    from engine.infer.session import load_model

    sess = load_model(model, device="cpu")
    assert sess.metadata.class_names == ("0", "1") and sess.metadata.mean == (0.0, 0.0, 0.0)
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    probs = to_probabilities(sess.run(x), sess.metadata)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)

    # the package runs in a heatmap like any two-class model
    from engine.slides.synthetic import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "s.tif", 640, 512, mpp=0.5, flavour="generic", levels=1, tile=128,
                                  with_label=False, seed=2).path
    assert main(["heatmap", str(slide), "--model", str(model), "--out", str(tmp_path / "hm"), "--device", "cpu",
                 "--slide-mpp", "0.5"]) == 0
    assert any((tmp_path / "hm").rglob("*.json"))
    capsys.readouterr()

    probs_csv, labels_csv = tmp_path / "p.csv", tmp_path / "l.csv"
    assert main(["predict", str(model), "--data", str(data / "test"), "--format", "images", "--submission",
                 "--out", str(probs_csv), "--device", "cpu"]) == 0
    assert main(["predict", str(model), "--data", str(data / "test"), "--format", "images", "--submission",
                 "--labels", "--out", str(labels_csv), "--device", "cpu"]) == 0
    p_rows = list(csv.DictReader(probs_csv.open()))
    l_rows = list(csv.DictReader(labels_csv.open()))
    assert len(l_rows) == 6 and [r["id"] for r in l_rows] == [r["id"] for r in p_rows]
    assert {r["label"] for r in l_rows} <= {"0", "1"}
    # 0/1 at the package's operating threshold (fitted on the validation split), as every CLI default
    from engine.infer.lesions import operating_threshold
    from engine.modelpkg import read_metadata

    thr = operating_threshold(read_metadata(model))
    assert [int(float(p["label"]) >= thr) for p in p_rows] == [int(r["label"]) for r in l_rows]
    assert main(["predict", str(model), "--data", str(data / "test"), "--format", "images", "--probabilities",
                 "--labels", "--out", str(labels_csv)]) == 2
