"""Wizard page 3: the network architecture and optional local starting weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from gui.wizard.common import DatasetSummary, MessageLabel, human_count
from gui.workers import Worker, start_worker


def _list_architectures(**_kw: Any) -> list[Any]:
    # imports torch (parameter counts): seconds on a cold start, so it runs in a worker
    from engine.models.registry import list_architectures

    return list_architectures()


def _check_weights(arch: str, num_classes: int, input_size: int, weights: str, **_kw: Any) -> str:
    """Load ``weights`` into a fresh ``arch`` network (imports torch: runs in a worker)."""
    from engine.models.registry import build_model

    build_model(arch, num_classes, input_size, weights=weights)
    return weights


class ModelPage(QWizardPage):
    """Pick an architecture (description, parameter count) and optionally a weights file."""

    #: The weights check started by Next ended: True when the weights load (the wizard then moves
    #: on by itself), False when refused (the reason is in :attr:`message`).
    weights_checked = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Model")
        self.setSubTitle("Choose the network. Smaller networks train faster; larger ones need more data.")
        self.architectures: list[Any] = []
        self._worker: Worker | None = None
        self._error = ""
        self._checking: tuple[Any, ...] | None = None  # the weights check running now (its key)
        self._weights_ok: tuple[Any, ...] | None = None  # the last (arch, classes, size, file) that loaded
        self._check_worker: Worker | None = None

        self.arch_list = QListWidget()
        self.arch_list.setMinimumHeight(150)
        self.arch_list.currentRowChanged.connect(self._on_arch_changed)
        self.arch_details = QLabel("Loading architectures…")
        self.arch_details.setWordWrap(True)
        self.arch_details.setTextFormat(Qt.TextFormat.RichText)

        self.weights_check = QCheckBox("Start from a local weights file")
        self.weights_check.setToolTip(
            "Initialise the network from a .pt/.pth file on this computer (e.g. ImageNet or a pathology "
            "checkpoint, or a model trained earlier). The classifier layer is re-initialised when the "
            "number of classes differs. Nothing is downloaded."
        )
        self.weights_edit = QLineEdit()
        self.weights_edit.setPlaceholderText("path/to/weights.pt")
        self.weights_button = QPushButton("Browse…")
        self.weights_button.clicked.connect(self._on_weights_browse)
        self.weights_check.toggled.connect(self._on_weights_toggled)
        self.weights_edit.textChanged.connect(self._on_weights_changed)
        weights_row = QHBoxLayout()
        weights_row.addWidget(self.weights_edit, 1)
        weights_row.addWidget(self.weights_button)
        self.message = MessageLabel()
        self._on_weights_toggled(False)

        layout = QVBoxLayout(self)
        layout.addWidget(self.arch_list, 2)
        layout.addWidget(self.arch_details)
        layout.addSpacing(8)
        layout.addWidget(self.weights_check)
        layout.addLayout(weights_row)
        layout.addWidget(self.message)
        layout.addStretch(1)

    @property
    def summary(self) -> DatasetSummary | None:
        return getattr(self.wizard(), "summary", None)

    # -- architectures -------------------------------------------------------------------------------
    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        if self.architectures:
            self._on_arch_changed(self.arch_list.currentRow())
            return
        if self._worker is not None:
            return
        worker = Worker(_list_architectures)
        worker.signals.finished.connect(self._on_archs_loaded)
        worker.signals.failed.connect(lambda msg, _u, _tb: self.message.show_message(msg, "error"))
        self._worker = worker
        start_worker(worker)

    def _on_archs_loaded(self, archs: list[Any]) -> None:
        self.architectures = list(archs)
        self.arch_list.clear()
        for a in self.architectures:
            item = QListWidgetItem(f"{a.name}    ·    {human_count(a.params)} parameters")
            item.setToolTip(a.description)
            self.arch_list.addItem(item)
        if self.architectures:
            self.arch_list.setCurrentRow(0)
        self.completeChanged.emit()

    def arch(self) -> Any | None:
        row = self.arch_list.currentRow()
        return self.architectures[row] if 0 <= row < len(self.architectures) else None

    def select(self, name: str) -> bool:
        for i, a in enumerate(self.architectures):
            if a.name == name:
                self.arch_list.setCurrentRow(i)
                return True
        return False

    def _on_arch_changed(self, _row: int) -> None:
        a = self.arch()
        if a is None:
            return
        s = self.summary
        size_note = ""
        if s is not None:
            size_note = f" Your patches: {s.patch_size[1]}×{s.patch_size[0]} px."
        self.arch_details.setText(
            f"<b>{a.name}</b>: {a.description}<br>{a.params:,} trainable parameters (96 px input, 2 classes). "
            f"Accepts patches of {a.min_input_size} px and larger.{size_note}"
        )
        self._revalidate()

    # -- weights -------------------------------------------------------------------------------------
    def weights_path(self) -> str | None:
        text = self.weights_edit.text().strip()
        return text if self.weights_check.isChecked() and text else None

    def _on_weights_toggled(self, on: bool) -> None:
        self.weights_edit.setEnabled(on)
        self.weights_button.setEnabled(on)
        self._revalidate()

    def _on_weights_changed(self) -> None:
        self._revalidate()

    def _on_weights_browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a weights file", self.weights_edit.text(), "PyTorch weights (*.pt *.pth *.bin);;All files (*)"
        )
        if path:
            self.weights_edit.setText(path)

    # -- validation ----------------------------------------------------------------------------------
    def _revalidate(self) -> None:
        self._error = self._check()
        self.message.show_message(self._error, "error")
        self.completeChanged.emit()

    def _check(self) -> str:
        a = self.arch()
        s = self.summary
        if a is not None and s is not None and min(s.patch_size) < a.min_input_size:
            return (
                f"{a.name} needs patches of at least {a.min_input_size} px; yours are {min(s.patch_size)} px. "
                "Choose a smaller network."
            )
        if self.weights_check.isChecked():
            text = self.weights_edit.text().strip()
            if not text:
                return "Choose a weights file, or untick 'Start from a local weights file'."
            if not Path(text).is_file():
                return f"Weights file not found: {text}"
        return ""

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        return self.arch() is not None and not self._error and self._checking is None

    @property
    def checking_weights(self) -> bool:
        """True while the weights file is being loaded into the network (after Next)."""
        return self._checking is not None

    def _weights_key(self) -> tuple[Any, ...] | None:
        weights = self.weights_path()
        a, s = self.arch(), self.summary
        if weights is None or a is None or s is None:
            return None
        return a.name, max(2, len(s.class_names)), min(s.patch_size), weights

    def validatePage(self) -> bool:  # noqa: N802 (Qt override)
        """Load the weights into the chosen network before moving on, so a mismatch is reported on
        this page. Loading imports torch and reads the file: it runs in a worker, and the wizard
        moves on by itself once the weights load (see :attr:`weights_checked`)."""
        key = self._weights_key()
        if key is None or key == self._weights_ok:
            return True
        if self._checking is None:
            self._checking = key
            self.message.show_message(f"Loading {Path(key[3]).name} into {key[0]}…", "info")
            self.completeChanged.emit()
            worker = Worker(_check_weights, *key)
            worker.signals.finished.connect(lambda _w, k=key: self._on_weights_loaded(k))
            worker.signals.failed.connect(lambda msg, user, _tb, k=key: self._on_weights_refused(k, msg, user))
            self._check_worker = start_worker(worker)
        return False

    def _on_weights_loaded(self, key: tuple[Any, ...]) -> None:
        self._checking = None
        if key != self._weights_key():  # the choice changed while the file was read
            self._revalidate()
            return
        self._weights_ok = key
        self.message.show_message(f"✓ {Path(key[3]).name} loads into {key[0]}.", "ok")
        self.completeChanged.emit()
        self.weights_checked.emit(True)
        wizard = self.wizard()
        if wizard is not None and wizard.currentPage() is self:
            wizard.next()

    def _on_weights_refused(self, key: tuple[Any, ...], message: str, user_error: bool) -> None:
        self._checking = None
        if key != self._weights_key():
            self._revalidate()
            return
        text = (f"These weights do not fit {key[0]}: {message}" if user_error
                else f"Cannot load {Path(key[3]).name}: {message}")  # a foreign file breaks torch.load in many ways
        self.message.show_message(text, "error")
        self.completeChanged.emit()
        self.weights_checked.emit(False)
