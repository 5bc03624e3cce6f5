"""The GPU path on a real CUDA GPU (skipped without one; run with ``pytest -m gpu tests/gpu``).

One training step with AMP (the trainer's CUDA path: float16 autocast, GradScaler,
channels_last), a CUDA heatmap equal to the CPU one within tolerance, I/O binding equal to the
plain session run, and a 2-GPU NCCL DDP step where there are two GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.infer.pipeline import InferenceConfig, compute_heatmap
from engine.infer.preprocess import Preprocessor
from engine.infer.session import load_model
from tests.fixtures.datasets import make_folder_dataset

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
# float16/TF32 convolutions on the GPU against float32 on the CPU
PROB_ATOL = 2e-3


def _torch_cuda() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


needs_torch_cuda = pytest.mark.skipif(_torch_cuda() < 1, reason="no CUDA GPU visible to PyTorch")
needs_ort_cuda = pytest.mark.skipif(not _ort_cuda(), reason="onnxruntime has no CUDA execution provider")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("toy") / "data", per_class=40, size=32)


@needs_torch_cuda
def test_amp_training_step_on_cuda(toy_data: Path, tmp_path: Path) -> None:
    from engine.train import TrainConfig, train
    from engine.train.runfolder import read_events

    cfg = TrainConfig(data=str(toy_data), mpp=0.5, epochs=1, batch_size=16, lr=3e-3, log_every=1, seed=1, device="cuda")
    result = train(cfg, tmp_path / "run")
    events = read_events(tmp_path / "run")[0]
    started = next(e for e in events if e["event"] == "run_started")
    assert started["amp"] is True and started["device"].startswith("cuda")
    steps = [e for e in events if e["event"] == "step"]
    assert steps and all(np.isfinite(e["loss"]) for e in steps) and "gpu_mem_mb" in steps[-1]
    assert result is not None


@needs_ort_cuda
def test_cuda_heatmap_equals_the_cpu_heatmap(demo_onnx: Path, array_slide) -> None:  # type: ignore[no-untyped-def]
    cpu = compute_heatmap(array_slide, load_model(demo_onnx, device="cpu"), InferenceConfig(device="cpu"))
    session = load_model(demo_onnx, device="cuda")
    assert session.provider == "CUDAExecutionProvider" and session.io_binding is not None
    gpu = compute_heatmap(array_slide, session, InferenceConfig(device="cuda"))
    assert gpu.model["provider"] == "CUDAExecutionProvider"
    np.testing.assert_array_equal(np.isnan(gpu.grid), np.isnan(cpu.grid))
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=PROB_ATOL)
    assert gpu.summary["tiles_above_threshold"] == pytest.approx(cpu.summary["tiles_above_threshold"], abs=1)


@needs_ort_cuda
def test_io_binding_equals_the_plain_session(demo_onnx: Path) -> None:
    s = load_model(demo_onnx, device="cuda")
    assert s.io_binding is not None
    tiles = np.random.default_rng(0).integers(0, 256, (300, 96, 96, 3), dtype=np.uint8)
    buf = s.input_buffer(300)
    x = Preprocessor(s.metadata)(tiles, out=buf)  # pinned where available, else a plain array
    bound = s.run(x)
    plain = np.asarray(s.session.run([s.output_name], {s.input_name: np.array(x)})[0])
    np.testing.assert_allclose(bound, plain, rtol=1e-5, atol=1e-5)
    cpu = load_model(demo_onnx, device="cpu").run(np.array(x))
    np.testing.assert_allclose(bound, cpu, atol=5e-3)
    for n in (1, 7, 256):  # other batch shapes reuse or add device buffers
        np.testing.assert_allclose(s.run(x[:n]), plain[:n], rtol=1e-5, atol=1e-5)
    assert s.batch_size_for(64) >= 256


@pytest.mark.skipif(_torch_cuda() < 2, reason="needs two CUDA GPUs")
def test_two_gpu_nccl_ddp_step(toy_data: Path, tmp_path: Path) -> None:
    from engine.train.runfolder import read_events

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "tests" / "gpu" / "ddp_train_worker.py"), str(toy_data), str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(tmp_path / "run")[0]
    started = next(e for e in events if e["event"] == "run_started")
    assert started["world_size"] == 2 and started["amp"] is True
    assert any(e["event"] == "epoch_ended" for e in events)
