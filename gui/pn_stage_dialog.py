"""The pN stage dialog: a heatmap folder (one slide per lymph node) -> each patient's pN category.

A client of :mod:`engine.infer.pn_stage` (the same as ``metascope pn-stage``). Reading the
folder's ``heatmap.json`` files is fast, so it runs on the GUI thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.errors import MetaScopeError
from engine.infer.pn_stage import PatientStage, stage_patients, write_stages_csv
from gui.dialogs import show_error
from gui.settings import Settings

HEADERS = ("Patient", "pN stage", "Nodes", "Largest lesion (mm)", "Per-node categories", "Note")
DIR_KEY = "dialogs/last_export_dir"


class PnStageDialog(QDialog):
    """Pick a ``metascope heatmap --out`` folder (and optionally a ``slide,patient`` CSV); see the
    pN category of each patient; export the table as CSV."""

    #: number of patients shown after a successful read
    staged = Signal(int)

    def __init__(self, settings: Settings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.patients: tuple[PatientStage, ...] = ()
        self.setWindowTitle("pN Stage of a Heatmap Folder")
        self.resize(900, 480)

        self.folder_edit = QLineEdit(self)
        self.folder_edit.setPlaceholderText("folder written by Export Heatmap or `metascope heatmap --out`")
        self.patients_edit = QLineEdit(self)
        self.patients_edit.setPlaceholderText("optional: CSV with columns slide,patient (else CAMELYON17 names)")
        form = QFormLayout()
        form.addRow("Heatmap folder:", self._with_browse(self.folder_edit, self._browse_folder))
        form.addRow("Patients CSV:", self._with_browse(self.patients_edit, self._browse_patients))

        self.stage_button = QPushButton("Show pN Stages", self)
        self.stage_button.setDefault(True)
        self.stage_button.clicked.connect(self._on_stage_button_clicked)
        self.table = QTableWidget(0, len(HEADERS), self)
        self.table.setHorizontalHeaderLabels(list(HEADERS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)  # one line per patient; the full text is in the tooltip
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.summary_label = QLabel(
            "One slide is one lymph node. pN1 / pN2 / pN3: metastases in 1-3 / 4-9 / 10+ nodes with at least one "
            "macrometastasis (nodes with only isolated tumour cells do not count); pNX: a node is unknown.",
            self,
        )
        self.summary_label.setWordWrap(True)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.export_button = buttons.addButton("Export CSV…", QDialogButtonBox.ButtonRole.ActionRole)
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(lambda: self.export_csv())
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.stage_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.summary_label)
        layout.addWidget(buttons)

    def _with_browse(self, edit: QLineEdit, slot: object) -> QWidget:
        box = QWidget(self)
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        browse = QPushButton("Browse…", box)
        browse.clicked.connect(slot)
        row.addWidget(browse)
        return box

    def _start_dir(self) -> str:
        text = self.folder_edit.text().strip()
        if text:
            return text
        return str(self.settings.get(DIR_KEY)) if self.settings is not None else ""

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a heatmap folder", self._start_dir())
        if path:
            self.folder_edit.setText(path)
            self.stage(path, self.patients_edit.text().strip() or None)

    def _browse_patients(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a patients CSV (slide,patient)", self._start_dir(), "CSV files (*.csv);;All files (*)"
        )
        if path:
            self.patients_edit.setText(path)

    def _on_stage_button_clicked(self) -> None:
        folder = self.folder_edit.text().strip()
        if not folder:
            show_error(self, "pN stage", "Choose a heatmap folder first.")
            return
        self.stage(folder, self.patients_edit.text().strip() or None)

    # -- work ------------------------------------------------------------------------------
    def stage(self, folder: str | os.PathLike[str], patients_csv: str | os.PathLike[str] | None = None) -> bool:
        """Read ``folder`` (grouped by ``patients_csv`` or CAMELYON17 names) and show the patients.

        Returns:
            False when the input is unusable (an error dialog said why; the table is cleared).
        """
        self.folder_edit.setText(str(folder))
        self.patients_edit.setText("" if patients_csv is None else str(patients_csv))
        try:
            staging = stage_patients(folder, patients_csv)
        except MetaScopeError as exc:
            self._show([], [])
            show_error(self, "pN stage", str(exc))
            return False
        if self.settings is not None:
            self.settings.set(DIR_KEY, str(Path(folder).expanduser().parent))
        self._show(staging.patients, staging.notes)
        self.staged.emit(len(staging.patients))
        return True

    def _show(self, patients: Sequence[PatientStage], notes: Sequence[str]) -> None:
        self.patients = tuple(patients)
        self.table.setRowCount(len(self.patients))
        for r, p in enumerate(self.patients):
            largest = p.largest_lesion_mm
            cells = (
                p.patient,
                p.stage,
                f"{p.nodes_with_metastasis} of {len(p.nodes)} with metastasis",
                "" if largest is None else f"{largest:.2f}",
                p.node_categories,
                p.note,
            )
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c in (4, 5):
                    item.setToolTip(text.replace("; ", "\n"))
                self.table.setItem(r, c, item)
        self.export_button.setEnabled(bool(self.patients))
        if self.patients:
            counts: dict[str, int] = {}
            for p in self.patients:
                counts[p.stage] = counts.get(p.stage, 0) + 1
            text = f"{len(self.patients)} patient(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
            if notes:
                text += f". Left out or unknown: {'; '.join(notes)}"
            self.summary_label.setText(text)

    def export_csv(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the patients shown to ``path`` (asked for when ``None``); ``None`` if nothing was written."""
        if not self.patients:
            return None
        if path is None:
            start = str(Path(self._start_dir()) / "pn_stages.csv")
            path, _ = QFileDialog.getSaveFileName(self, "Export pN stages", start, "CSV files (*.csv)")
            if not path:
                return None
        try:
            return write_stages_csv(path, self.patients)
        except MetaScopeError as exc:
            show_error(self, "Export pN stages", str(exc))
            return None
