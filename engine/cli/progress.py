"""A terminal progress bar fed by :class:`engine.jobs.ProgressEvent`."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from engine.jobs import ProgressEvent


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class TerminalProgress:
    """Draws ``stage [#####.....] 45% 450/1000 12.3/s eta 00:45 message`` on stderr.

    On a terminal the line is redrawn in place (at most ten times a second); when stderr is not
    a terminal (logs, CI) a plain line is printed at most every ``log_interval_s`` seconds and at
    the end of each stage.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30, log_interval_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_interval_s = log_interval_s
        self._stage: str | None = None
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._dirty = False

    def __call__(self, ev: ProgressEvent) -> None:
        now = time.monotonic()
        if ev.stage != self._stage:
            self._finish_line()
            self._stage = ev.stage
            self._t0 = now
            self._last_draw = 0.0
        final = ev.total is not None and ev.step >= ev.total
        interval = 0.1 if self.tty else self.log_interval_s
        if not final and now - self._last_draw < interval:
            return
        self._last_draw = now
        line = self._render(ev, now - self._t0)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self._dirty = True
            if final:
                self._finish_line()
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _render(self, ev: ProgressEvent, elapsed: float) -> str:
        parts = [ev.stage]
        rate = ev.step / elapsed if elapsed > 0 else 0.0
        if ev.total:
            frac = min(1.0, ev.step / ev.total)
            filled = int(frac * self.width)
            parts.append("[" + "#" * filled + "." * (self.width - filled) + "]")
            parts.append(f"{frac * 100:3.0f}% {ev.step}/{ev.total}")
            if rate > 0 and ev.step < ev.total:
                parts.append(f"eta {_fmt_seconds((ev.total - ev.step) / rate)}")
        else:
            parts.append(str(ev.step))
        if rate > 0:
            parts.append(f"{rate:.1f}/s")
        if ev.message:
            parts.append(ev.message)
        return " ".join(parts)

    def _finish_line(self) -> None:
        if self.tty and self._dirty:
            self.stream.write("\n")
            self.stream.flush()
        self._dirty = False

    def close(self) -> None:
        self._finish_line()
