"""ONNX models saved with external data (weights beside the .onnx, as for models over 2 GB) load from their path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.infer.external import uses_external_data
from engine.infer.session import load_model


def test_a_model_with_external_data_loads_and_predicts_the_same(demo_onnx: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(demo_onnx))
    out = tmp_path / "big" / "model.onnx"
    out.parent.mkdir()
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert (out.parent / "model.onnx.data").stat().st_size > 0
    assert uses_external_data(out.read_bytes()) and not uses_external_data(demo_onnx.read_bytes())

    ext = load_model(out, device="cpu")
    ref = load_model(demo_onnx, device="cpu")
    assert ext.metadata.class_names == ref.metadata.class_names
    size = ref.metadata.input_size
    batch = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    np.testing.assert_allclose(ext.run(batch), ref.run(batch), rtol=1e-5, atol=1e-6)


def test_external_data_from_another_working_directory(demo_onnx: Path, tmp_path: Path, monkeypatch) -> None:
    import onnx

    out = tmp_path / "m" / "model.onnx"
    out.parent.mkdir()
    onnx.save_model(onnx.load(str(demo_onnx)), str(out), save_as_external_data=True, size_threshold=0)
    monkeypatch.chdir(tmp_path)
    assert load_model(Path("m/model.onnx"), device="cpu").sha256  # relative path, weights found beside it


def test_garbage_is_not_external_data() -> None:
    assert not uses_external_data(b"\xff\xff\xff")
    assert not uses_external_data(b"")
