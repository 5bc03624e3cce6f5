"""Training: learning, run-folder events, cancel, resume (also after SIGKILL), refusing folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import Cancelled, ConfigError, DatasetError, MetaScopeError
from engine.jobs import CancelToken, ProgressEvent
from engine.train import AugmentConfig, TrainConfig, train
from engine.train.runfolder import RunFolderError, load_checkpoint, read_events, read_state
from tests.engine.torchrun_helper import train_with_torchrun
from tests.fixtures.datasets import make_folder_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two separable classes (pale pink vs dark purple), 40 patches each, 32x32 px."""
    return make_folder_dataset(tmp_path_factory.mktemp("toy") / "data", per_class=40, size=32)


def _cfg(data: Path, **kw: object) -> TrainConfig:
    base: dict = {"data": str(data), "mpp": 0.5, "epochs": 2, "batch_size": 16, "lr": 3e-3, "log_every": 2, "seed": 1}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _events(run: Path) -> list[dict]:
    return read_events(run)[0]


@pytest.fixture(scope="module")
def reference_run(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[ProgressEvent]]:
    """One uninterrupted 2-epoch run, shared by the tests below (training is the slow part)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    seen: list[ProgressEvent] = []
    res = train(_cfg(toy_data), run, progress=seen.append)
    return run, res, seen


def test_learns_separable_toy_data_and_writes_a_complete_run_folder(toy_data: Path, reference_run: tuple) -> None:
    run, res, seen = reference_run
    assert res.status == "finished" and res.epochs_completed == 2
    assert res.best_metrics["val_auc"] > 0.9
    assert {p.name for p in run.iterdir()} >= {"config.json", "events.jsonl", "state.json", "checkpoint.pt", "best.pt"}
    ev = _events(run)
    kinds = [e["event"] for e in ev]
    assert kinds[0] == "run_started" and kinds[-1] == "finished"
    assert kinds.count("epoch_started") == 2 and kinds.count("epoch_ended") == 2 and kinds.count("checkpoint") == 2
    assert "data_checked" in kinds and "best" in kinds
    step = next(e for e in ev if e["event"] == "step")
    assert {"loss", "lr", "patches_per_s", "eta_s", "epoch", "step", "steps"} <= set(step)
    end = [e for e in ev if e["event"] == "epoch_ended"][-1]
    assert {"train_loss", "val_loss", "val_auc", "accuracy", "sensitivity", "specificity"} <= set(end)
    assert end["train_loss"] < [e for e in ev if e["event"] == "epoch_ended"][0]["train_loss"]
    state = read_state(run)
    assert state["status"] == "finished" and state["pid"] == os.getpid() and state["epoch"] == 2
    stored = json.loads((run / "config.json").read_text())
    assert TrainConfig.from_dict(stored["config"]) == _cfg(toy_data)
    assert stored["class_names"] == ["normal", "tumor"] and stored["positive_class"] == 1
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    assert {e.stage for e in seen} >= {"train", "epoch", "validate"}


def test_existing_run_folder_is_refused_and_left_untouched(toy_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "taken"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="already exists and is not empty"):
        train(_cfg(toy_data, epochs=1), run)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    with pytest.raises(RunFolderError, match="not a training run folder"):
        train(_cfg(toy_data, epochs=1), run, resume=True)


def test_cancel_keeps_checkpoint_and_resume_matches_an_uninterrupted_run(
    toy_data: Path, reference_run: tuple, tmp_path: Path
) -> None:
    cfg = _cfg(toy_data)
    ref_dir, ref, _ = reference_run

    run = tmp_path / "cancelled"
    token = CancelToken()

    def on_progress(ev: ProgressEvent) -> None:
        if ev.stage == "train" and ev.metrics.get("epoch") == 2 and ev.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        train(cfg, run, progress=on_progress, cancel=token)
    assert read_state(run)["status"] == "cancelled"
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1  # epoch 1 kept
    kinds = [e["event"] for e in _events(run)]
    assert kinds[-1] == "cancelled" and kinds.count("epoch_ended") == 1
    # epoch 2 stopped at its next step: at most 3 of its steps ran
    assert sum(1 for e in _events(run) if e["event"] == "step" and e["epoch"] == 2) <= 1

    # a new run may not reuse the folder, a resume with other settings is refused
    with pytest.raises(RunFolderError, match="--resume"):
        train(cfg, run)
    with pytest.raises(RunFolderError, match="different settings .*lr"):
        train(cfg.replace(lr=0.1), run, resume=True)

    res = train(None, run, resume=True)
    assert res.status == "finished" and res.epochs_completed == 2
    assert [h["epoch"] for h in res.history] == [1, 2]
    resumed = [e for e in _events(run) if e["event"] == "resumed"]
    assert resumed and resumed[0]["from_epoch"] == 1
    # same seeds, same shuffling and augmentation per epoch, restored RNG: identical training
    assert res.history[-1]["val_loss"] == pytest.approx(ref.history[-1]["val_loss"], abs=1e-5)
    a = load_checkpoint(run / "checkpoint.pt")["model"]
    b = load_checkpoint(ref_dir / "checkpoint.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    with pytest.raises(RunFolderError, match="already completed 2 of 2 epochs"):
        train(None, run, resume=True)


@pytest.mark.slow
def test_killed_training_process_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=32, size=32, seed=3)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "main", "train", "patches", "--data", str(data), "--out", str(run),
            "--epochs", "3", "--batch-size", "4", "--mpp", "0.5", "--arch", "seed_cnn", "--patience", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        killed_in_epoch = None
        while time.monotonic() < deadline and proc.poll() is None:
            ev = _events(run)
            if any(e["event"] == "checkpoint" for e in ev) and any(
                e["event"] == "epoch_started" and e["epoch"] == 2 for e in ev
            ):
                os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 2, no chance to clean up
                killed_in_epoch = 2
                break
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_in_epoch == 2, proc.stderr.read().decode() if proc.stderr else ""
    assert read_state(run)["status"] == "running"  # it never got to say otherwise
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1

    out = subprocess.run([*args[:5], "--out", str(run), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert read_state(run)["status"] == "finished"
    ev = _events(run)
    assert [e["from_epoch"] for e in ev if e["event"] == "resumed"] == [1]
    ended = [e["epoch"] for e in ev if e["event"] == "epoch_ended"]
    assert ended == [1, 2, 3]  # the killed epoch 2 never ended; it was redone after the resume
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 3


def test_bad_datasets_give_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError):
        train(_cfg(empty), tmp_path / "r1")
    one = make_folder_dataset(tmp_path / "one", classes=("tumor",), per_class=6, size=32)
    with pytest.raises(DatasetError, match="class"):
        train(_cfg(one), tmp_path / "r2")
    with pytest.raises(DatasetError, match="not found"):
        train(_cfg(tmp_path / "missing"), tmp_path / "r3")
    for r in ("r1", "r2", "r3"):  # nothing half-written was left behind
        assert not (tmp_path / r / "config.json").exists()


def test_weights_that_do_not_fit_are_refused_before_training(toy_data: Path, tmp_path: Path) -> None:
    from engine.models import build_model

    w = tmp_path / "r18.pt"
    torch.save(build_model("resnet18", 2).state_dict(), w)
    with pytest.raises(ConfigError, match="does not fit SeedCNN"):
        train(_cfg(toy_data, weights=str(w)), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_train_config_validates_and_round_trips() -> None:
    cfg = TrainConfig(data="x", arch="resnet18", augment=AugmentConfig(hed=0.05), schedule="onecycle")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad, match in [
        ({"arch": "nope"}, "unknown architecture"), ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "learning rate"),
        ({"val_fraction": 1.0}, "validation fraction"), ({"schedule": "step"}, "schedule"),
        ({"device": "tpu"}, "device"), ({"split": "random"}, "split"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(data="x", **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown training config keys: colour"):
        TrainConfig.from_dict({"data": "x", "colour": 1})
    with pytest.raises(MetaScopeError, match="augment hed"):
        AugmentConfig(hed=2.0)


def test_augmentations_are_vectorised_deterministic_and_bounded() -> None:
    from engine.train.augment import augment_batch, batch_generator

    x = torch.rand(16, 3, 24, 24)
    cfg = AugmentConfig(brightness=0.2, contrast=0.2, saturation=0.2, hed=0.05)
    a = augment_batch(x, cfg, batch_generator(0, 1, 2), 16)
    b = augment_batch(x, cfg, batch_generator(0, 1, 2), 16)
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, augment_batch(x, cfg, batch_generator(0, 1, 3), 16))
    # a DDP rank's half of the global batch is augmented exactly like in one process
    half = augment_batch(x[8:], cfg, batch_generator(0, 1, 2), 16, offset=8)
    assert torch.allclose(half, a[8:], atol=1e-6)
    # geometric only: pixel values are permuted, never changed
    geo = augment_batch(x, AugmentConfig(brightness=0, contrast=0, saturation=0, hed=0), batch_generator(0, 0, 0), 16)
    assert torch.allclose(geo.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(toy_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy_data, epochs=2, dropout=0.0, freeze_bn=True, num_workers=0)
    train_with_torchrun(cfg, tmp_path)
    single = train(cfg, tmp_path / "single")
    ev = _events(tmp_path / "ddp")
    assert next(e for e in ev if e["event"] == "run_started")["world_size"] == 2
    assert len([e for e in ev if e["event"] == "run_started"]) == 1  # only rank 0 writes
    ddp_hist = [e for e in ev if e["event"] == "epoch_ended"]
    for a, b in zip(ddp_hist, single.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
    wa = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["model"]
    wb = load_checkpoint(tmp_path / "single" / "checkpoint.pt")["model"]
    assert max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) < 1e-4
    assert np.isfinite(ddp_hist[-1]["val_auc"])
