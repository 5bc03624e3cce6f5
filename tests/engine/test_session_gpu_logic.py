"""The GPU inference path's logic, checked on the CPU: batch size and reader choice, I/O binding
(run through onnxruntime's CPU device, same code as on CUDA), pinned-buffer wiring in the
pipeline, and the fallback to the unchanged CPU path when CUDA is unusable."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.infer import gpu
from engine.infer.gpu import (
    CUDA_DEFAULT_BATCH,
    CUDA_MAX_BATCH,
    CUDA_MIN_BATCH,
    BoundRunner,
    choose_batch_size,
    choose_read_workers,
)
from engine.infer.pipeline import InferenceConfig, compute_heatmap, device_batching
from engine.infer.preprocess import Preprocessor
from engine.infer.session import ModelSession, load_model

GiB = 2**30


def test_batch_size_is_unchanged_on_the_cpu() -> None:
    for requested in (1, 64, 5000):
        assert choose_batch_size("cpu", requested, 96, free_bytes=100 * GiB) == requested


def test_cuda_batch_size_from_free_memory() -> None:
    assert choose_batch_size("cuda", 64, 96) == CUDA_DEFAULT_BATCH  # memory unknown: the default
    assert choose_batch_size("cuda", 64, 96, free_bytes=139 * GiB) == CUDA_DEFAULT_BATCH
    assert choose_batch_size("cuda", 512, 96, free_bytes=139 * GiB) == 512  # a larger request is kept
    assert choose_batch_size("cuda", 4096, 96, free_bytes=139 * GiB) == CUDA_MAX_BATCH
    small = choose_batch_size("cuda", 64, 224, free_bytes=2 * GiB)  # 2 GiB free, 224 px tiles
    assert CUDA_MIN_BATCH <= small < CUDA_DEFAULT_BATCH and small & (small - 1) == 0
    assert choose_batch_size("cuda", 64, 512, free_bytes=1) == CUDA_MIN_BATCH  # never below the floor


def test_read_workers_only_change_for_an_automatic_cuda_run() -> None:
    assert choose_read_workers("cpu", 0, 2, 16) == 2
    assert choose_read_workers("cuda", 3, 3, 16) == 3  # the user's choice stands
    assert choose_read_workers("cuda", 0, 8, 16) == 15
    assert choose_read_workers("cuda", 0, 2, 2) == 2
    assert choose_read_workers("cuda", 0, 8, 128) == gpu.CUDA_MAX_READERS


def _tiles(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def test_bound_runner_equals_plain_run(demo_onnx: Path) -> None:
    s = load_model(demo_onnx, device="cpu")
    assert s.io_binding is None  # the CPU path has no binding
    bound = BoundRunner(s.session, s.input_name, s.output_name, device_type="cpu")
    prep = Preprocessor(s.metadata)
    for n in (8, 3, 8, 5, 1, 7, 2):  # more shapes than device buffers kept: evicted and rebuilt
        x = prep(_tiles(n, seed=n))
        np.testing.assert_array_equal(bound.run(x), s.run(x))
    assert len(bound._inputs) <= BoundRunner._SHAPES
    assert bound.host_buffer((4, 3, 96, 96)) is None  # pinned memory is a CUDA matter


def test_session_with_binding_chunks_fixed_batch_graphs(onnx_fixed_batch: Path, demo_onnx: Path) -> None:
    fixed = load_model(onnx_fixed_batch, device="cpu")
    plain = load_model(demo_onnx, device="cpu")
    fixed.io_binding = BoundRunner(fixed.session, fixed.input_name, fixed.output_name, device_type="cpu")
    x = Preprocessor(fixed.metadata)(_tiles(7, seed=3))
    np.testing.assert_allclose(fixed.run(x), plain.run(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_listed_but_unusable_falls_back_to_the_unchanged_cpu_path(
    demo_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the fallback is checked on CPU builds")
    # a GPU build on a machine without a usable GPU lists CUDA but runs on the CPU
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    s = load_model(demo_onnx, device="auto")
    assert s.provider == "CPUExecutionProvider" and s.io_binding is None
    assert s.batch_size_for(64) == 64 and s.input_buffer(64) is None
    cfg = InferenceConfig(batch_size=48, read_workers=3)
    assert device_batching(s, cfg) == (48, 3)
    with pytest.raises(ConfigError, match="CUDA is not usable"):
        load_model(demo_onnx, device="cuda")


def test_binding_creation_failure_keeps_plain_run(demo_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.infer import session as session_mod

    s = load_model(demo_onnx, device="cpu")

    class _Broken:
        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider"]

        def io_binding(self) -> None:
            raise RuntimeError("no binding here")

    assert session_mod._cuda_binding(_Broken(), s.input_name, s.output_name) is None  # type: ignore[arg-type]
    assert session_mod._cuda_binding(s.session, s.input_name, s.output_name) is None  # CPU session: no binding


def test_pinned_buffer_owner_lives_as_long_as_the_array() -> None:
    class _Owner:
        pass

    r = BoundRunner.__new__(BoundRunner)
    r._pinned_alive = {}
    arr = np.zeros(4, np.float32)
    r._keep(arr, _Owner())
    assert len(r._pinned_alive) == 1
    view = arr[1:]
    del arr
    gc.collect()
    assert len(r._pinned_alive) == 1  # a view still uses the memory
    del view
    gc.collect()
    assert r._pinned_alive == {}


def test_pipeline_uses_gpu_batching_and_pinned_buffers(
    demo_onnx: Path,
    array_slide,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """The CUDA wiring of the heatmap (batch size, readers, host buffers from the session) with
    the binding run on onnxruntime's CPU device: same heatmap as the plain CPU run."""
    cpu = load_model(demo_onnx, device="cpu")
    ref = compute_heatmap(array_slide, cpu, InferenceConfig(device="cpu"))

    bound = load_model(demo_onnx, device="cpu")
    runner = BoundRunner(bound.session, bound.input_name, bound.output_name, device_type="cpu")
    handed: list[tuple[int, ...]] = []

    def host_buffer(shape: tuple[int, ...]) -> np.ndarray:
        handed.append(shape)
        return np.empty(shape, np.float32)

    monkeypatch.setattr(runner, "host_buffer", host_buffer)
    monkeypatch.setattr(gpu, "cuda_free_bytes", lambda device_id=0: None)
    monkeypatch.setattr(gpu, "CUDA_DEFAULT_BATCH", 8)  # the small slide still fills several GPU batches
    bound.io_binding = runner
    assert isinstance(bound, ModelSession)
    cfg = InferenceConfig(device="cpu", batch_size=4)
    batch, workers = device_batching(bound, cfg)
    assert batch == 8 and workers >= 2
    res = compute_heatmap(array_slide, bound, cfg)
    np.testing.assert_allclose(res.probabilities, ref.probabilities, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.isnan(res.grid), np.isnan(ref.grid))
    assert res.summary["tiles_analysed"] >= 16
    assert handed and all(s == (8, 3, 96, 96) for s in handed)


def test_pipeline_runs_sessions_without_input_buffers(demo_onnx: Path, array_slide) -> None:  # type: ignore[no-untyped-def]
    """Objects that quack like a session (MIL feature extractors: metadata and run) still work."""
    from engine.infer.pipeline import iter_tile_outputs
    from engine.slides.tiling import TissueSettings, plan_slide

    s = load_model(demo_onnx, device="cpu")

    class _Quacks:
        metadata = s.metadata
        input = s.input

        def run(self, batch: np.ndarray) -> np.ndarray:
            return s.run(batch)

    plan = plan_slide(array_slide, 96, 0.972, TissueSettings())
    got = list(iter_tile_outputs(array_slide, plan, _Quacks(), batch_size=4))  # type: ignore[arg-type]
    assert sum(len(i) for i, _ in got) == plan.n_tiles
