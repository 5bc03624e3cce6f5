"""The run folder: ``config.json``, ``events.jsonl``, ``state.json``, ``checkpoint.pt``, ``best.pt``.

The GUI follows a run only through these files (training runs in its own process), so they are
the contract: events are appended one JSON object per line (written in a single ``write`` so a
reader never sees half a line), every other file is replaced atomically.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, MetaScopeError
from engine.fileio import atomic_path, atomic_write_json, json_default

CONFIG_NAME = "config.json"
EVENTS_NAME = "events.jsonl"
STATE_NAME = "state.json"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"

EVENT_TYPES = (
    "run_started", "resumed", "data_checked", "epoch_started", "step", "epoch_ended", "checkpoint",
    "best", "early_stop", "cancelled", "finished", "failed",
)
STATUSES = ("running", "cancelled", "finished", "failed")


class RunFolderError(MetaScopeError):
    """A run folder cannot be used (exists and is not resumable, still running, damaged)."""


class EventLog:
    """Appends events to ``events.jsonl``; a no-op on DDP ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = run_dir / EVENTS_NAME
        self.enabled = enabled

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        if self.enabled:
            line = json.dumps(rec, default=json_default, allow_nan=True) + "\n"
            # O_APPEND + one write: concurrent readers see whole lines only
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        return rec


def read_events(run_dir: str | os.PathLike[str], start: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events appended since byte ``start``; returns ``(events, next_start)`` for tailing.

    A trailing partial line (a writer mid-write) is left for the next call.
    """
    p = Path(run_dir) / EVENTS_NAME
    if not p.is_file():
        return [], start
    with open(p, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write on an unusual filesystem
    return events, start + end


def write_state(run_dir: Path, status: str, **fields: Any) -> None:
    """Replace ``state.json`` (status, pid, host, epoch, ...)."""
    atomic_write_json(
        run_dir / STATE_NAME,
        {"status": status, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(), **fields},
    )


def read_state(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    p = Path(run_dir) / STATE_NAME
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    # a zombie (killed, not yet reaped by its parent) is not running
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_running(run_dir: str | os.PathLike[str]) -> bool:
    """Whether another live process on this machine is training into ``run_dir``."""
    st = read_state(run_dir)
    if not st or st.get("status") != "running":
        return False
    pid = st.get("pid")
    if st.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    return _pid_alive(pid)


def prepare_new_run(run_dir: Path) -> None:
    """Create ``run_dir`` for a new run; refuse a folder that already holds anything.

    Raises:
        RunFolderError: the folder exists and is not empty.
    """
    if run_dir.exists():
        if not run_dir.is_dir():
            raise RunFolderError(f"run folder {run_dir} exists and is a file")
        content = sorted(p.name for p in run_dir.iterdir())
        if content:
            hint = " (it is a training run: use --resume to continue it)" if CONFIG_NAME in content else ""
            raise RunFolderError(
                f"run folder {run_dir} already exists and is not empty{hint}; choose a new folder"
            )
    from engine.fileio import ensure_writable_dir

    ensure_writable_dir(run_dir)


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of an existing run (raw dict).

    Raises:
        RunFolderError: no run there, or the file is damaged.
    """
    p = run_dir / CONFIG_NAME
    if not p.is_file():
        raise RunFolderError(f"{run_dir} is not a training run folder (no {CONFIG_NAME}); nothing to resume")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{p} is damaged: {exc}") from exc
    if not isinstance(d, dict) or "config" not in d:
        raise RunFolderError(f"{p} is not a MetaScope training config")
    return d


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` atomically (temporary name, fsync, rename)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by the trainer (tensors and plain containers only).

    Raises:
        ConfigError: missing or damaged file.
    """
    import pickle

    import torch

    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ConfigError(f"checkpoint {path} is damaged or not a MetaScope checkpoint: {str(exc)[:200]}") from exc
    if not isinstance(ck, dict) or "model" not in ck:
        raise ConfigError(f"{path} is not a MetaScope checkpoint")
    return ck
