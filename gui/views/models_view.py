"""The model library view: list, import, export, rename and delete model packages; show model cards."""

from __future__ import annotations

import html
import json
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QGuiApplication, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from engine.errors import MetaScopeError, ModelPackageError
from engine.library import LibraryEntry, ModelLibrary
from engine.modelpkg import TABULAR_TASKS, ModelMetadata, read_metadata, sidecar_paths
from gui.modalities import MODEL_TASK_LABELS
from gui.views.model_actions import ModelActionsPanel

COLUMNS = ("Name", "Task", "Classes", "Input", "Validation", "Training data", "Date", "sha256")
TASK_LABELS = {
    "patch_classification": "Patch classifier",
    "feature_extractor": "Feature extractor",
    "mil_aggregator": "Slide-level (MIL)",
    **MODEL_TASK_LABELS,
}


def card_path(model_path: Path) -> Path:
    """The optional Markdown model card kept next to a model package (``NAME.md``)."""
    return model_path.with_suffix(".md")


def format_metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    """``AUC 0.912 · accuracy 0.861`` from a metrics dict (numbers only, most important first)."""
    order = ["auc", "accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity", "loss"]
    keys = [k for k in order if k in metrics] + sorted(k for k in metrics if k not in order)
    parts = []
    for k in keys:
        v = metrics[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        label = "AUC" if k == "auc" else k.replace("_", " ")
        parts.append(f"{label} {v:.3f}")
        if len(parts) >= limit:
            break
    return " · ".join(parts)


def format_training_data(data: dict[str, Any]) -> str:
    """A one-line summary of a model's training data."""
    if not data:
        return ""
    name = (data.get("name") or data.get("dataset") or data.get("study") or data.get("matrix")
            or (Path(str(data["path"])).name if data.get("path") else ""))
    parts = [str(name)] if name else []
    for key in ("n_train", "train", "n_samples", "samples", "train_samples", "count"):
        if isinstance(data.get(key), int):
            parts.append(f"{data[key]:,} {'samples' if 'study' in data or 'matrix' in data else 'patches'}")
            break
    if data.get("format"):
        parts.append(str(data["format"]))
    return ", ".join(parts)


def format_date(created: str, fallback: Path) -> str:
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        try:
            return datetime.fromtimestamp(fallback.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        except OSError:
            return ""


def format_input(meta: ModelMetadata) -> str:
    if meta.task in TABULAR_TASKS and meta.task != "mil_aggregator":
        n = meta.feature_dim
        if meta.task == "genomics_classifier":
            return f"{n} features" if n else "mutation + clinical features"
        if meta.task == "expression_generator":
            return f"{n} genes" if n else "expression profile"
        return f"expression → {n}-d embedding" if n else "expression profile"
    if meta.task == "mil_aggregator":
        return f"{meta.feature_dim or '?'}-d features"
    mpp = f" @ {meta.input_mpp:g} µm/px" if meta.input_mpp else " (mpp unknown)"
    return f"{meta.input_size}×{meta.input_size} px{mpp}"


def model_card_html(entry: LibraryEntry) -> str:
    """The model's metadata as an HTML table (what a reviewer checks before trusting a model)."""
    m = entry.metadata
    rows: list[tuple[str, str]] = [
        ("Name", entry.name),
        ("Task", TASK_LABELS.get(m.task, m.task)),
        ("Classes", ", ".join(m.class_names) + (f" (positive: {m.positive_class_name})" if m.class_names else "")),
        ("Input", format_input(m)),
        ("Normalisation", f"mean {list(m.mean)}, std {list(m.std)}, {m.channel_order}, {m.input_layout}"),
        ("Output", m.output),
        ("Architecture", m.arch or "not recorded"),
        ("Validation metrics", format_metrics(m.metrics, limit=12) or "not recorded"),
        ("Training data", json.dumps(m.training_data, indent=1) if m.training_data else "not recorded"),
        ("Created", format_date(m.created, entry.path)),
        ("MetaScope version", m.metascope_version),
        ("File", str(entry.path)),
        ("sha256", entry.sha256),
    ]
    body = "".join(
        f"<tr><td style='padding:2px 10px 2px 0;color:#666;vertical-align:top'><b>{html.escape(k)}</b></td>"
        f"<td style='padding:2px 0'>{html.escape(v).replace(chr(10), '<br>')}</td></tr>"
        for k, v in rows
    )
    return f"<h3 style='margin:0 0 6px 0'>{html.escape(entry.name)}</h3><table>{body}</table>"


class ModelsView(QWidget):
    """Lists the model library; changes go through :class:`engine.library.ModelLibrary`."""

    #: Emitted after a model is added, renamed or removed, so model pickers re-list the library.
    library_changed = Signal()
    #: A ``predictions.csv`` to review in the Samples view (from a model action).
    review_samples_requested = Signal(str)
    #: An evaluation folder to review in the Patch review view (from a patch classifier's action).
    review_patches_requested = Signal(str)
    #: A generator model to open in the Generator view.
    generator_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None, library: ModelLibrary | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ModelsView")
        self._library = library
        self._entries: list[LibraryEntry] = []

        title = QLabel("Model library")
        f = title.font()
        f.setPointSize(f.pointSize() + 4)
        f.setBold(True)
        title.setFont(f)
        self._folder_label = QLabel()
        self._folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._folder_label.setStyleSheet("color: palette(mid);")

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._on_table_selection_changed)
        self.table.doubleClicked.connect(lambda _i: self._on_rename_clicked())

        self.card = QTextBrowser()
        self.card.setOpenExternalLinks(False)
        self.card.setPlaceholderText("Select a model to see its model card.")

        self.import_button = QPushButton("Import ONNX…")
        self.import_button.setToolTip("Add an .onnx model package (or a plain ONNX model with a sidecar JSON)")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save a copy of the selected model package")
        self.rename_button = QPushButton("Rename…")
        self.delete_button = QPushButton("Delete")
        self.verify_button = QPushButton("Verify integrity")
        self.verify_button.setToolTip("Check the file against the sha256 recorded when it was added")
        self.copy_hash_button = QPushButton("Copy sha256")
        self.import_button.clicked.connect(self._on_import_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.rename_button.clicked.connect(self._on_rename_clicked)
        self.delete_button.clicked.connect(self._on_delete_clicked)
        self.verify_button.clicked.connect(self._on_verify_clicked)
        self.copy_hash_button.clicked.connect(self._on_copy_hash_clicked)

        buttons = QHBoxLayout()
        for b in (self.import_button, self.export_button, self.rename_button, self.delete_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.verify_button)
        buttons.addWidget(self.copy_hash_button)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.card)
        # patch / genomics / expression models: evaluate, review, one-shot test, classify, generate...
        self.actions = ModelActionsPanel()
        self.actions.review_samples_requested.connect(self.review_samples_requested)
        self.actions.review_patches_requested.connect(self.review_patches_requested)
        self.actions.generator_requested.connect(self.generator_requested)
        splitter.addWidget(self.actions)
        splitter.setStretchFactor(2, 3)
        splitter.setSizes([220, 260, 420])
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)

        layout = QVBoxLayout(self)
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self._folder_label)
        layout.addLayout(head)
        layout.addLayout(buttons)
        layout.addWidget(splitter, 1)
        # listed on first show: reading model metadata imports onnx, which app start-up avoids

    # -- data --------------------------------------------------------------------------------------
    @property
    def library(self) -> ModelLibrary:
        # resolved lazily so METASCOPE_HOME changes (tests, portable installs) are honoured
        return self._library if self._library is not None else ModelLibrary()

    @property
    def entries(self) -> list[LibraryEntry]:
        return list(self._entries)

    def selected_entry(self) -> LibraryEntry | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        row = rows[0].row()
        return self._entries[row] if 0 <= row < len(self._entries) else None

    def refresh(self, select: Path | None = None) -> None:
        """Re-list the library folder, keeping (or moving to) the selected model."""
        current = select or (e.path if (e := self.selected_entry()) else None)
        self._entries = self.library.entries()
        self._folder_label.setText(str(self.library.folder))
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self._entries))
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.TypeWriter)
        for row, entry in enumerate(self._entries):
            m = entry.metadata
            values = (
                entry.name,
                TASK_LABELS.get(m.task, m.task),
                ", ".join(m.class_names),
                format_input(m),
                format_metrics(m.metrics),
                format_training_data(m.training_data),
                format_date(m.created, entry.path),
                entry.sha256[:12],
            )
            for col, text in enumerate(values):
                item = QTableWidgetItem(text)
                if col == len(values) - 1:
                    item.setFont(mono)
                    item.setToolTip(entry.sha256)
                elif col == 0:
                    item.setToolTip(str(entry.path))
                self.table.setItem(row, col, item)
        selected_row = next((i for i, e in enumerate(self._entries) if current and e.path == current), None)
        if selected_row is not None:
            self.table.selectRow(selected_row)
        elif self._entries:
            self.table.selectRow(0)
        self._on_table_selection_changed()

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt override)
        # models may have been added by a training run or the CLI while another view was shown
        self.refresh()
        super().showEvent(event)

    # -- slots -------------------------------------------------------------------------------------
    def _on_table_selection_changed(self) -> None:
        entry = self.selected_entry()
        for b in (
            self.export_button,
            self.rename_button,
            self.delete_button,
            self.verify_button,
            self.copy_hash_button,
        ):
            b.setEnabled(entry is not None)
        if entry is None:
            self.card.setHtml(
                "<p style='color:#808080'>No model selected. Import an ONNX model package or train one "
                "from the Training view.</p>"
                if not self._entries
                else ""
            )
            self.actions.hide()
            return
        self.card.setHtml(model_card_html(entry))
        self.actions.show_model(entry.metadata.task, entry.path, entry.metadata.training_data)
        md = card_path(entry.path)
        if md.is_file():
            try:
                card_md = md.read_text(encoding="utf-8")
            except OSError as exc:
                card_md = f"*The model card {md.name} cannot be read: {exc.strerror}.*"
            cursor = self.card.textCursor()
            cursor.movePosition(QTextCursor.MoveOperation.End)
            cursor.insertHtml("<hr>")
            cursor.insertMarkdown(card_md)
            self.card.moveCursor(QTextCursor.MoveOperation.Start)

    def _on_import_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import a model", "", "ONNX models (*.onnx);;All files (*)")
        if path:
            self.import_model(Path(path))

    def import_model(self, path: Path, sidecar: Path | None = None) -> LibraryEntry | None:
        """Add ``path`` to the library; asks for a sidecar JSON when the model has no metadata."""
        try:
            if sidecar is None:
                try:
                    read_metadata(path)
                except ModelPackageError as exc:
                    if "no sidecar" not in str(exc) and "not a MetaScope model" not in str(exc):
                        raise
                    answer, _ = QFileDialog.getOpenFileName(
                        self,
                        f"{path.name} has no MetaScope metadata: choose its sidecar JSON",
                        str(path.parent),
                        "JSON (*.json)",
                    )
                    if not answer:
                        return None
                    sidecar = Path(answer)
            entry = self._add_with_sidecar(path, sidecar) if sidecar is not None else self.library.add(path)
            src_card = card_path(path)
            if src_card.is_file():
                shutil.copyfile(src_card, card_path(entry.path))
        except (MetaScopeError, OSError) as exc:
            self._error("Cannot import the model", exc)
            return None
        self.refresh(select=entry.path)
        self.library_changed.emit()
        return entry

    def _add_with_sidecar(self, path: Path, sidecar: Path) -> LibraryEntry:
        # the library reads a sidecar next to the model; stage both in a private temp folder so
        # the user's folder is never written to
        with tempfile.TemporaryDirectory(prefix="metascope-import-") as tmp:
            staged = Path(tmp) / path.name
            shutil.copyfile(path, staged)
            shutil.copyfile(sidecar, sidecar_paths(staged)[0])
            return self.library.add(staged)

    def _on_export_clicked(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export model", entry.path.name, "ONNX models (*.onnx)")
        if path:
            self.export_model(entry, Path(path))

    def export_model(self, entry: LibraryEntry, dest: Path) -> bool:
        """Copy a verified model package (and its card) to ``dest``."""
        from engine.fileio import atomic_path

        try:
            self.library.verify(entry.path)
            with atomic_path(dest) as tmp:
                shutil.copyfile(entry.path, tmp)
            md = card_path(entry.path)
            if md.is_file():
                shutil.copyfile(md, card_path(dest))
        except (MetaScopeError, OSError) as exc:
            self._error("Cannot export the model", exc)
            return False
        return True

    def _on_rename_clicked(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        name, ok = QInputDialog.getText(self, "Rename model", "New name:", text=entry.name)
        if ok:
            self.rename_model(entry, name)

    def rename_model(self, entry: LibraryEntry, name: str) -> LibraryEntry | None:
        name = name.strip()
        if not name:
            self._error("Cannot rename the model", ModelPackageError("the name cannot be empty"))
            return None
        if name == entry.name:
            return entry
        try:
            new = self.library.rename(entry.path, name)
            md = card_path(entry.path)
            if md.is_file() and new.path != entry.path:
                md.replace(card_path(new.path))
        except (MetaScopeError, OSError) as exc:
            self._error("Cannot rename the model", exc)
            return None
        self.refresh(select=new.path)
        self.library_changed.emit()
        return new

    def _on_delete_clicked(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        answer = QMessageBox.question(
            self,
            "Delete model",
            f"Delete “{entry.name}” from the model library?\n\n{entry.path}\n\nThis cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_model(entry)

    def delete_model(self, entry: LibraryEntry) -> None:
        try:
            self.library.remove(entry.path)
            card_path(entry.path).unlink(missing_ok=True)
        except (MetaScopeError, OSError) as exc:
            self._error("Cannot delete the model", exc)
            return
        self.refresh()
        self.library_changed.emit()

    def _on_verify_clicked(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        try:
            digest = self.library.verify(entry.path)
        except (MetaScopeError, OSError) as exc:
            self._error("Integrity check failed", exc)
            return
        QMessageBox.information(self, "Integrity check", f"{entry.name}: the file is intact.\n\nsha256 {digest}")

    def _on_copy_hash_clicked(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            QGuiApplication.clipboard().setText(entry.sha256)

    def _error(self, title: str, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, MetaScopeError) else f"{type(exc).__name__}: {exc}"
        QMessageBox.warning(self, title, msg)
