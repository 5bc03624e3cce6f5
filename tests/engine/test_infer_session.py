"""Loading model packages: verification, input spec checks, provider choice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError, ModelPackageError
from engine.infer.preprocess import Preprocessor, resize_batch, softmax, to_probabilities
from engine.infer.session import available_cores, load_model
from engine.modelpkg import read_metadata, sha256_file, write_metadata


def test_demo_model_loads_on_cpu_with_its_digest(demo_onnx: Path) -> None:
    s = load_model(demo_onnx, device="cpu")
    assert s.provider == "CPUExecutionProvider"
    assert s.device == "cpu"
    assert s.sha256 == sha256_file(demo_onnx)
    assert s.input is not None and s.input.size == 96 and s.input.layout == "NCHW" and s.input.batch is None
    assert s.intra_op_threads == available_cores()
    assert s.describe()["sha256"] == s.sha256


def test_auto_device_falls_back_to_cpu_without_a_gpu(demo_onnx: Path) -> None:
    import onnxruntime as ort

    s = load_model(demo_onnx, device="auto")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert s.provider == "CPUExecutionProvider"
    assert s.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")


def test_cuda_requested_but_unusable_is_a_clear_error(demo_onnx: Path) -> None:
    s = load_model(demo_onnx, device="auto")
    if s.provider == "CUDAExecutionProvider":
        pytest.skip("a usable GPU is present")
    with pytest.raises(ConfigError, match="CUDA is not usable"):
        load_model(demo_onnx, device="cuda")


def test_unknown_device_is_rejected(demo_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="device"):
        load_model(demo_onnx, device="tpu")


@pytest.mark.parametrize(
    ("fixture", "match"),
    [
        ("onnx_without_metadata", "not a MetaScope model"),
        ("onnx_wrong_input_size", "input_size 96"),
        ("not_onnx", "not an ONNX model"),
    ],
)
def test_bad_model_files_raise_model_package_error(fixture: str, match: str, request: pytest.FixtureRequest) -> None:
    with pytest.raises(ModelPackageError, match=match):
        load_model(request.getfixturevalue(fixture))


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_library_model_changed_since_added_is_refused(demo_onnx: Path) -> None:
    from engine.library import ModelLibrary

    entry = ModelLibrary().add(demo_onnx)
    assert load_model(entry.path).sha256 == entry.sha256
    # someone edits the file in the library: still a valid package, different bytes
    write_metadata(entry.path, replace(read_metadata(entry.path), name="tampered"))
    with pytest.raises(ModelPackageError, match="sha256"):
        load_model(entry.path)


def test_fixed_batch_graph_runs_any_batch_size(onnx_fixed_batch: Path, demo_onnx: Path) -> None:
    fixed = load_model(onnx_fixed_batch)
    free = load_model(demo_onnx)
    assert fixed.input is not None and fixed.input.batch == 4
    rng = np.random.default_rng(0)
    batch = Preprocessor(fixed.metadata)(rng.integers(0, 255, (7, 96, 96, 3), dtype=np.uint8))
    np.testing.assert_allclose(fixed.run(batch), free.run(batch), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ preprocessing


def test_preprocess_matches_the_metadata_formula(demo_onnx: Path) -> None:
    meta = replace(read_metadata(demo_onnx), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    got = Preprocessor(meta)(tiles)
    want = ((tiles / 255.0 - np.array(meta.mean)) / np.array(meta.std)).transpose(0, 3, 1, 2)
    assert got.dtype == np.float32 and got.shape == (5, 3, 96, 96) and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_preprocess_bgr_nhwc(demo_onnx: Path) -> None:
    meta = replace(read_metadata(demo_onnx), channel_order="BGR", input_layout="NHWC")
    tiles = np.zeros((2, 96, 96, 3), dtype=np.uint8)
    tiles[..., 0] = 255  # pure red
    got = Preprocessor(meta)(tiles)
    assert got.shape == (2, 96, 96, 3)
    assert got[..., 2].min() == pytest.approx(1.0) and got[..., 0].max() == 0.0  # red is the last channel


def test_preprocess_resizes_tiles_of_another_size(demo_onnx: Path) -> None:
    meta = read_metadata(demo_onnx)
    tiles = np.zeros((3, 192, 192, 3), dtype=np.uint8)
    tiles[:, :, :96] = 200  # left half bright
    got = Preprocessor(meta)(tiles)
    assert got.shape == (3, 3, 96, 96)
    assert got[:, :, :, :48].mean() == pytest.approx(200 / 255, abs=1e-3)
    assert got[:, :, :, 48:].mean() == pytest.approx(0.0, abs=1e-3)
    odd = resize_batch(np.full((1, 150, 130, 3), 77, dtype=np.uint8), 96)
    assert odd.shape == (1, 96, 96, 3) and (odd == 77).all()


def test_softmax_and_probabilities(demo_onnx: Path) -> None:
    p = softmax(np.array([[0.0, 0.0], [1000.0, 0.0]]))
    np.testing.assert_allclose(p, [[0.5, 0.5], [1.0, 0.0]])
    meta = read_metadata(demo_onnx)
    single = to_probabilities(np.array([[0.0], [100.0]]), meta)
    np.testing.assert_allclose(single, [[0.5, 0.5], [0.0, 1.0]], atol=1e-6)
    probs = to_probabilities(np.array([[0.2, 0.8]]), replace(meta, output="probabilities"))
    np.testing.assert_allclose(probs, [[0.2, 0.8]])
