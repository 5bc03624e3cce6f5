"""Opening slides for :class:`~gui.views.slide_view.SlideView`, off the GUI thread.

``engine.slides.open_slide`` scans every TIFF page and, for a plain image, decodes up to 64 Mpx:
seconds on a network drive, during which a GUI thread would freeze. So the reader is opened on a
pool thread (:class:`gui.workers.Worker`) while the view says "Opening <name>…"; the result is
shown on the GUI thread. A slide the user opened meanwhile wins: the older result is closed and
dropped, and an older failure shows no dialog.

A mixin (like :mod:`gui.views.slide_mil`) so the slide view stays one widget while this code
lives in its own module. The view provides the signals ``slide_opened`` and ``slide_open_failed``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.slides.base import SlideReader
from gui.dialogs import show_error
from gui.workers import Worker


def read_slide(path: str, progress: Any = None, cancel: Any = None, partial: Any = None) -> SlideReader:
    """Worker job: open ``path`` with the engine's reader (runs on a pool thread)."""
    from engine.slides import open_slide

    return open_slide(path)


class SlideOpeningMixin:
    """Open slides in a worker and show them when read (mixed into ``SlideView``)."""

    # provided by SlideView
    viewer: Any
    status_message: Any
    slide_opened: Any
    slide_open_failed: Any

    def _init_opening(self, empty_text: str) -> None:
        self.opening: str = ""  # the path being opened ("" when none)
        self._open_stamp = 0  # the newest open request; older results are dropped
        self._empty_text = empty_text
        self._demo_open: tuple[str, str] | None = None  # (slide, model) of the demo journey

    def open_slide(self, path: str | os.PathLike[str]) -> Worker:
        """Start opening ``path``; the current slide stays until the new one is read.

        Ends with :attr:`slide_opened` (path) or, after an error dialog, :attr:`slide_open_failed`
        (path, message): connect to those before calling. Returns the worker reading the slide.
        """
        p = str(Path(path).expanduser().resolve())
        self._open_stamp += 1
        stamp = self._open_stamp
        self.opening = p
        text = f"Opening {Path(p).name}…"
        if self.viewer.reader is None:
            self.viewer.empty_text = text
            self.viewer.update()
        self.status_message.emit(text, 0)
        worker = Worker(read_slide, p)
        worker.signals.finished.connect(lambda reader, st=stamp: self._on_slide_read(st, p, reader))
        worker.signals.failed.connect(
            lambda msg, user, details, st=stamp: self._on_slide_read_failed(st, p, msg, user, details))
        self._start_misc(worker)  # type: ignore[attr-defined]
        return worker

    def _drop_pending_open(self) -> None:
        """Forget an open in flight (slide closed, view shutting down): its result is dropped."""
        self._open_stamp += 1
        self.opening = ""
        self._demo_open = None
        self.viewer.empty_text = self._empty_text

    def _on_slide_read(self, stamp: int, path: str, reader: SlideReader) -> None:
        if stamp != self._open_stamp:
            reader.close()  # another slide was opened meanwhile: that one is shown
            return
        self.opening = ""
        self.viewer.empty_text = self._empty_text
        self._show_slide(path, reader)  # type: ignore[attr-defined]
        demo, self._demo_open = self._demo_open, None
        if demo is not None and demo[0] == path:
            self._pending_run_model = demo[1]  # type: ignore[attr-defined]
            self.select_model(demo[1])  # type: ignore[attr-defined]

    def _on_slide_read_failed(self, stamp: int, path: str, message: str, user_error: bool, details: str) -> None:
        if stamp != self._open_stamp:
            return  # the user has moved on to another slide: no dialog for this one
        self.opening = ""
        self._demo_open = None
        self.viewer.empty_text = self._empty_text
        self.viewer.update()
        name = Path(path).name
        self.status_message.emit(f"Could not open {name}", 6000)
        text = message if user_error else f"{name}: {message}"
        show_error(self, "Cannot open slide", text, "" if user_error else details)  # type: ignore[arg-type]
        self.slide_open_failed.emit(path, text)

    def run_demo(self, slide_path: str, model_path: str) -> None:
        """Open the demo slide, then (once it is read) the demo model, and show or compute its heatmap."""
        self.open_slide(slide_path)
        self._demo_open = (self.opening, str(Path(model_path).resolve()))
