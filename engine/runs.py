"""Training runs as seen from outside: list them, follow their events, start, stop and resume them.

A training run is a folder written by ``metascope train patches --out RUN_DIR``: ``config.json``,
``events.jsonl`` (one JSON object per line), ``state.json`` (status and pid of the training
process) and checkpoints. The app is a client of that folder, like a user with a terminal:

* :func:`spawn_training` starts the CLI in its own process (a GUI crash never kills a run). The
  trainer refuses a non-empty folder for a new run, so what the app adds (the exact command in
  ``command.json``, the process output in ``train.log``, the requested configuration) lives in a
  sibling folder ``RUN_DIR.launch/`` (see :func:`launch_dir`).
* :class:`EventFollower` reads ``events.jsonl`` incrementally (only the bytes added since the
  last read; a line still being written is kept for the next read).
* :class:`RunHistory` folds events into what a progress view shows (loss curve, validation
  metrics per epoch, ETA, throughput, device).
* :func:`request_stop` asks the run to stop at its next step (a ``STOP`` file the trainer checks);
  :func:`run_info` tells a live run from a crashed one (status ``running`` but the pid is gone).

Nothing here imports Qt or torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, OutputError
from engine.fileio import atomic_write_json
from engine.paths import runs_dir
from engine.procs import pid_alive

# following events lives in engine.run_history; re-exported because the views import it from here
from engine.run_history import (  # noqa: F401
    EVENTS_NAME,
    EventFollower,
    RunHistory,
    event_kind,
)

# evaluate_run lives with patch training; re-exported because the run views import it from here
from engine.train.run_evaluation import EVALUATION_NAME, evaluate_run  # noqa: F401

STATE_NAME = "state.json"
CONFIG_NAME = "config.json"
COMMAND_NAME = "command.json"
LOG_NAME = "train.log"
STOP_NAME = "STOP"
REQUEST_NAME = "request.json"
LAUNCH_SUFFIX = ".launch"

#: Statuses a run can be in. ``starting``: spawned, the trainer has not written its state yet;
#: ``crashed``: the state says running/starting but the process is gone.
ACTIVE_STATES = ("starting", "running", "stopping")
FINAL_STATES = ("finished", "failed", "cancelled", "crashed")


# -- processes -------------------------------------------------------------------------------------
def project_root() -> Path:
    """Folder holding ``main.py`` when running from source."""
    return Path(__file__).resolve().parent.parent


def launch_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``RUN_DIR.launch/``: the app's files about a run (command, process output, request)."""
    run = Path(run_dir)
    return run.with_name(run.name + LAUNCH_SUFFIX)


def cli_command(args: Sequence[str]) -> list[str]:
    """The argv that runs ``metascope ARGS`` with this interpreter (or this frozen bundle)."""
    if getattr(sys, "frozen", False):
        # a PyInstaller bundle's executable is the app itself; main() dispatches on the command
        return [sys.executable, *args]
    return [sys.executable, "-m", "main", *args]


def train_args(
    run_dir: str | os.PathLike[str], config: Mapping[str, Any] | None = None, resume: bool = False
) -> list[str]:
    """CLI arguments of ``metascope train patches`` for a run folder.

    A new run passes its configuration as ``--config CONFIG.json`` (the wizard's ``TrainConfig``
    written next to the run); a resumed run passes ``--resume`` and the trainer reads the
    configuration it saved in the run folder.

    Args:
        run_dir: the run folder (created by the trainer).
        config: ``TrainConfig.to_dict()`` for a new run; ``None`` with ``resume=True``.
        resume: continue from the last checkpoint in ``run_dir``.
    """
    run = Path(run_dir)
    if resume:
        return resume_args(run)
    if config is None:
        raise ConfigError("a new training run needs a configuration")
    request = launch_dir(run) / REQUEST_NAME
    atomic_write_json(request, dict(config))
    return ["train", "patches", "--config", str(request), "--out", str(run)]


#: ``config.json`` "kind" of a run folder -> its ``metascope train`` sub-command (patch runs write no kind).
TRAIN_COMMANDS = {"patches": "patches", "mil": "mil", "genomics": "genomics", "siamese": "siamese", "wgan": "wgan"}


def resume_args(run_dir: str | os.PathLike[str]) -> list[str]:
    """CLI arguments that continue ``run_dir`` from its last checkpoint, whatever its kind.

    The command that started the run (``command.json`` "args", written by :func:`spawn_training`)
    is repeated with ``--resume``; a run started elsewhere gets ``train KIND --out RUN --resume``.
    """
    run = Path(run_dir)
    saved = _read_json(launch_dir(run) / COMMAND_NAME).get("args")
    if isinstance(saved, list) and len(saved) > 2 and saved[0] == "train" and all(isinstance(a, str) for a in saved):
        return [*saved, *([] if "--resume" in saved else ["--resume"])]
    kind = str(_read_json(run / CONFIG_NAME).get("kind") or "patches")
    return ["train", TRAIN_COMMANDS.get(kind, kind), "--out", str(run), "--resume"]


