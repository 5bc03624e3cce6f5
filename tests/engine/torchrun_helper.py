"""Run a patch-training config under ``torchrun --nproc_per_node=2`` (gloo on CPU) for DDP tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def train_with_torchrun(cfg: object, tmp_path: Path, out_name: str = "ddp") -> Path:
    """Train ``cfg`` (a ``TrainConfig``) with two torchrun processes into ``tmp_path / out_name``.

    Fails the test with torchrun's report and the last events rank 0 wrote when it does not exit 0.
    """
    from engine.train.runfolder import read_events

    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))  # type: ignore[attr-defined]
    run = tmp_path / out_name
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from engine.train import TrainConfig, train\n"
        f"cfg = TrainConfig.from_dict(json.load(open({str(tmp_path / 'cfg.json')!r})))\n"
        f"train(cfg, {str(run)!r})\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--standalone", str(script)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    if out.returncode != 0:  # say how far the run got (rank 0's events) beside torchrun's report
        try:
            reached = [e["event"] for e in read_events(run)[0]][-4:]
        except Exception as exc:  # diagnostics only: the failure below is what counts
            reached = [f"events unreadable: {exc}"]
        pytest.fail(f"torchrun exited {out.returncode}; last events {reached}\n{out.stderr[-3000:]}")
    return run
