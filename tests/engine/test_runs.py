"""Training runs seen from outside: incremental event reading, state, crash detection, spawning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine.runs import (
    EventFollower,
    RunHistory,
    StopFileWatcher,
    launch_dir,
    list_runs,
    load_evaluation,
    log_tail,
    new_run_dir,
    pid_alive,
    request_stop,
    run_info,
    spawn_training,
    stop_requested,
)


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def test_follower_reads_only_new_complete_lines(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    follower = EventFollower(tmp_path)
    assert follower.read_new() == []  # no file yet
    _append(events, json.dumps({"event": "run_started", "epochs": 2}) + "\n" + '{"event": "st')
    assert [e["event"] for e in follower.read_new()] == ["run_started"]
    assert follower.read_new() == []  # the half-written line waits
    _append(events, 'ep", "loss": 0.7}\nnot json\n')
    got = follower.read_new()
    assert got == [{"event": "step", "loss": 0.7}]
    assert follower.skipped_lines == 1
    # replaced by a shorter file: start again and say so
    events.write_text(json.dumps({"event": "run_started"}) + "\n")
    assert [e["event"] for e in follower.read_new()] == ["run_started"]
    assert follower.restarted


def test_history_folds_trainer_events_into_curves_and_progress() -> None:
    h = RunHistory()
    h.apply_all(
        [
            {
                "event": "run_started",
                "epochs": 2,
                "steps_per_epoch": 4,
                "device": "cpu",
                "n_train": 19,
                "n_val": 5,
                "class_names": ["normal", "tumor"],
            },
            {"event": "epoch_started", "epoch": 1, "epochs": 2},
            {"event": "step", "epoch": 1, "step": 2, "steps": 4, "loss": 0.69, "patches_per_s": 120.0, "eta_s": 30},
            {"event": "step", "epoch": 1, "step": 4, "steps": 4, "loss": 0.5, "patches_per_s": 130.0, "eta_s": 20},
            {
                "event": "epoch_ended",
                "epoch": 1,
                "train_loss": 0.6,
                "val_loss": 0.55,
                "val_auc": 0.8,
                "accuracy": 0.7,
                "confusion_matrix": [[2, 1], [0, 2]],
            },
            {"event": "best", "epoch": 1, "val_auc": 0.8},
            {"event": "checkpoint", "epoch": 1},
            {"event": "epoch_started", "epoch": 2, "epochs": 2},
            {"event": "step", "epoch": 2, "step": 2, "steps": 4, "loss": 0.4, "eta_s": 10},
        ]
    )
    assert h.loss_points == [(0.5, 0.69), (1.0, 0.5), (1.5, 0.4)]
    assert h.val_points["auc"] == [(1.0, 0.8)] and h.val_points["loss"] == [(1.0, 0.55)]
    assert h.latest("accuracy") == 0.7 and h.confusion_matrix == [[2, 1], [0, 2]]
    assert h.train_epoch_loss == [(1.0, 0.6)]
    assert (h.epoch, h.step, h.steps, h.epochs) == (2, 2, 4, 2)
    assert h.fraction == 0.75
    assert h.throughput == 130.0 and h.eta_s == 10 and h.device == "cpu"
    assert h.best["epoch"] == 1 and h.checkpoints == 1 and (h.n_train, h.n_val) == (19, 5)
    # killed in epoch 2, resumed from the epoch-1 checkpoint: epoch 2's partial curve is dropped
    h.apply({"event": "resumed", "epochs": 2, "steps_per_epoch": 4, "from_epoch": 1, "device": "cpu"})
    assert h.loss_points == [(0.5, 0.69), (1.0, 0.5)] and h.status == "running"
    h.apply({"event": "finished", "status": "finished", "best": {"epoch": 2, "val_auc": 0.9}})
    assert h.status == "finished" and h.fraction == 1.0 and h.best["val_auc"] == 0.9


def test_stop_file_watcher_sets_the_cancel_token(tmp_path: Path) -> None:
    from engine.jobs import CancelToken

    (tmp_path / "STOP").write_text("old request")
    token = CancelToken()
    with StopFileWatcher(tmp_path, token, interval_s=0.02):
        assert not (tmp_path / "STOP").exists()  # a stale request does not stop a resumed run
        time.sleep(0.1)
        assert not token.cancelled
        assert request_stop(tmp_path)
        deadline = time.monotonic() + 60  # a limit for a busy machine; the watcher polls every 20 ms
        while not token.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert token.cancelled
    assert not (tmp_path / "STOP").exists()
    assert not request_stop(tmp_path / "not-created-yet")


def test_run_state_live_crashed_and_stop_request(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / "state.json").write_text(json.dumps({"status": "running", "pid": sleeper.pid}))
        info = run_info(run)
        assert info.status == "running" and info.alive and info.active
        request_stop(run)
        assert stop_requested(run)
        assert run_info(run).status == "stopping"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not pid_alive(sleeper.pid)
    (run / "checkpoint.pt").write_bytes(b"x")
    launch_dir(run).mkdir()
    (launch_dir(run) / "train.log").write_text("epoch 1\nerror: out of memory\n")
    info = run_info(run)
    assert info.status == "crashed" and not info.alive
    assert info.resumable and info.message == "error: out of memory"
    assert "out of memory" in log_tail(run)


def test_list_runs_newest_first(tmp_path: Path) -> None:
    for i, status in enumerate(("finished", "cancelled")):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "state.json").write_text(json.dumps({"status": status}))
        os.utime(d / "state.json", (time.time() + i, time.time() + i))
    (tmp_path / "not-a-run").mkdir()
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["r1", "r0"]
    assert [r.status for r in runs] == ["cancelled", "finished"]
    assert not runs[0].resumable  # no checkpoint
    fresh = new_run_dir("cnn 3-conv", parent=tmp_path)
    assert not fresh.exists() and fresh.name.endswith("-cnn-3-conv")


def test_spawn_runs_cli_detached_and_records_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    spawned = spawn_training(run, ["--version"])
    assert spawned.process.wait(timeout=60) == 0
    command = json.loads((launch_dir(run) / "command.json").read_text())
    assert command["argv"][-1] == "--version" and command["pid"] == spawned.pid
    assert "MetaScope" in (launch_dir(run) / "train.log").read_text()
    # the trainer refuses a non-empty folder for a new run: the app's files live beside it
    assert not run.exists()
    info = run_info(run)
    assert info.status == "crashed" and [r.name for r in list_runs(tmp_path)] == ["run"]


def test_saved_evaluation_goes_stale_when_the_best_model_changes(tmp_path: Path) -> None:
    best = tmp_path / "best.pt"
    best.write_bytes(b"model")
    stamp = best.stat().st_mtime_ns
    (tmp_path / "evaluation.json").write_text(
        json.dumps({"metrics": {"auc": 0.9}, "model_file": "best.pt", "model_mtime_ns": stamp})
    )
    assert load_evaluation(tmp_path)["metrics"]["auc"] == 0.9
    os.utime(best, ns=(stamp + 10**9, stamp + 10**9))  # a resumed run wrote a better model
    assert load_evaluation(tmp_path) is None
