"""The run folder: ``config.json``, ``events.jsonl``, ``state.json``, ``checkpoint.pt``, ``best.pt``.

The GUI follows a run only through these files (training runs in its own process), so they are
the contract: events are appended one JSON object per line (written in a single ``write`` so a
reader never sees half a line), every other file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import Cancelled, ConfigError, MetaScopeError
from engine.fileio import atomic_path, atomic_write_json, json_default
from engine.procs import pid_alive

CONFIG_NAME = "config.json"
EVENTS_NAME = "events.jsonl"
STATE_NAME = "state.json"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
#: held (OS file lock) by the process training into the folder, for the whole run
LOCK_NAME = ".lock"

EVENT_TYPES = (
    "run_started", "resumed", "data_checked", "epoch_started", "step", "epoch_ended", "checkpoint",
    "best", "early_stop", "cancelled", "finished", "failed",
)
STATUSES = ("running", "cancelled", "finished", "failed")


class RunFolderError(MetaScopeError):
    """A run folder cannot be used (exists and is not resumable, still running, damaged)."""


class RunLockedError(RunFolderError, ConfigError):
    """Another live process holds the run folder's lock (it is training into it).

    Attributes:
        pid: that process's id when it recorded one, else ``None``.
    """

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


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


class RunLog:
    """A run's event log and ``state.json`` for trainers that log every batch: ``step`` events are
    thinned to about one a second (the last step of an epoch is always written). Used by the MIL,
    genomics and one-shot expression trainers."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self._log = EventLog(run)
        self._last = 0.0

    def event(self, kind: str, **payload: Any) -> None:
        self._log.write(kind, **payload)

    def step(self, **payload: Any) -> None:
        now = time.monotonic()
        if now - self._last >= 1.0 or payload.get("step") == payload.get("steps"):
            self._last = now
            self._log.write("step", **payload)

    def state(self, status: str, **payload: Any) -> None:
        write_state(self.run, status, **payload)


@contextlib.contextmanager
def recorded_outcome(log: EventLog | RunLog, run: Path) -> Iterator[None]:
    """Record how a run ended when it did not finish: ``cancelled`` (resumable) or ``failed`` with
    the error's one-line message, as an event and in ``state.json``; the exception goes on."""
    write = log.event if isinstance(log, RunLog) else log.write
    try:
        yield
    except Cancelled:
        write("cancelled", message=CANCELLED_MESSAGE)
        write_state(run, "cancelled", message=CANCELLED_MESSAGE)
        raise
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        write("failed", message=msg)
        write_state(run, "failed", message=msg)
        raise


CANCELLED_MESSAGE = "stopped by user; resume with --resume"


def read_state(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    p = Path(run_dir) / STATE_NAME
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_running(run_dir: str | os.PathLike[str]) -> bool:
    """Whether another live process on this machine is training into ``run_dir``."""
    st = read_state(run_dir)
    if not st or st.get("status") != "running":
        return False
    pid = st.get("pid")
    if st.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    return pid_alive(pid)


# -- the run lock ---------------------------------------------------------------------------------

# byte the Windows lock covers: past the pid text, so other processes can still read who holds it
_WIN_LOCK_OFFSET = 1 << 20


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; ``False`` when another holder has it."""
    if sys.platform.startswith("win"):
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        if exc.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
            return True  # a file system without locks (some network shares): run unlocked
        raise
    return True


def _unlock(fd: int) -> None:
    if sys.platform.startswith("win"):
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)


def lock_holder(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid recorded in ``RUN_DIR/.lock`` (the last process that held it), or ``None``."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8").strip()
        pid = json.loads(text).get("pid") if text else None
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str], enabled: bool = True) -> Iterator[None]:
    """Hold an OS lock on ``RUN_DIR/.lock`` while the block runs: no two processes train into
    one run folder (a second trainer, or ``--resume`` of a live run, is refused).

    The lock is the operating system's (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on
    Windows), so it is released when the holder exits or dies, whatever happened; the file
    itself stays (it records the last holder's pid and host). Use it in every trainer::

        with run_lock(run_dir):
            ...  # write config, events, checkpoints

    Args:
        run_dir: the run folder (created if missing).
        enabled: ``False`` makes this a no-op (DDP ranks other than 0 share rank 0's lock).

    Raises:
        RunLockedError: another live process holds the lock.
        OutputError: the lock file cannot be created.
    """
    if not enabled:
        yield
        return
    from engine.errors import OutputError

    run = Path(run_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
        fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot lock run folder {run}: {exc.strerror or exc}") from exc
    try:
        if not _try_lock(fd):
            pid = lock_holder(run)
            who = f"process {pid}" if pid else "another process"
            raise RunLockedError(
                f"run {run} is being trained by {who}; stop it (or wait for it to finish) before "
                "training or resuming into this folder",
                pid,
            )
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def prepare_new_run(run_dir: Path) -> None:
    """Create ``run_dir`` for a new run; refuse a folder that already holds anything.

    Raises:
        RunFolderError: the folder exists and is not empty.
    """
    if run_dir.exists():
        if not run_dir.is_dir():
            raise RunFolderError(f"run folder {run_dir} exists and is a file")
        # a lone lock file is what a run that died before writing anything leaves behind
        content = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
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


_Config = TypeVar("_Config")


def resumable_folds(run: Path, folds: list[Any], train_fold: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fold's result: read from ``run/fold_<index>.json`` when an earlier session finished
    that fold (the fold trainer writes it last), else ``train_fold(fold)``."""
    results = []
    for fold in folds:
        done = run / f"fold_{fold.index}.json"
        results.append(json.loads(done.read_text(encoding="utf-8")) if done.is_file() else train_fold(fold))
    return results


def config_from_dict(
    cls: type[_Config], d: dict[str, Any], what: str, tuples: dict[str, Callable[[Any], Any]] | None = None
) -> _Config:
    """A training config dataclass from its stored ``dict``.

    Args:
        what: the kind of run in messages ("MIL", "genomics", ...).
        tuples: fields stored as JSON lists, each with the converter of its items.

    Raises:
        ConfigError: unknown settings, or values the dataclass rejects.
    """
    unknown = sorted(set(d) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown {what} training setting(s): {', '.join(unknown)}")
    kw = dict(d)
    for key, convert in (tuples or {}).items():
        if kw.get(key) is not None:
            kw[key] = tuple(convert(v) for v in kw[key])
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ConfigError(f"invalid {what} training config: {exc}") from exc


def load_kind_config(
    run: Path, kind: str, cls: type[_Config], what: str, tuples: dict[str, Callable[[Any], Any]] | None = None
) -> _Config:
    """The config of a run folder of one kind (``config.json``'s ``kind``), see :func:`config_from_dict`.

    Raises:
        RunFolderError / ConfigError: not a run folder, a run of another kind, bad settings.
    """
    d = load_run_config(run)
    if d.get("kind") != kind:
        raise ConfigError(f"{run} is a {d.get('kind') or 'patch'} training run, not a {what} run")
    return config_from_dict(cls, d["config"], what, tuples)


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