@dataclass(frozen=True, slots=True)
class SpawnedRun:
    """A training process started by :func:`spawn_training`."""

    run_dir: Path
    argv: tuple[str, ...]
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def spawn_training(run_dir: str | os.PathLike[str], args: Sequence[str]) -> SpawnedRun:
    """Start ``metascope ARGS`` as a detached process that outlives the app.

    The command is written to ``RUN_DIR.launch/command.json`` (argv, working folder, start time,
    pid) and the process's output is appended to ``RUN_DIR.launch/train.log``. The trainer creates
    ``RUN_DIR`` itself.

    Raises:
        OutputError: the folder cannot be written or the process cannot be started.
    """
    run = Path(run_dir)
    launch = launch_dir(run)
    try:
        launch.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {launch}: {exc.strerror or exc}") from exc
    argv = cli_command(args)
    env = os.environ.copy()
    if not getattr(sys, "frozen", False):
        root = str(project_root())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    kwargs: dict[str, Any] = {}
    if sys.platform.startswith("win"):
        # own process group (Ctrl+C in the app's console does not reach it), no console window
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True  # survives the app and its terminal closing
    (run / STOP_NAME).unlink(missing_ok=True)
    try:
        with open(launch / LOG_NAME, "ab") as log:
            log.write(f"\n$ {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                argv, cwd=str(launch), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kwargs
            )
    except OSError as exc:
        raise OutputError(f"cannot start training: {exc.strerror or exc}") from exc
    atomic_write_json(
        launch / COMMAND_NAME,
        {"argv": argv, "args": [str(a) for a in args], "cwd": str(launch), "pid": process.pid,
         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    )
    return SpawnedRun(run, tuple(argv), process)


def request_stop(run_dir: str | os.PathLike[str]) -> bool:
    """Ask a running trainer to stop at its next step, keeping its last checkpoint.

    Writes ``RUN_DIR/STOP``; the trainer checks for it between steps, saves, records a
    ``cancelled`` event and exits. Removed again by :func:`spawn_training` on resume.

    Returns:
        ``False`` when the trainer has not created its run folder yet (nothing to keep: the
        caller may terminate the process instead).
    """
    run = Path(run_dir)
    if not run.is_dir():
        return False
    try:
        (run / STOP_NAME).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot ask the run to stop ({run}): {exc.strerror or exc}") from exc
    return True


def stop_requested(run_dir: str | os.PathLike[str]) -> bool:
    """Whether :func:`request_stop` was called for this run (checked by the trainer)."""
    return (Path(run_dir) / STOP_NAME).exists()


# -- run folders -----------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run folder's state at one moment.

    Attributes:
        path: the run folder.
        status: one of :data:`ACTIVE_STATES` or :data:`FINAL_STATES`, or ``"unknown"``.
        pid: the training process id, if recorded.
        alive: whether that process is running now.
        config: the run's ``config.json`` (``TrainConfig.to_dict()``), empty if not written yet.
        message: the last error or state message.
        updated: modification time of the newest of state/events (seconds since the epoch).
        has_checkpoint: a checkpoint exists, so the run can be resumed.
        state: the raw ``state.json`` (epoch, epochs, best_val_auc, ...).
    """

    path: Path
    status: str
    pid: int | None
    alive: bool
    config: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    updated: float = 0.0
    has_checkpoint: bool = False
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES

    @property
    def resumable(self) -> bool:
        """Stopped or crashed runs with a checkpoint can continue where they left off."""
        return self.status in ("cancelled", "crashed", "failed") and self.has_checkpoint


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    if p.name.endswith(LAUNCH_SUFFIX):
        return False
    return (p.is_dir() and any((p / n).is_file() for n in (STATE_NAME, EVENTS_NAME, CONFIG_NAME))) or (
        launch_dir(p) / COMMAND_NAME
    ).is_file()


def run_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Read a run folder's state; a run whose process is gone without a final state is ``crashed``."""
    run = Path(run_dir)
    state = _read_json(run / STATE_NAME)
    command = _read_json(launch_dir(run) / COMMAND_NAME)
    status = str(state.get("status", "")) or ("starting" if command else "unknown")
    pid_raw = state.get("pid") or command.get("pid")
    try:
        pid = int(pid_raw) if pid_raw is not None else None
    except (TypeError, ValueError):
        pid = None
    alive = pid_alive(pid)
    if status == "stopping" and not alive:
        status = "cancelled" if _last_event_kind(run) == "cancelled" else "crashed"
    elif status in ("starting", "running") and not alive:
        status = "crashed"
    elif status == "running" and stop_requested(run):
        status = "stopping"
    message = str(state.get("message") or state.get("error") or "")
    if status == "crashed" and not message:
        message = _last_log_line(run) or "the training process ended unexpectedly"
    files = (run / STATE_NAME, run / EVENTS_NAME, launch_dir(run) / COMMAND_NAME)
    mtimes = [p.stat().st_mtime for p in files if p.is_file()]
    return RunInfo(
        path=run,
        status=status,
        pid=pid,
        alive=alive,
        config=_read_json(run / CONFIG_NAME),
        message=message,
        updated=max(mtimes) if mtimes else 0.0,
        # torch checkpoints, or pickled ones (the genomics boosted trees)
        has_checkpoint=any(run.glob("*.pt")) or any(run.glob("checkpoints/*.pt")) or any(run.glob("checkpoints/*.pkl")),
        state=state,
    )


def list_runs(parent: str | os.PathLike[str] | None = None) -> list[RunInfo]:
    """All run folders under ``parent`` (default :func:`engine.paths.runs_dir`), newest first."""
    base = Path(parent) if parent is not None else runs_dir()
    if not base.is_dir():
        return []
    names = {p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")}
    # a run whose trainer has not created its folder yet only has its launch folder
    names |= {n[: -len(LAUNCH_SUFFIX)] for n in names if n.endswith(LAUNCH_SUFFIX)}
    runs = [run_info(base / n) for n in sorted(names) if is_run_dir(base / n)]
    return sorted(runs, key=lambda r: r.updated, reverse=True)


def new_run_dir(name: str, parent: str | os.PathLike[str] | None = None) -> Path:
    """A fresh, not yet existing run folder ``PARENT/YYYYmmdd-HHMMSS-NAME`` (not created)."""
    base = Path(parent) if parent is not None else runs_dir()
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "run"
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    candidate = base / stem
    n = 2
    while candidate.exists() or launch_dir(candidate).exists():
        candidate = base / f"{stem}-{n}"
        n += 1
    return candidate


def _last_log_line(run: Path, max_bytes: int = 8192) -> str:
    """The last ``error: ...`` line of the run's log (or its last non-empty line)."""
    log = launch_dir(run) / LOG_NAME
    if not log.is_file():
        return ""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - max_bytes))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else ""


