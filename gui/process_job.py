"""The child-process side of background jobs (Qt-free: the child never imports PySide6).

Heavy engine work (tissue detection, tiling, preprocessing, inference) holds Python's GIL for
tens of milliseconds at a time; run on a thread of the GUI process it stalls painting and input.
:class:`gui.workers.ProcessWorker` therefore runs such a job in a child process started with the
``spawn`` method (the same in a frozen bundle, where ``main.py`` calls ``freeze_support()``), and
this module is what the child executes.

Protocol: the child sends tuples over a one-way pipe: ``("progress", stage, step, total, message,
metrics)``, ``("partial", chunk)`` and exactly one terminal message: ``("finished", result)``,
``("failed", message, is_user_error, traceback_text)`` or ``("cancelled",)``. The parent cancels
by setting a shared event, which the job sees through an ordinary
:class:`~engine.jobs.CancelToken` at its next per-batch check.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from engine.errors import Cancelled, MetaScopeError
from engine.jobs import CancelToken, ProgressEvent, Throttle

PROGRESS = "progress"
PARTIAL = "partial"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = (FINISHED, FAILED, CANCELLED)


class EventCancelToken(CancelToken):
    """A :class:`CancelToken` backed by a ``multiprocessing`` event shared with the parent."""

    def __init__(self, event: Any) -> None:
        # the event has the same set()/is_set() interface as threading.Event
        self._event = event


def progress_message(event: ProgressEvent) -> tuple[Any, ...]:
    """A picklable form of ``event`` (its ``metrics`` mapping proxy cannot be pickled)."""
    return (PROGRESS, event.stage, int(event.step), event.total, event.message, dict(event.metrics))


def progress_event(message: tuple[Any, ...]) -> ProgressEvent:
    """The :class:`ProgressEvent` of a :func:`progress_message` tuple."""
    _, stage, step, total, text, metrics = message
    return ProgressEvent(stage, step, total, text, MappingProxyType(dict(metrics)))


def lower_priority(increment: int) -> None:
    """Make this process yield the CPU to interactive ones (the GUI): ``nice`` on POSIX, the
    below-normal priority class on Windows. Best effort: a refusal leaves the priority as is."""
    if increment <= 0:
        return
    try:
        if hasattr(os, "nice"):
            os.nice(increment)
        elif sys.platform == "win32":
            import ctypes

            below_normal = 0x00004000
            kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
            kernel32.SetPriorityClass(kernel32.GetCurrentProcess(), below_normal)
    except OSError:
        return


def child_main(conn: Any, cancel_event: Any, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any], progress_interval_s: float = 0.1, nice: int = 0) -> None:
    """Run ``fn(*args, progress=..., cancel=..., partial=..., **kwargs)`` and report over ``conn``.

    Exactly one terminal message is sent; a result that cannot be sent back (not picklable) is
    reported as a failure rather than lost. ``nice`` lowers the child's CPU priority first.
    """
    lower_priority(nice)

    def send_progress(event: ProgressEvent) -> None:
        conn.send(progress_message(event))

    def send_partial(chunk: Any) -> None:
        conn.send((PARTIAL, chunk))

    try:
        try:
            result = fn(*args, progress=Throttle(send_progress, interval_s=progress_interval_s),
                        cancel=EventCancelToken(cancel_event), partial=send_partial, **kwargs)
        except Cancelled:
            conn.send((CANCELLED,))
            return
        except MetaScopeError as exc:
            conn.send((FAILED, str(exc), True, traceback.format_exc()))
            return
        except Exception as exc:  # noqa: BLE001 - any bug must reach the user as a dialog, not vanish
            conn.send((FAILED, f"{type(exc).__name__}: {exc}", False, traceback.format_exc()))
            return
        try:
            conn.send((FINISHED, result))
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result: still one terminal message
            conn.send((FAILED, f"the result could not be sent back ({type(exc).__name__}: {exc})", False,
                       traceback.format_exc()))
    except (BrokenPipeError, EOFError, OSError):
        return  # the parent went away (window closed): nobody is left to tell
    finally:
        conn.close()
