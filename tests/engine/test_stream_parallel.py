"""Batches on one-thread copies of the session (one per core) give the same bits as one batch on
all cores with the reads on their own threads (the pipeline before; still the path for CUDA and
model objects without ``worker_copy``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import SlideOpenError
from engine.infer.pipeline import InferenceConfig, compute_heatmap, iter_tile_outputs
from engine.infer.session import ModelSession, load_model
from engine.slides.damage import UnreadableLog
from engine.slides.open import open_slide
from engine.slides.synthetic import SyntheticSlide
from engine.slides.tiling import TilingConfig, plan_tiles, read_tile


@pytest.fixture(scope="module")
def cnn_onnx(demo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seeded CNN (two 3x3 convolutions, two dense layers) with the demo model's metadata:
    convolutions and matrix products that onnxruntime splits over threads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from engine.modelpkg import read_metadata, write_metadata

    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [
        w("c1", 16, 3, 3, 3),
        w("b1", 16),
        w("c2", 32, 16, 3, 3),
        w("b2", 32),
        w("d1", 32, 24),
        w("e1", 24),
        w("d2", 24, 2),
        w("e2", 2),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c1", "b1"], ["x1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["x1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2", "b2"], ["x2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["x2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "d1", "e1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "d2", "e2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 96, 96])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out = tmp_path_factory.mktemp("cnn")
    onnx.save(model, str(out / "raw.onnx"))
    return write_metadata(out / "raw.onnx", read_metadata(demo_onnx), out_path=out / "cnn.onnx")


class _Quacks:
    """The same session without ``worker_copy``: the pipeline runs it the old way."""

    def __init__(self, session: Any) -> None:
        self.metadata = session.metadata
        self._session = session

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(batch)


def _spy_copy(session: ModelSession) -> list[int]:
    """Count the batches the worker copy runs (proof the parallel path was taken)."""
    copy = session.worker_copy()
    assert copy is not None
    calls: list[int] = []
    run = copy.run

    def counted(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return run(batch)

    copy.run = counted  # type: ignore[method-assign]
    return calls


def test_heatmap_is_bit_identical_on_one_thread_copies(
    synthetic_svs: SyntheticSlide, cnn_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = InferenceConfig(batch_size=24, read_workers=2, device="cpu", max_tiles=150)
    session = load_model(cnn_onnx, "cpu", intra_op_threads=2)
    calls = _spy_copy(session)
    new = compute_heatmap(synthetic_svs.path, session, cfg)
    assert sum(calls) == len(new.level0_xy) and len(calls) == -(-len(new.level0_xy) // 24)
    monkeypatch.setattr(ModelSession, "worker_copy", lambda self: None)
    old = compute_heatmap(synthetic_svs.path, load_model(cnn_onnx, "cpu", intra_op_threads=2), cfg)
    assert new.grid.tobytes() == old.grid.tobytes()
    assert new.probabilities.tobytes() == old.probabilities.tobytes()
    for r in (new, old):
        r.summary["qc"].pop("seconds")  # how long the QC took
    assert new.summary == old.summary
    assert np.isfinite(new.grid).sum() == len(new.level0_xy) > 100


def test_unreadable_and_screened_tiles_are_left_out_the_same_way(synthetic_svs: SyntheticSlide, cnn_onnx: Path) -> None:
    session = load_model(cnn_onnx, "cpu", intra_op_threads=2)
    calls = _spy_copy(session)
    with open_slide(synthetic_svs.path) as reader:
        plan = plan_tiles(reader, TilingConfig(96, 0.972, min_tissue_fraction=0.0), None)
        idx = np.arange(0, min(plan.n_tiles, 90), dtype=np.int64)
        bad = set(range(3, 90, 7)) | set(range(40, 50))  # one batch wholly unreadable

        def flaky(r, p, xy):  # type: ignore[no-untyped-def]
            i = int(np.flatnonzero((plan.level0_xy == xy).all(axis=1))[0])
            if i in bad:
                raise SlideOpenError(f"tile {i} damaged")
            return read_tile(r, p, xy)

        def screen(tiles: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return rows % 5 != 1  # drops a tile or two per batch

        got = {}
        for name, model in (("new", session), ("old", _Quacks(session))):
            log = UnreadableLog(plan.n_tiles, 0.5, "x")
            rows, outs = [], []
            for i, out in iter_tile_outputs(
                reader,
                plan,
                model,
                batch_size=10,
                read_workers=2,
                indices=idx,
                read_tile=flaky,
                unreadable=log,
                screen=screen,
            ):
                rows.append(i)
                outs.append(out)
            got[name] = (np.concatenate(rows), np.concatenate(outs))
    assert calls  # the parallel path ran
    keep = [i for i in idx if i not in bad and i % 5 != 1]
    assert got["new"][0].tolist() == got["old"][0].tolist() == keep
    assert got["new"][1].tobytes() == got["old"][1].tobytes()


def test_worker_copy_is_kept_and_only_where_it_applies(cnn_onnx: Path, tmp_path: Path) -> None:
    two = load_model(cnn_onnx, "cpu", intra_op_threads=2)
    copy = two.worker_copy()
    assert copy is not None and copy.intra_op_threads == 1 and copy.sha256 == two.sha256
    assert two.worker_copy() is copy
    assert load_model(cnn_onnx, "cpu", intra_op_threads=1).worker_copy() is None
    changed = tmp_path / "m.onnx"
    changed.write_bytes(cnn_onnx.read_bytes())
    session = load_model(changed, "cpu", intra_op_threads=2)
    changed.write_bytes(cnn_onnx.read_bytes() + b"\0")  # no longer the verified bytes
    assert session.worker_copy() is None


@pytest.mark.parametrize(("threads", "per_copy"), [(3, 1), (6, 2), (8, 2), (9, 3)])
def test_many_threads_share_out_at_most_four_batches_at_once(
    array_slide, cnn_onnx: Path, threads: int, per_copy: int
) -> None:
    """Every batch in flight holds its own activations: above 4 threads the copies get several."""
    session = load_model(cnn_onnx, "cpu", intra_op_threads=threads)
    copy = session.worker_copy()
    assert copy is not None and copy.intra_op_threads == per_copy
    calls = _spy_copy(session)
    plan = plan_tiles(array_slide, TilingConfig(96, 0.972, min_tissue_fraction=0.0), None)
    idx = np.arange(min(plan.n_tiles, 40))
    got = {}
    for name, model in (("new", session), ("old", _Quacks(session))):
        rows, outs = zip(*iter_tile_outputs(array_slide, plan, model, batch_size=8, indices=idx), strict=True)
        got[name] = (np.concatenate(rows), np.concatenate(outs))
    assert sum(calls) == len(idx)
    assert got["new"][0].tolist() == got["old"][0].tolist() == idx.tolist()
    assert got["new"][1].tobytes() == got["old"][1].tobytes()


def test_mil_features_are_bit_identical_on_one_thread_copies(array_slide, cnn_onnx: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from engine.mil.features import load_extractor
    from engine.modelpkg import read_metadata, write_metadata

    meta = replace(read_metadata(cnn_onnx), task="feature_extractor", class_names=(), feature_dim=2)
    extractor = load_extractor(write_metadata(cnn_onnx, meta, out_path=tmp_path / "fe.onnx"), "cpu", 2)
    copy = extractor.worker_copy()
    assert copy is not None and copy.intra_op_threads == 1
    plan = plan_tiles(array_slide, TilingConfig(96, 0.972, min_tissue_fraction=0.0), None)
    got = {}
    for name, model in (("new", extractor), ("old", _Quacks(extractor))):
        rows, outs = zip(*iter_tile_outputs(array_slide, plan, model, batch_size=16), strict=True)
        got[name] = (np.concatenate(rows), np.concatenate(outs))
    assert got["new"][0].tolist() == got["old"][0].tolist() == list(range(plan.n_tiles))
    assert got["new"][1].tobytes() == got["old"][1].tobytes()
