"""One process per run folder: an OS lock held for the whole run, one liveness helper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine.procs
from engine.errors import ConfigError
from engine.mil.train import MILTrainConfig, train_mil
from engine.train import TrainConfig, train
from engine.train import runfolder as rf

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys
from engine.train.runfolder import run_lock
with run_lock(sys.argv[1]):
    open(sys.argv[2], "w").close()
    sys.stdin.read()  # hold the lock until the test closes stdin (or kills us)
"""


def _hold_in_child(run: Path, tmp_path: Path) -> subprocess.Popen:
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run), str(ready)], stdin=subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not ready.exists():  # wait on state, not on a fixed time
        assert child.poll() is None, "the lock holder exited early"
        assert time.monotonic() < deadline, "the lock holder never took the lock"
        time.sleep(0.02)
    return child


def test_lock_is_exclusive_named_and_released(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with rf.run_lock(run):
        with pytest.raises(rf.RunLockedError, match=f"being trained by process {os.getpid()}") as err, rf.run_lock(run):
            pass
        assert isinstance(err.value, ConfigError) and err.value.pid == os.getpid()
    with rf.run_lock(run):  # released at the end of the block
        pass
    with pytest.raises(RuntimeError), rf.run_lock(run):
        raise RuntimeError("crash inside")
    with rf.run_lock(run):  # released on errors too
        pass
    with rf.run_lock(run, enabled=False), rf.run_lock(run, enabled=False):
        pass  # DDP ranks > 0: no-op
    rf.prepare_new_run(run)  # a lone lock file does not make the folder "used"


def test_second_trainer_and_live_resume_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / rf.CONFIG_NAME).write_text(json.dumps({"config": TrainConfig(data=str(tmp_path / "data")).to_dict()}))
    child = _hold_in_child(run, tmp_path)
    try:
        with pytest.raises(rf.RunLockedError, match=f"being trained by process {child.pid}"):
            train(None, run, resume=True)
        with pytest.raises(rf.RunLockedError, match=f"process {child.pid}"), rf.run_lock(run):
            pass
        # the refused trainer wrote nothing into the live run
        assert sorted(p.name for p in run.iterdir()) == [rf.LOCK_NAME, rf.CONFIG_NAME]
    finally:
        child.kill()
        child.wait()
    with rf.run_lock(run):  # the OS released the lock of the killed process
        pass


def test_mil_training_takes_the_lock(tmp_path: Path) -> None:
    run = tmp_path / "mil_run"
    mil = MILTrainConfig(manifest=str(tmp_path / "m.csv"), features_dir=str(tmp_path / "f"))
    with rf.run_lock(run), pytest.raises(rf.RunLockedError):
        train_mil(mil, run)
    assert sorted(p.name for p in run.iterdir()) == [rf.LOCK_NAME]


def test_liveness_never_signals_on_windows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # os.kill(pid, 0) on Windows sends Ctrl+C: the run-folder check must use the one helper
    def no_kill(*_: object) -> None:
        raise AssertionError("os.kill called")

    asked: list[int] = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", no_kill)
    monkeypatch.setattr(engine.procs, "_win_pid_alive", lambda pid: asked.append(pid) or True)
    rf.write_state(tmp_path, "running")
    state = json.loads((tmp_path / rf.STATE_NAME).read_text())
    state["pid"] = os.getpid() + 1
    (tmp_path / rf.STATE_NAME).write_text(json.dumps(state))
    assert rf.is_running(tmp_path) and asked == [os.getpid() + 1]
