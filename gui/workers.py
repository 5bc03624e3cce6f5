"""Background work for the GUI: a thread worker and a process worker with the same signals.

:class:`Worker` runs an engine function on a QThreadPool thread: right for short jobs and I/O
(listing models, exporting, reading a cache). :class:`ProcessWorker` runs it in a spawned child
process: right for heavy compute (heatmaps, slide-level prediction), whose NumPy/SciPy/Python
work would otherwise hold the GIL for tens of milliseconds at a time and stall the GUI thread.

In both, the engine's callbacks only emit signals and widgets change in slots on the GUI thread;
progress is throttled to about ten updates a second.
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from engine.errors import Cancelled, MetaScopeError
from engine.jobs import CancelToken, ProgressEvent, Throttle
from gui.process_job import CANCELLED, FAILED, FINISHED, PARTIAL, PROGRESS, child_main, progress_event

# A cancelled child normally stops at its next batch; one stuck in a long native call is ended.
CANCEL_GRACE_S = 10.0
# CPU priority decrease of compute children: the GUI thread and tile reads win a contended core
# at once, while an otherwise idle machine still gives the child all its cores.
BACKGROUND_NICE = 5


class WorkerSignals(QObject):
    """Signals of a :class:`Worker` (a QRunnable cannot carry signals itself)."""

    started = Signal()
    progress = Signal(object)  # ProgressEvent
    partial = Signal(object)  # intermediate result chunk, e.g. one heatmap batch
    finished = Signal(object)  # the function's return value
    failed = Signal(str, bool, str)  # message, is a user error (MetaScopeError), traceback text
    cancelled = Signal()


class Worker(QRunnable):
    """Run ``fn(*args, progress=..., cancel=..., partial=..., **kwargs)`` on a pool thread.

    ``fn`` receives a throttled progress callback, a :class:`CancelToken`, and a ``partial``
    callback for intermediate results (never throttled: each chunk is data, not a status).
    Exactly one of ``finished``, ``failed`` or ``cancelled`` is emitted at the end.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, progress_interval_s: float = 0.1, **kwargs: Any) -> None:
        super().__init__()
        # the pool must not delete the runnable while a Python owner still references it
        self.setAutoDelete(False)
        self.signals = WorkerSignals()
        self.cancel_token = CancelToken()
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._throttle = Throttle(self._emit_progress, interval_s=progress_interval_s)
        self.done = False

    def _emit_progress(self, event: ProgressEvent) -> None:
        self.signals.progress.emit(event)

    def _emit_partial(self, chunk: Any) -> None:
        self.signals.partial.emit(chunk)

    def cancel(self) -> None:
        """Ask the function to stop at its next progress/cancel check."""
        self.cancel_token.cancel()

    def run(self) -> None:
        self.signals.started.emit()
        try:
            result = self._fn(
                *self._args,
                progress=self._throttle,
                cancel=self.cancel_token,
                partial=self._emit_partial,
                **self._kwargs,
            )
        except Cancelled:
            self.done = True
            self.signals.cancelled.emit()
            return
        except MetaScopeError as exc:
            self.done = True
            self.signals.failed.emit(str(exc), True, traceback.format_exc())
            return
        except Exception as exc:  # noqa: BLE001 - any bug must reach the user as a dialog, not kill the thread
            self.done = True
            self.signals.failed.emit(f"{type(exc).__name__}: {exc}", False, traceback.format_exc())
            return
        # a run that completed is complete even if Cancel was pressed during its last moments
        self.done = True
        self.signals.finished.emit(result)


def start_worker(worker: Worker, pool: QThreadPool | None = None) -> Worker:
    """Start ``worker`` on ``pool`` (the global pool by default) and return it."""
    (pool or QThreadPool.globalInstance()).start(worker)
    return worker


