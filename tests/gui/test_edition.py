"""The viewer edition (no PyTorch) shows no training views or entry points it cannot use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gui import main_window as mw
from gui.main_window import MainWindow
from gui.settings import Settings


def _window(qtbot, monkeypatch: pytest.MonkeyPatch, can_train: bool) -> MainWindow:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(mw, "training_available", lambda: can_train)
    w = MainWindow(Settings())
    qtbot.addWidget(w)
    w.show()
    return w


def test_viewer_edition_has_no_training_view_or_train_button(qtbot, dialogs, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    w = _window(qtbot, monkeypatch, can_train=False)
    names = w.view_names()
    assert names[:3] == ["Slides", "Datasets", "Models"] and "Training" not in names
    assert "Training" not in [w.nav.item(i).text() for i in range(w.nav.count())]
    assert "Training" not in [a.text() for a in w.go_menu.actions()]
    assert w.training_view is None and not w.training_enabled
    datasets = w.datasets_view
    assert datasets.train_button.isHidden() and not datasets.train_button.isEnabled()
    requested: list[object] = []
    datasets.train_requested.connect(requested.append)
    datasets._on_train_clicked()  # e.g. a keyboard shortcut: still nothing to train with
    assert requested == []
    generator = getattr(w, "generator_view", None)
    if generator is not None:  # generating works with onnxruntime alone; training a generator does not
        assert not generator.train_button.isEnabled()
    w.close()


def test_full_edition_keeps_the_training_journey(qtbot, dialogs, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    w = _window(qtbot, monkeypatch, can_train=True)
    assert w.view_names()[:4] == ["Slides", "Datasets", "Training", "Models"]
    assert w.training_view is not None and not w.datasets_view.train_button.isHidden()
    w.close()


def test_training_available_asks_without_importing_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from engine import edition

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert edition.training_available() is False
    monkeypatch.undo()
    code = ("import sys; from engine.edition import training_available; "
            "print(training_available(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "False"]  # this environment has torch, and it stayed unimported
