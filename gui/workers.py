"""Background work for the GUI: one QRunnable-based worker with progress and cancel.

The engine function runs on a QThreadPool thread; its callbacks only emit signals, and widgets
change in slots on the GUI thread. Progress is throttled to about ten updates a second.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from engine.errors import Cancelled, MetaScopeError
from engine.jobs import CancelToken, ProgressEvent, Throttle


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
