"""Progress reporting and cooperative cancellation for long-running engine functions.

Every long engine function takes ``progress: ProgressCallback | None`` and
``cancel: CancelToken | None`` and checks them per batch or tile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from engine.errors import Cancelled


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One progress report.

    Attributes:
        stage: short machine-readable stage name, e.g. ``"tiling"``, ``"inference"``, ``"train"``.
        step: units done so far in this stage.
        total: units in this stage, or ``None`` when unknown.
        message: human-readable one-liner.
        metrics: optional numbers (loss, auc, tiles_per_s, eta_s, ...).
    """

    stage: str
    step: int
    total: int | None = None
    message: str = ""
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.step / self.total))


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """Thread-safe cancellation flag shared between a caller and a worker."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:  # through the property, so a subclass that polls elsewhere is asked too
            raise Cancelled("cancelled by user")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until cancelled (or ``timeout_s`` passed); True when cancelled."""
        return bool(self._event.wait(timeout_s))


def check_cancel(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set; no-op for ``None``."""
    if cancel is not None:
        cancel.raise_if_cancelled()


def report(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``progress`` if given."""
    if progress is not None:
        progress(event)


class Throttle:
    """Pass through at most one call per ``interval_s`` (the last event of a stage always passes).

    Wraps a :data:`ProgressCallback` so UIs receive about ten updates a second.
    """

    def __init__(self, callback: ProgressCallback, interval_s: float = 0.1) -> None:
        self._callback = callback
        self._interval_s = interval_s
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        final = event.total is not None and event.step >= event.total
        with self._lock:
            if not final and now - self._last < self._interval_s:
                return
            self._last = now
        self._callback(event)