class ProcessWorker:
    """Run ``fn(*args, progress=..., cancel=..., partial=..., **kwargs)`` in a child process.

    The same contract and signals as :class:`Worker` (``signals.started``, ``progress``,
    ``partial``, then exactly one of ``finished``, ``failed``, ``cancelled``), so a view can use
    either. ``fn`` and its arguments must be picklable (a module-level function of a Qt-free
    module): the child is started with the ``spawn`` method and imports only what ``fn`` needs.
    A thread of this process waits on the child's pipe (blocked in the OS, not holding the GIL)
    and turns its messages into queued signals.

    The child runs at a lower CPU priority (``nice``). Cancel sets a shared event that ``fn``
    sees at its next per-batch check; a child that has not stopped ``cancel_grace_s`` later is
    terminated. A child that dies without a word (killed,
    crashed) is reported through ``failed``.

    Deliberately not a QObject: only the sender-only :class:`WorkerSignals` is shared with the
    reader thread, so no Qt object with timers or children is ever destroyed on that thread.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, progress_interval_s: float = 0.1,
                 cancel_grace_s: float = CANCEL_GRACE_S, nice: int = BACKGROUND_NICE, **kwargs: Any) -> None:
        self.signals = WorkerSignals()
        self._nice = nice
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._interval = progress_interval_s
        self._grace_s = cancel_grace_s
        self._proc: Any = None
        self._cancel_event: Any = None
        self._cancel_requested = False
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._done = threading.Event()
        self._terminate_timer: threading.Timer | None = None

    @property
    def done(self) -> bool:
        """True once the child has ended and its outcome signal was emitted."""
        return self._done.is_set()

    @property
    def pid(self) -> int | None:
        """Process id of the child (None until it has started)."""
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def start(self) -> ProcessWorker:
        """Start the child process (from a helper thread) and read its messages there.

        Creating the pipe and event (whose first use starts multiprocessing's resource tracker)
        and forking the child take tens of milliseconds: none of it happens on the GUI thread.
        """
        self.signals.started.emit()
        self._reader = threading.Thread(target=self._launch, name="metascope-job-reader", daemon=True)
        self._reader.start()
        return self

    def _launch(self) -> None:
        """Helper thread: start the child, then forward its messages until it ends."""
        try:
            ctx = multiprocessing.get_context("spawn")
            receiver, sender = ctx.Pipe(duplex=False)
            cancel_event = ctx.Event()
            proc = ctx.Process(
                target=child_main,
                args=(sender, cancel_event, self._fn, self._args, self._kwargs, self._interval, self._nice),
                name="metascope-job",
                daemon=True,  # never outlives the app
            )
            proc.start()
        except Exception as exc:  # noqa: BLE001 - e.g. out of processes or memory: tell the user
            self._done.set()
            self.signals.failed.emit(f"Cannot start the background computation ({type(exc).__name__}: {exc})",
                                     False, traceback.format_exc())
            return
        sender.close()  # the child now holds the only write end: its exit ends recv() with EOFError
        with self._lock:
            self._proc, self._cancel_event = proc, cancel_event
            if self._cancel_requested:
                cancel_event.set()
        _read_child(receiver, proc, cancel_event, self.signals, self._done)

    def cancel(self) -> None:
        """Ask the child to stop at its next cancel check (terminated after the grace period)."""
        if self._reader is None or self.done:
            return
        with self._lock:
            self._cancel_requested = True
            if self._cancel_event is not None:
                self._cancel_event.set()
        if self._terminate_timer is None:
            self._terminate_timer = threading.Timer(self._grace_s, self._terminate)
            self._terminate_timer.daemon = True
            self._terminate_timer.start()

    def wait(self, timeout_s: float = CANCEL_GRACE_S) -> bool:
        """Block until the child has exited and its outcome was signalled; True when it has.

        A child still running after ``timeout_s`` is terminated.
        """
        if self._reader is None:
            return True
        self._reader.join(timeout_s)
        if self._reader.is_alive():
            self._terminate()
            self._reader.join(5.0)
        if self._terminate_timer is not None:
            self._terminate_timer.cancel()
        return not self._reader.is_alive()

    def _terminate(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None and proc.is_alive():
            proc.terminate()


def _read_child(conn: Any, proc: Any, cancel_event: Any, signals: WorkerSignals, done: threading.Event) -> None:
    """Reader thread of a :class:`ProcessWorker`: forward the child's messages as signals."""
    terminal: tuple[Any, ...] | None = None
    try:
        while terminal is None:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the child exited (or was terminated) without a terminal message
            except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled here
                terminal = (FAILED, f"the result could not be read ({type(exc).__name__}: {exc})", False,
                            traceback.format_exc())
                break
            kind = msg[0]
            if kind == PROGRESS:
                signals.progress.emit(progress_event(msg))
            elif kind == PARTIAL:
                signals.partial.emit(msg[1])
            else:
                terminal = msg
    finally:
        conn.close()
    proc.join(CANCEL_GRACE_S)
    if proc.is_alive():
        proc.terminate()
        proc.join(5.0)
    done.set()
    if terminal is None:
        if cancel_event.is_set():
            signals.cancelled.emit()
        else:
            signals.failed.emit(
                f"The background computation stopped unexpectedly (exit code {proc.exitcode}). "
                "The computer may have run out of memory.", False, "")
    elif terminal[0] == FINISHED:
        signals.finished.emit(terminal[1])
    elif terminal[0] == CANCELLED:
        signals.cancelled.emit()
    else:
        signals.failed.emit(str(terminal[1]), bool(terminal[2]), str(terminal[3]))
