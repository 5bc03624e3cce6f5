"""Application start-up: QApplication, main window, and what to show first."""

from __future__ import annotations

import os
import sys
import time

from PySide6.QtCore import QCoreApplication, QTimer
from PySide6.QtWidgets import QApplication

from engine import __version__
from gui.icons import app_icon
from gui.main_window import MainWindow
from gui.settings import APPLICATION, ORGANIZATION, Settings

# Set by tests and benchmarks: print start-up facts once the window is shown, then quit
# (a number of seconds delays the quit, to also check what the first seconds imported).
STARTUP_PROBE_ENV = "METASCOPE_STARTUP_PROBE"
# Set by tests: never start the demo journey automatically.
NO_DEMO_ENV = "METASCOPE_NO_DEMO"
# Set with the start-up probe (installer verification): save a PNG of the main window to this
# path just before the probe quits.
SCREENSHOT_ENV = "METASCOPE_SCREENSHOT"
# Modules the viewer must not pull in at start-up (torch: seconds of import, a bigger installer).
HEAVY_MODULES = ("torch", "matplotlib", "onnx", "onnxruntime")


def create_application(argv: list[str] | None = None) -> QApplication:
    """The QApplication (created once), named for QSettings and the window manager."""
    app = QApplication.instance()
    if app is None:
        QCoreApplication.setOrganizationName(ORGANIZATION)
        QCoreApplication.setApplicationName(APPLICATION)
        QCoreApplication.setApplicationVersion(__version__)
        app = QApplication([sys.argv[0] if sys.argv else "metascope", *(argv or [])])
        app.setDesktopFileName("metascope")
    app.setWindowIcon(app_icon())
    return app  # type: ignore[return-value]


def create_main_window(argv_paths: list[str], settings: Settings | None = None, demo: bool | None = None) -> MainWindow:
    """Build and show the main window, then open ``argv_paths`` or (on a fresh start) the demo.

    Args:
        argv_paths: slide paths from the command line; the first one is opened.
        settings: settings store (default: the user's).
        demo: run the demo journey when no path is given; default: only on a fresh start.
    """
    settings = settings or Settings()
    window = MainWindow(settings)
    window.show()
    view = window.slide_view
    if demo is None:
        demo = not settings.get("app/first_run_done") and not os.environ.get(NO_DEMO_ENV)
    if argv_paths:
        # after the first paint, so the window appears before the slide is read
        QTimer.singleShot(0, lambda: (window.open_path(argv_paths[0]), view.refresh_models()))
    elif demo:
        settings.set("app/first_run_done", True)
        QTimer.singleShot(0, view.start_demo)
    else:
        QTimer.singleShot(0, view.refresh_models)
    return window


def run_gui(argv_paths: list[str]) -> int:
    """Start the desktop app; returns the process exit code."""
    t0 = time.perf_counter()
    app = create_application()
    window = create_main_window(argv_paths)
    if os.environ.get(STARTUP_PROBE_ENV):
        _install_startup_probe(app, window, t0)
    return app.exec()


def _install_startup_probe(app: QApplication, window: MainWindow, t0: float) -> None:
    """Print start-up facts once the event loop runs (the window is painted), then quit."""

    done: list[bool] = []

    def heavy() -> str:
        return ",".join(m for m in HEAVY_MODULES if m in sys.modules) or "-"

    def report() -> None:
        print(f"startup_window_shown_s={time.perf_counter() - t0:.3f}", flush=True)
        print(f"startup_visible={int(window.isVisible())}", flush=True)
        print(f"startup_heavy_modules={heavy()}", flush=True)
        print(f"startup_views={','.join(window.view_names())}", flush=True)
        try:
            delay_s = float(os.environ.get(STARTUP_PROBE_ENV, "0"))
        except ValueError:
            delay_s = 0.0
        QTimer.singleShot(int(max(0.0, delay_s) * 1000), finish_when_opened)

    def finish_when_opened() -> None:
        """A slide given on the command line is still being read (a busy machine): wait for it."""
        view = window.slide_view
        if not view.opening:
            finish()
            return
        view.slide_opened.connect(lambda _path: finish())
        view.slide_open_failed.connect(lambda _path, _msg: finish())

    def finish() -> None:
        if done:
            return
        done.append(True)
        print(f"startup_slide={window.slide_view.slide_path or '-'}", flush=True)
        print(f"later_torch_imported={int('torch' in sys.modules)}", flush=True)
        shot = os.environ.get(SCREENSHOT_ENV)
        if shot:
            saved = window.grab().save(shot, "PNG")
            print(f"screenshot={shot if saved else 'FAILED'}", flush=True)
        window.close()
        app.quit()

    QTimer.singleShot(0, report)
