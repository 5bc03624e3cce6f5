"""Slides are read off the GUI thread: an "Opening <name>…" state while the reader scans the file,
the slide shown when read, errors as a dialog, and a slide the user opened meanwhile wins.

Reads are held at a gate the test opens, so every ordering below happens however fast or busy
the machine is; the test waits on the view's signals (connected before the open starts) or state.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.slides.synthetic import SyntheticSlide
from gui.main_window import MainWindow
from gui.views import slide_open
from gui.views.slide_view import EMPTY_TEXT

WAIT_MS = 30_000


class HeldReads:
    """Replaces the worker's slide reader: reads of ``held`` paths wait until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *held: Path) -> None:
        self.held = {str(Path(p).resolve()) for p in held}
        self.gate = threading.Event()
        self.on_gui_thread: list[bool] = []
        self.entered: list[str] = []
        self.closed: list[str] = []
        self._real = slide_open.read_slide
        monkeypatch.setattr(slide_open, "read_slide", self)

    def __call__(self, path: str, **kwargs):  # type: ignore[no-untyped-def]
        self.on_gui_thread.append(threading.current_thread() is threading.main_thread())
        self.entered.append(path)
        if path in self.held:
            self.gate.wait(WAIT_MS / 1000)
        reader = self._real(path, **kwargs)
        real_close = reader.close

        def close() -> None:
            self.closed.append(path)
            real_close()

        reader.close = close  # type: ignore[method-assign]
        return reader

    def release(self) -> None:
        self.gate.set()


def test_a_slide_is_read_in_a_worker_with_an_opening_state(qtbot, window: MainWindow, dialogs, monkeypatch,
                                                            synthetic_svs: SyntheticSlide) -> None:  # type: ignore[no-untyped-def]
    reads = HeldReads(monkeypatch, synthetic_svs.path)
    view = window.slide_view
    window.open_path(synthetic_svs.path)
    # the open has started, the event loop runs, nothing is shown yet
    qtbot.waitUntil(lambda: bool(reads.entered), timeout=WAIT_MS)
    assert view.opening == str(synthetic_svs.path.resolve()) and view.reader is None
    assert view.viewer.empty_text == "Opening synthetic.svs…"
    assert window.statusBar().currentMessage() == "Opening synthetic.svs…"
    assert window.windowTitle() == "MetaScope"
    with qtbot.waitSignal(view.slide_opened, timeout=WAIT_MS) as opened:
        reads.release()
    assert opened.args == [str(synthetic_svs.path.resolve())]
    assert reads.on_gui_thread == [False], "open_slide ran on a worker thread, never the GUI thread"
    assert view.opening == "" and view.reader is not None and view.slide_path == opened.args[0]
    assert "synthetic.svs" in window.windowTitle() and dialogs == []
    assert view.viewer.empty_text != "Opening synthetic.svs…"


def test_a_slide_opened_meanwhile_wins_and_the_older_one_is_closed(qtbot, window: MainWindow, dialogs, monkeypatch,
                                                                   synthetic_svs: SyntheticSlide,
                                                                   synthetic_tiff_no_mpp: SyntheticSlide) -> None:  # type: ignore[no-untyped-def]
    slow, fast = synthetic_svs.path, synthetic_tiff_no_mpp.path
    reads = HeldReads(monkeypatch, slow)
    view = window.slide_view
    window.open_path(slow)
    qtbot.waitUntil(lambda: str(slow.resolve()) in reads.entered, timeout=WAIT_MS)
    with qtbot.waitSignal(view.slide_opened, timeout=WAIT_MS) as opened:
        window.open_path(fast)  # the user did not wait for the slow one
    assert opened.args == [str(fast.resolve())]
    reads.release()
    # the slow slide's reader arrives late: closed and dropped, the newer slide stays
    qtbot.waitUntil(lambda: reads.closed == [str(slow.resolve())], timeout=WAIT_MS)
    assert view.slide_path == str(fast.resolve()) and view.reader is not None and view.opening == ""
    assert view.properties.fields["Resolution"].text() == "not recorded"  # the generic TIFF's properties
    assert dialogs == []


def test_a_failure_is_a_dialog_unless_another_slide_was_opened_meanwhile(qtbot, window: MainWindow, dialogs,
                                                                        monkeypatch, not_a_slide: Path,
                                                                        synthetic_svs: SyntheticSlide) -> None:  # type: ignore[no-untyped-def]
    view = window.slide_view
    with qtbot.waitSignal(view.slide_open_failed, timeout=WAIT_MS) as failed:
        window.open_path(not_a_slide)
    assert failed.args[0] == str(not_a_slide.resolve()) and "not a slide" in failed.args[1]
    assert dialogs == [("Cannot open slide", failed.args[1])]
    assert view.opening == "" and view.reader is None
    assert view.viewer.empty_text == EMPTY_TEXT

    reads = HeldReads(monkeypatch, not_a_slide)
    bad_worker = window.open_path(not_a_slide)  # held at the gate: it cannot have ended yet
    with qtbot.waitSignal(view.slide_opened, timeout=WAIT_MS):
        window.open_path(synthetic_svs.path)
    with qtbot.waitSignal(bad_worker.signals.failed, timeout=WAIT_MS):
        reads.release()
    assert len(dialogs) == 1, "no dialog for a slide the user has already moved on from"
    assert view.slide_path == str(synthetic_svs.path.resolve()) and view.opening == ""


def test_an_unreadable_recent_slide_leaves_the_recent_menu(qtbot, window: MainWindow, dialogs,
                                                          tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gone = tmp_path / "moved.svs"
    gone.write_text("no longer a slide")
    window.settings.add_recent_file(str(gone.resolve()))
    with qtbot.waitSignal(window.slide_view.slide_open_failed, timeout=WAIT_MS):
        window.open_path(gone)
    assert str(gone.resolve()) not in window.settings.recent_files()
    assert dialogs and dialogs[-1][0] == "Cannot open slide"
