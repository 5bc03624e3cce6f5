"""ONNX export: verified against torch, self-describing, and usable by the heatmap pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.errors import ConfigError
from engine.export import export_onnx
from engine.modelpkg import absolute_paths, read_metadata
from engine.train import TrainConfig, train
from tests.fixtures.datasets import make_folder_dataset, toy_patch


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    data = make_folder_dataset(root / "data", per_class=32, size=32)
    cfg = TrainConfig(data=str(data), mpp=0.5, epochs=2, batch_size=16, lr=3e-3, seed=2)
    train(cfg, root / "run")
    return root / "run"


def test_export_is_verified_one_file_with_metadata(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "toy.onnx"
    rep = export_onnx(run_dir, out)
    assert rep.max_abs_diff < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["toy.onnx"]  # one file, no external data, no leftovers
    model = onnx.load(str(out))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    meta = read_metadata(out)
    assert meta.task == "patch_classification"
    assert meta.class_names == ("normal", "tumor") and meta.positive_class_name == "tumor"
    assert meta.input_size == 32 and meta.input_mpp == 0.5
    assert meta.channel_order == "RGB" and meta.input_layout == "NCHW" and meta.output == "logits"
    assert meta.arch == "seed_cnn" and meta.metascope_version
    # the validation split picked the best epoch: labelled as model selection, not as a test
    assert meta.metrics["selection"]["auc"] > 0.9 and "model selection" in meta.metrics["split"]
    assert "auc" not in meta.metrics and meta.training_data["n_patches"] == 64
    # nothing of this machine's file system in the shipped file
    props = {p.key: p.value for p in model.metadata_props}
    assert absolute_paths(json.loads(props["metascope"])) == []
    assert meta.training_data["source"] == "data" and meta.extra["train_config"]["data"] == "data"
    assert meta.extra["source"] == "best.pt"
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406))


def test_exported_model_draws_a_heatmap_high_in_the_tumour(run_dir: Path, tmp_path: Path) -> None:
    from engine.infer.pipeline import InferenceConfig, compute_heatmap
    from engine.slides import ArrayReader

    out = tmp_path / "toy.onnx"
    export_onnx(run_dir, out, exporter="torchscript")
    rng = np.random.default_rng(5)
    # white glass around 10x20 tiles of tissue (160 x 320 um): left half normal, right half
    # tumour (x >= 352 px)
    image = np.full((12 * 32, 22 * 32, 3), 245, np.uint8)
    for r in range(1, 11):
        for c in range(1, 21):
            image[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = toy_patch(0.0 if c < 11 else 1.0, rng, 32)
    res = compute_heatmap(ArrayReader(image, mpp=0.5), out, InferenceConfig(device="cpu"))
    centre_x = res.level0_xy[:, 0] + res.tile_size_level0 / 2
    p = res.probabilities[:, res.positive_class]
    tumour, normal = p[(centre_x > 384) & (centre_x < 640)], p[(centre_x > 64) & (centre_x < 320)]
    assert tumour.size and normal.size
    # a 2-epoch toy model is not very confident, but every tumour tile outranks every normal one
    assert tumour.mean() > 0.6 and normal.mean() < 0.4 and tumour.min() > normal.max()


def test_feature_extractor_export_outputs_the_embedding(run_dir: Path, tmp_path: Path) -> None:
    from engine.infer.session import load_model

    out = tmp_path / "features.onnx"
    rep = export_onnx(run_dir, out, features=True, exporter="torchscript")
    assert rep.max_abs_diff < 1e-4
    meta = read_metadata(out)
    assert meta.task == "feature_extractor" and meta.feature_dim == 64
    session = load_model(out, device="cpu")
    feats = session.run(np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32))
    assert feats.shape == (5, 64)


def test_export_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        export_onnx(tmp_path / "nothing", tmp_path / "m.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no trained model"):
        export_onnx(tmp_path / "empty", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
