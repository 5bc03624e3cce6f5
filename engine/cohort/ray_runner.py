"""Running a cohort as Ray tasks: one task per slide (``--ray auto|ADDRESS``).

Each slide is one Ray task that declares its CPUs (and a GPU for ``--device cuda``) and calls
the same per-slide function (:mod:`engine.cohort.tasks`) as the single-process loop. Results go
straight from the worker to the output folder, written atomically, so that folder must be on
storage every node sees. Ray retries a slide whose worker died (or that raised an unexpected
exception) up to ``max_retries`` times; after that the slide is reported as failed and the
others go on. Workers report tile progress to a small actor that the driver polls for its
progress bar. Cancel (or Ctrl+C) raises the cohort's cancel flag, which every slide task polls;
tasks still running after a grace period are cancelled with their workers killed.

``ray`` is imported inside these functions only: without ``--ray`` nothing imports it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.cohort.tasks import SlideOutcome, unexpected_outcome
from engine.errors import Cancelled, ConfigError
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, report

INSTALL_HINT = "install the distributed extra: pip install -e '.[distributed]'"
#: seconds between two progress reports of a worker, and between two polls of the driver
PROGRESS_INTERVAL_S = 0.5
#: seconds a cancelled cohort's running slides get to stop by themselves before their workers are killed
CANCEL_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class RaySettings:
    """Where and how a cohort runs on Ray.

    Attributes:
        address: ``auto`` (the cluster this machine belongs to: ``RAY_ADDRESS`` or a ``ray start``
            on it, else a new local one) or a head node's ``HOST:PORT`` / ``ray://HOST:PORT``.
        cpus: CPUs one slide task declares (also its onnxruntime and tile-reading threads).
        gpus: GPUs one slide task declares (1 with ``--device cuda``).
        max_retries: how often a slide whose worker died or failed unexpectedly is retried.
    """

    address: str = "auto"
    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise ConfigError("--ray needs 'auto' or a head node address HOST:PORT")
        if not (math.isfinite(self.cpus) and self.cpus > 0):
            raise ConfigError(f"--ray-cpus must be a positive number of CPUs per slide, got {self.cpus:g}")
        if not (math.isfinite(self.gpus) and self.gpus >= 0):
            raise ConfigError(f"GPUs per slide must be >= 0, got {self.gpus:g}")
        if self.max_retries < 0:
            raise ConfigError(f"--ray-retries must be >= 0, got {self.max_retries}")

    @property
    def threads(self) -> int:
        """Threads one slide may use: its declared CPUs, at least one."""
        return max(1, int(self.cpus))


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (names the extra that installs it).
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(settings: RaySettings) -> bool:
    """Join (or start) the Ray cluster; True when this call did, so the caller shuts it down.

    Raises:
        ConfigError: Ray is missing or the cluster cannot be reached.
    """
    import logging

    ray = import_ray()
    if ray.is_initialized():
        return False
    address = None if settings.address == "auto" else settings.address
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "a local Ray cluster" if address is None else f"the Ray cluster at {address}"
        raise ConfigError(f"cannot connect to {where}: {' '.join(str(exc).split())}") from exc
    return True


class _Board:
    """Actor: the tile progress of the slides running now (label -> (step, total)) and the
    cohort's cancel flag, which the slide tasks poll."""

    def __init__(self) -> None:
        self.running: dict[str, tuple[int, int]] = {}
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        return self.cancelled

    def update(self, label: str, step: int, total: int) -> None:
        self.running[label] = (step, total)

    def finish(self, label: str) -> None:
        self.running.pop(label, None)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return dict(self.running)


class _BoardProgress:
    """A worker's progress callback: forwards tile steps to the board at most every half second."""

    def __init__(self, board: Any, label: str) -> None:
        self.board, self.label, self.last = board, label, 0.0

    def __call__(self, ev: ProgressEvent) -> None:
        now = time.monotonic()
        final = ev.total is not None and ev.step >= ev.total
        if ev.total and (final or now - self.last >= PROGRESS_INTERVAL_S):
            self.last = now
            self.board.update.remote(self.label, int(ev.step), int(ev.total))


class _BoardCancel(CancelToken):
    """A worker's cancel token: set once the driver raised the board's cancel flag (polled at most
    every :data:`PROGRESS_INTERVAL_S`; a board that no longer answers means the cohort is over)."""

    __slots__ = ("board", "last")

    def __init__(self, board: Any) -> None:
        super().__init__()
        self.board, self.last = board, -math.inf

    @property
    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._event.is_set() and now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            import ray

            try:
                if ray.get(self.board.is_cancelled.remote(), timeout=PROGRESS_INTERVAL_S * 4):
                    self._event.set()
            except ray.exceptions.GetTimeoutError:
                pass  # a busy board: ask again later
            except ray.exceptions.RayError:
                self._event.set()  # the driver is gone or killed the board
        return self._event.is_set()


def _run_slide(fn: Callable[..., SlideOutcome], job: Any, item: Any, label: str, board: Any) -> SlideOutcome | None:
    """The body of one slide task on a worker; None when the cohort was cancelled before or
    during this slide (nothing of it is written: results are written atomically)."""
    cancel = _BoardCancel(board)
    try:
        if cancel.cancelled:
            return None
        return fn(job, item, progress=_BoardProgress(board, label), cancel=cancel)
    except Cancelled:
        return None
    finally:
        board.finish.remote(label)


