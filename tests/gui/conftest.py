"""Fixtures shared by the GUI tests: the main window with non-blocking message boxes, and
opening a slide (read off the GUI thread) and waiting until it is shown."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from PySide6.QtWidgets import QMessageBox

from gui.main_window import MainWindow
from gui.settings import Settings


@pytest.fixture()
def dialogs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Message boxes are recorded as (title, text) instead of blocking; confirmations decline."""
    shown: list[tuple[str, str]] = []

    def fake_exec(box: QMessageBox) -> int:
        shown.append((box.windowTitle(), box.text()))
        return int(QMessageBox.StandardButton.Cancel)

    monkeypatch.setattr(QMessageBox, "exec", fake_exec)
    return shown


@pytest.fixture()
def window(qtbot, dialogs):  # type: ignore[no-untyped-def]
    w = MainWindow(Settings())
    w.resize(1440, 900)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


OPEN_TIMEOUT_MS = 30_000


@pytest.fixture()
def open_and_wait(qtbot) -> Callable[..., None]:  # type: ignore[no-untyped-def]
    """``open_and_wait(window, path)``: open a slide and return once it is shown.

    Listens before the open starts, so a fast read cannot end before the test waits for it.
    """

    def _open(window: MainWindow, path: str | os.PathLike[str]) -> None:
        with qtbot.waitSignal(window.slide_view.slide_opened, timeout=OPEN_TIMEOUT_MS):
            window.open_path(path)

    return _open
