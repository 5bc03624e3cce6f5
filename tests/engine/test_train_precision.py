"""`train patches --precision`: bfloat16 autocast trains on the CPU, fp16 without a GPU is a
clear error, and the run records the precision it used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import ConfigError
from engine.train import TrainConfig
from tests.fixtures.datasets import make_folder_dataset


def test_bf16_trains_on_cpu_and_is_recorded(tmp_path: Path) -> None:
    from engine.train import train
    from engine.train.runfolder import read_events

    data = make_folder_dataset(tmp_path / "data", per_class=12, size=24)
    train(TrainConfig(data=str(data), mpp=0.5, epochs=1, batch_size=8, device="cpu", precision="bf16",
                      calibration="none"), tmp_path / "run")
    started = next(e for e in read_events(tmp_path / "run")[0] if e["event"] == "run_started")
    assert started["amp"] is True and started["precision"] == "bfloat16"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["precision"] == "bf16"
    assert (tmp_path / "run" / "best.pt").is_file()


def test_fp16_on_cpu_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=4, size=24)
    code = main(["train", "patches", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--precision", "fp16", "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error:") and "fp16 needs a CUDA GPU" in err[-1]


def test_unknown_precision_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(data="x", precision="fp8")


def test_run_evaluation_reopens_a_resized_run_as_trained(tmp_path: Path) -> None:
    """`--resize` runs: the run's evaluation (and review) opens the data resized, as training did."""
    from engine.train import train
    from engine.train.run_evaluation import evaluate_run

    data = make_folder_dataset(tmp_path / "data", per_class=12, size=24)
    train(TrainConfig(data=str(data), mpp=0.5, resize=32, epochs=1, batch_size=8, device="cpu"), tmp_path / "run")
    res = evaluate_run(tmp_path / "run")
    assert res["n_val"] > 0 and len(res["confusion_matrix"]) == 2
    assert (tmp_path / "run" / "validation" / "predictions.csv").is_file()
