"""Fixtures shared by the GUI tests: the main window with non-blocking message boxes."""

from __future__ import annotations

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
