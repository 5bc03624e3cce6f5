"""Model metadata: bounded input_mpp, read without parsing the model (once per load)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import engine.modelpkg as modelpkg
from engine.errors import ModelPackageError
from engine.modelpkg import INPUT_MPP_RANGE, METADATA_KEY, ModelMetadata, model_properties, read_metadata
from engine.slides.open import MPP_RANGE


def _meta(**kw: object) -> dict:
    base = {"name": "m", "task": "patch_classification", "class_names": ["a", "b"], "input_size": 8}
    return {**base, **kw}


def _model(path: Path, weights: int = 1000, meta: dict | None = None) -> Path:
    w = numpy_helper.from_array(np.ones((weights,), np.float32), "w")
    node = helper.make_node("Identity", ["input"], ["logits"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])], initializer=[w],
    )
    model = helper.make_model(graph)
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    other = model.metadata_props.add()
    other.key, other.value = "author", "somebody ünïcode"
    onnx.save(model, str(path))
    return path


def test_input_mpp_is_bounded_like_slide_mpp(tmp_path: Path) -> None:
    assert INPUT_MPP_RANGE == MPP_RANGE
    assert ModelMetadata.from_dict(_meta(input_mpp=0.25)).input_mpp == 0.25
    for bad in (50_000, 0.001, float("nan"), float("inf"), 0, -1):
        with pytest.raises(ModelPackageError, match="input_mpp must be between 0.01 and 100"):
            ModelMetadata.from_dict(_meta(input_mpp=bad))
    # a sidecar with a typo cannot plan millions of tiles: the package is refused
    path = _model(tmp_path / "outside.onnx")
    (tmp_path / "outside.onnx.json").write_text(json.dumps(_meta(input_mpp=5000)))
    with pytest.raises(ModelPackageError, match="input_mpp"):
        read_metadata(path)


def test_metadata_is_read_without_parsing_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _model(tmp_path / "big.onnx", weights=2_000_000, meta=_meta(input_mpp=0.5))  # 8 MB of weights
    reads: list[int] = []
    real_open = open

    class Counting:
        def __init__(self, fh) -> None:  # noqa: ANN001
            self.fh = fh

        def read(self, n: int = -1) -> bytes:
            data = self.fh.read(n)
            reads.append(len(data))
            return data

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self.fh, name)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *a: object) -> None:
            self.fh.close()

    monkeypatch.setattr(modelpkg, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    monkeypatch.setattr(onnx, "load", lambda *a, **k: pytest.fail("the whole model was parsed"))
    meta = read_metadata(path)
    assert meta.input_mpp == 0.5 and sum(reads) < 10_000  # headers and metadata only, not 8 MB
    assert model_properties(path)["author"] == "somebody ünïcode"
    assert model_properties(path.read_bytes()) == model_properties(path)


def test_load_model_reads_the_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.infer import session as session_mod

    path = Path(__file__).resolve().parents[2] / "resources" / "models" / "pcam-starter.onnx"
    parsed: list[str] = []
    monkeypatch.setattr(onnx, "load", lambda *a, **k: parsed.append("onnx.load") or pytest.fail("parsed twice"))
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: parsed.append(self.name) or real_read(self))
    s = session_mod.load_model(path, device="cpu")
    assert s.metadata.task == "patch_classification" and parsed == [path.name]


@pytest.mark.parametrize("data", [b"not an onnx file at all", b"II*\x00" + bytes(range(256)) * 4, b""])
def test_garbage_is_not_an_onnx_model(tmp_path: Path, data: bytes) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(data)
    with pytest.raises(ModelPackageError, match="broken.onnx is not an ONNX model"):
        read_metadata(bad)