def log_tail(run_dir: str | os.PathLike[str], lines: int = 40) -> str:
    """The last ``lines`` lines of the run's ``train.log`` (for showing why a run failed)."""
    log = launch_dir(run_dir) / LOG_NAME
    if not log.is_file():
        return ""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _last_event_kind(run: Path) -> str:
    events = run / EVENTS_NAME
    if not events.is_file():
        return ""
    try:
        with open(events, "rb") as fh:
            fh.seek(max(0, events.stat().st_size - 4096))
            tail = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(tail):
        try:
            return event_kind(json.loads(line))
        except ValueError:
            continue
    return ""


class StopFileWatcher:
    """Sets a :class:`~engine.jobs.CancelToken` when ``RUN_DIR/STOP`` appears (see :func:`request_stop`).

    The trainer checks its token every step, so a run started by the app stops at its next step,
    keeps its last checkpoint and records ``cancelled``. Use around ``train(...)`` in the CLI::

        with StopFileWatcher(run_dir, cancel):
            train(cfg, run_dir, cancel=cancel)

    A STOP file left from an earlier request is removed on entry (a resumed run must not stop at
    once). Polls every ``interval_s`` seconds on a daemon thread.
    """

    def __init__(self, run_dir: str | os.PathLike[str], cancel: Any, interval_s: float = 0.5) -> None:
        import threading

        self.path = Path(run_dir) / STOP_NAME
        self.cancel = cancel
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="metascope-stop-file", daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(self.interval_s):
            if self.path.exists():
                self.cancel.cancel()
                return

    def __enter__(self) -> StopFileWatcher:
        self.path.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=2.0)
        # the request is served: a later resume must not see it
        self.path.unlink(missing_ok=True)


# -- evaluation of a finished run ------------------------------------------------------------------
def load_evaluation(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The saved :func:`evaluate_run` result, if it belongs to the run's current best model."""
    run = Path(run_dir)
    data = _read_json(run / EVALUATION_NAME)
    model = run / str(data.get("model_file", ""))
    if not data or not model.is_file() or model.stat().st_mtime_ns != data.get("model_mtime_ns"):
        return None
    return data