def run_on_ray(
    fn: Callable[..., SlideOutcome],
    job: Any,
    items: Sequence[Any],
    labels: Sequence[str],
    settings: RaySettings,
    on_outcome: Callable[[int, SlideOutcome], None],
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> None:
    """Run ``fn(job, item)`` for every item as one Ray task each.

    Args:
        fn: a per-slide function of :mod:`engine.cohort.tasks` (importable on the workers).
        job: the shared, picklable job (sent to the cluster once).
        items: one per slide; ``labels``: how each is named in messages.
        settings: cluster address and per-slide resources.
        on_outcome: called on the driver with ``(index, outcome)`` as each slide finishes
            (in completion order); a slide that failed after its retries gets an
            ``unexpected`` outcome.
        progress: ``ProgressEvent("slides", finished, n, "k running, t/T tiles")``.
        cancel: checked twice a second; when set, the unfinished tasks are cancelled.

    Raises:
        Cancelled: ``cancel`` was set (finished slides are kept; run again to resume).
        KeyboardInterrupt: Ctrl+C (the unfinished tasks are cancelled first).
        ConfigError: Ray is missing or the cluster cannot be reached.
    """
    ray = import_ray()
    started = connect(settings)
    board = None
    pending: dict[Any, tuple[int, str]] = {}
    try:
        _check_resources(ray, settings)
        board = ray.remote(num_cpus=0)(_Board).remote()
        task = ray.remote(_run_slide).options(
            num_cpus=settings.cpus, num_gpus=settings.gpus, max_retries=settings.max_retries, retry_exceptions=True,
        )
        job_ref = ray.put(job)
        for i, (item, label) in enumerate(zip(items, labels, strict=True)):
            pending[task.remote(fn, job_ref, item, label, board)] = (i, label)
        _collect(ray, pending, board, len(items), settings, on_outcome, progress, cancel)
    except BaseException:
        _cancel_all(ray, board, list(pending))  # Cancel, Ctrl+C or a driver error: stop the cohort
        raise
    finally:
        if board is not None:
            ray.kill(board)
        if started:
            ray.shutdown()


def _cancel_all(ray: Any, board: Any, refs: list[Any]) -> None:
    """Stop every unfinished slide task.

    The board's cancel flag goes up first: a running slide stops at its next tile batch (it writes
    nothing: results are written atomically) and a queued one returns as soon as it starts. Only
    the tasks still unfinished after :data:`CANCEL_GRACE_S` are cancelled by Ray, with their
    workers killed. Ray's own soft cancel is not used: it raises KeyboardInterrupt wherever the
    worker is, which can be half-way through an import and leave that worker unable to import the
    module again for the next cohort.
    """
    if not refs:
        return
    if board is not None:
        board.cancel.remote()
        try:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
        except Exception:  # noqa: BLE001 - the cluster went away: nothing left to stop
            return
    for ref in refs:
        ray.cancel(ref, force=True)


def _check_resources(ray: Any, settings: RaySettings) -> None:
    """A slide task the cluster can never place would wait forever: say so instead.

    Raises:
        ConfigError: no node has the CPUs (or the GPU) one slide declares.
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= settings.cpus and r.get("GPU", 0) >= settings.gpus for r in nodes):
        return
    most_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    if settings.gpus and not any(r.get("GPU", 0) >= settings.gpus for r in nodes):
        raise ConfigError("--device cuda: no node of the Ray cluster has a GPU (use --device cpu or auto)")
    raise ConfigError(
        f"--ray-cpus {settings.cpus:g}: no node of the Ray cluster has that many CPUs (the largest has {most_cpus:g})"
    )


def _collect(
    ray: Any, pending: dict[Any, tuple[int, str]], board: Any, n: int, settings: RaySettings,
    on_outcome: Callable[[int, SlideOutcome], None], progress: ProgressCallback | None, cancel: CancelToken | None,
) -> None:
    """Wait for the tasks in ``pending`` (removing each as it finishes), reporting progress."""
    finished = 0
    report(progress, ProgressEvent("slides", 0, n, f"{n} slide(s) sent to Ray"))
    while pending:
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled by user")
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=PROGRESS_INTERVAL_S)
        for ref in ready:
            i, label = pending.pop(ref)
            board.finish.remote(label)  # a worker that died could not say so
            on_outcome(i, _outcome(ray, ref, label, settings))
            finished += 1
        report(progress, ProgressEvent("slides", finished, n, _running_text(ray, board) if pending else ""))


def _outcome(ray: Any, ref: Any, label: str, settings: RaySettings) -> SlideOutcome:
    """The finished task's outcome, or an ``unexpected`` one when it failed after its retries."""
    from ray.exceptions import RayError, RayTaskError

    tries = f"{settings.max_retries + 1} attempt(s)"
    try:
        return ray.get(ref)
    except RayTaskError as exc:  # the per-slide function raised on every attempt
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return unexpected_outcome(label, f"{type(cause).__name__}: {cause}; {tries}")
    except RayError as exc:  # the worker (or its node) died on every attempt
        return unexpected_outcome(label, f"worker died: {type(exc).__name__}; {tries}")


def _running_text(ray: Any, board: Any) -> str:
    """``2 running, 1200/5400 tiles`` from the board (empty when it does not answer in time)."""
    from ray.exceptions import GetTimeoutError

    try:
        running = ray.get(board.snapshot.remote(), timeout=PROGRESS_INTERVAL_S * 4)
    except GetTimeoutError:
        return ""
    step = sum(s for s, _ in running.values())
    total = sum(t for _, t in running.values())
    return f"{len(running)} running, {step}/{total} tiles" if running else ""
