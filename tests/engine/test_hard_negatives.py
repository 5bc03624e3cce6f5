"""Hard-negative mining (``TrainConfig.hard_negatives`` / ``train patches --hard-negatives``):
sampling towards high-loss negatives, events and checkpoint, resume, bad values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.errors import Cancelled, ConfigError
from engine.jobs import CancelToken, ProgressEvent
from engine.train import TrainConfig, train
from engine.train.hard_negatives import HardNegativeSampler, rank_weights
from engine.train.runfolder import load_checkpoint, read_events
from tests.engine.torchrun_helper import train_with_torchrun
from tests.fixtures.datasets import make_folder_dataset


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("hn") / "data", per_class=20, size=32, seed=5)


def _cfg(data: Path, **kw: object) -> TrainConfig:
    base: dict = {"data": str(data), "mpp": 0.5, "epochs": 3, "batch_size": 8, "lr": 3e-3, "log_every": 2,
                  "seed": 2, "val_fraction": 0.25, "hard_negatives": 20.0, "validate_data": False}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_sampler_draws_towards_high_loss_negatives_and_keeps_positives_and_length() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    s = HardNegativeSampler(labels, positive=1, alpha=5.0, seed=3)
    warm = s.order(0)  # the warm-up epoch: the plain shuffle a run without mining does
    assert np.array_equal(warm, np.random.default_rng([3, 0]).permutation(1000))
    loss = np.linspace(0.0, 2.0, 1000)  # negative i's loss grows with i
    s.record(np.arange(1000), loss)
    order = s.order(1)
    assert order.size == 1000
    assert np.array_equal(np.sort(order[labels[order] == 1]), np.arange(900, 1000))  # every positive once
    neg = order[labels[order] == 0]
    assert neg.size == 900 and np.unique(neg).size < 900  # drawn with replacement
    # weights 1..6 by loss rank: the hardest tenth gets ~17 % of the draws, the easiest ~3 %
    assert np.mean(neg >= 810) > 0.14 and np.mean(neg < 90) < 0.05
    assert s.stats["mean_drawn_negative_loss"] > s.stats["mean_negative_loss"]
    # deterministic in the seed and epoch, different for another seed
    t = HardNegativeSampler(labels, 1, 5.0, 3)
    t.load(s.state(torch))
    assert np.array_equal(t.order(1), order)
    u = HardNegativeSampler(labels, 1, 5.0, 4)
    u.load(s.state(torch))
    assert not np.array_equal(u.order(1), order)
    # off: every epoch the plain shuffle
    off = HardNegativeSampler(labels, 1, 0.0, 3)
    off.record(np.arange(1000), loss)
    assert np.array_equal(off.order(1), np.random.default_rng([3, 1]).permutation(1000))


def test_rank_weights_and_repeated_losses() -> None:
    w = rank_weights(np.array([0.5, 0.1, 0.9, 0.1]), alpha=3.0)
    assert w == pytest.approx([1 + 3 * 2 / 3, 1 + 3 * 0.5 / 3, 4.0, 1 + 3 * 0.5 / 3])  # ties share a rank
    assert rank_weights(np.array([np.nan, 0.0]), 1.0) == pytest.approx([2.0, 1.0])  # never seen = hardest
    s = HardNegativeSampler(np.zeros(3, dtype=int), 1, 1.0, 0)
    s.record(np.array([0, 0, 2]), np.array([1.0, 3.0, 5.0]))
    assert s.losses[0] == 2.0 and np.isnan(s.losses[1]) and s.losses[2] == 5.0


def test_training_mines_after_warmup_and_resume_matches_an_uninterrupted_run(toy_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(toy_data)
    ref = train(cfg, tmp_path / "ref")
    ev = read_events(tmp_path / "ref")[0]
    mined = [e for e in ev if e["event"] == "hard_negatives"]
    assert [e["epoch"] for e in mined] == [2, 3]  # not in the warm-up epoch
    for e in mined:
        assert e["alpha"] == 20.0 and e["unique_negatives_drawn"] < e["negatives"]
        assert e["mean_drawn_negative_loss"] > e["mean_negative_loss"]
    ck = load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    losses = ck["hard_negatives"].numpy()
    assert losses.shape == (ev[0]["n_train"],) and np.isfinite(losses).all() and (losses >= 0).all()

    # cancelled in epoch 3, resumed: the same draw (losses restored from the checkpoint), same weights
    token = CancelToken()

    def stop(p: ProgressEvent) -> None:
        if p.stage == "train" and p.metrics.get("epoch") == 3 and p.step == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        train(cfg, tmp_path / "cut", progress=stop, cancel=token)
    res = train(None, tmp_path / "cut", resume=True)
    assert res.history[-1]["val_loss"] == pytest.approx(ref.history[-1]["val_loss"], abs=1e-5)
    a = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert np.allclose(a["hard_negatives"].numpy(), losses)
    assert all(torch.allclose(a["model"][k].float(), ck["model"][k].float(), atol=1e-5) for k in ck["model"])
    cut_mined = [e for e in read_events(tmp_path / "cut")[0] if e["event"] == "hard_negatives"]
    assert [e["epoch"] for e in cut_mined] == [2, 3, 3]  # epoch 3 drawn before the cancel and again on resume
    assert {**cut_mined[-1], "time": 0} == {**mined[-1], "time": 0} == {**cut_mined[-2], "time": 0}


@pytest.mark.parametrize("bad", [-1.0, 101.0, float("nan"), "3", True])
def test_bad_strengths_are_clear_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match="hard-negative mining strength must be 0 \\(off\\) to 100"):
        TrainConfig(data="x", hard_negatives=bad)  # type: ignore[arg-type]


def test_cli_flag_default_strength_and_bad_value(toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "patches", "--data", str(toy_data), "--out", str(run), "--epochs", "2", "--batch-size", "16",
                 "--mpp", "0.5", "--hard-negatives", "--json"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["hard_negatives"] == 3.0
    assert any(e["event"] == "hard_negatives" for e in read_events(run)[0])
    capsys.readouterr()
    assert main(["train", "patches", "--data", str(toy_data), "--out", str(tmp_path / "bad"), "--hard-negatives", "-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: hard-negative mining strength must be 0 (off) to 100, got -2.0"]


@pytest.mark.slow
def test_torchrun_two_processes_mine_the_same_negatives_as_one_process(toy_data: Path, tmp_path: Path) -> None:
    """Under DDP every rank gathers all ranks' losses, so two processes draw what one draws."""
    cfg = _cfg(toy_data, dropout=0.0, freeze_bn=True)
    train_with_torchrun(cfg, tmp_path)
    single = train(cfg, tmp_path / "single")
    ev = read_events(tmp_path / "ddp")[0]
    assert next(e for e in ev if e["event"] == "run_started")["world_size"] == 2
    strip = [{k: v for k, v in e.items() if k != "time"} for e in ev if e["event"] == "hard_negatives"]
    one = [{k: v for k, v in e.items() if k != "time"} for e in read_events(tmp_path / "single")[0] if e["event"] == "hard_negatives"]
    assert len(strip) == 2 and [e["unique_negatives_drawn"] for e in strip] == [e["unique_negatives_drawn"] for e in one]
    for a, b in zip(strip, one, strict=True):
        assert a["mean_negative_loss"] == pytest.approx(b["mean_negative_loss"], abs=1e-4)
    ddp_hist = [e for e in ev if e["event"] == "epoch_ended"]
    for a, b in zip(ddp_hist, single.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    la = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["hard_negatives"].numpy()
    lb = load_checkpoint(tmp_path / "single" / "checkpoint.pt")["hard_negatives"].numpy()
    assert np.allclose(la, lb, atol=1e-4)
