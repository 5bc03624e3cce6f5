"""A small widget that runs one ``metascope`` command at a time in a worker, with progress and Cancel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget

from gui.cli_job import CliResult, command_line, run_cli
from gui.wizard.common import MessageLabel
from gui.workers import Worker, start_worker


class CliRunner(QWidget):
    """Runs commands one after another's end; the view reacts to :attr:`finished` / :attr:`failed`.

    Each :meth:`start` names the job (``tag``) so a view with several actions knows which one ended.
    """

    finished = Signal(str, object)  # tag, CliResult
    failed = Signal(str, str)  # tag, one-line message
    busy_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._worker: Worker | None = None
        self._tag = ""
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setMaximumHeight(10)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.message = MessageLabel()
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.message)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(self, tag: str, args: Sequence[str], text: str = "", json_output: bool = False,
              before: Callable[[], None] | None = None) -> Worker | None:
        """Run ``metascope ARGS`` (``before`` runs first in the worker, e.g. to write an input file)."""
        if self.busy:
            return None
        worker = Worker(_run, list(args), json_output, before)
        worker.signals.progress.connect(lambda ev: self.message.show_message(f"{text} {ev.message}".strip(), "info"))
        worker.signals.finished.connect(self._on_finished)
        worker.signals.failed.connect(self._on_failed)
        worker.signals.cancelled.connect(self._on_cancelled)
        self._worker, self._tag = worker, tag
        self.progress.show()
        self.cancel_button.show()
        self.message.show_message(text or command_line(args), "info")
        self.message.setToolTip(command_line(args))
        self.busy_changed.emit(True)
        start_worker(worker)
        return worker

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def _end(self) -> str:
        self._worker = None
        self.progress.hide()
        self.cancel_button.hide()
        self.busy_changed.emit(False)
        return self._tag

    def _on_finished(self, result: CliResult) -> None:
        tag = self._end()
        self.message.show_message(f"✓ {result.summary}" if result.summary else "✓ Done.", "ok")
        self.finished.emit(tag, result)

    def _on_failed(self, message: str, _user: bool, _tb: str) -> None:
        tag = self._end()
        self.message.show_message(message, "error")
        self.failed.emit(tag, message)

    def _on_cancelled(self) -> None:
        self._end()
        self.message.show_message("Cancelled.", "warning")


def _run(args: list[str], json_output: bool, before: Any, progress: Any = None, cancel: Any = None,
         partial: Any = None) -> CliResult:
    if before is not None:
        before()
    return run_cli(args, json_output=json_output, progress=progress, cancel=cancel)
