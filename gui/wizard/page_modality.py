"""Wizard pages of the genomics and expression run kinds: model settings and review.

The dataset page lists these kinds beside patch classification; for them the wizard goes
dataset -> :class:`ModalityModelPage` -> :class:`ModalityReviewPage`. The result is a
:class:`ModalityRequest`: the exact ``metascope train KIND ...`` command, which the Training view
spawns like a patch run (same run folder, events, Cancel and resume).
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from engine.paths import home_dir, runs_dir
from engine.runs import new_run_dir
from gui.cli_job import command_line, run_cli, supported_options
from gui.modalities import (
    DATASET_KIND_LABELS,
    GENOMICS_MODELS,
    RUN_KINDS,
    dataset_kind,
    deg_args,
    deg_genes_file,
    genomics_train_args,
    matrix_options,
    siamese_train_args,
    wgan_train_args,
)
from gui.wizard.common import MessageLabel
from gui.workers import Worker, start_worker

#: Wizard tasks of the new kinds: (run kind, label, description).
MODALITY_TASKS = (
    ("genomics", "Mutations: primary vs metastasis",
     "Predicts whether a tumour sample is a primary or a metastasis from its mutations and clinical data "
     "(a cBioPortal study)."),
    ("siamese", "Expression: one-shot tumour type (Siamese)",
     "Learns an expression embedding that tells the tumour type of a sample from one example per type, "
     "including types never seen in training."),
    ("wgan", "Expression: synthetic profiles (WGAN-GP)",
     "Learns to generate realistic expression profiles of chosen genes, conditioned on covariates."),
)


@dataclass(frozen=True, slots=True)
class ModalityRequest:
    """A training run of a genomics/expression kind: the ``metascope`` arguments to spawn."""

    kind: str
    args: tuple[str, ...]
    run_dir: Path

    def cli_args(self) -> list[str]:
        return list(self.args)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "args": list(self.args)}


def label_columns(item: dict[str, Any] | None) -> dict[str, Any]:
    """Sample-table columns of an expression dataset's report (name -> distinct/missing/counts)."""
    cols = (item or {}).get("report", {}).get("label_columns", {})
    return cols if isinstance(cols, dict) else {}


class ModalityDatasetPicker(QWidget):
    """A combo of the remembered datasets of one kind (imported in the Datasets view)."""

    changed = Signal()

    def __init__(self, items: list[dict[str, Any]] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._items = [d for d in items or [] if d.get("kind")]
        self.combo = QComboBox()
        self.combo.currentIndexChanged.connect(lambda _i: self.changed.emit())
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: palette(mid);")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addWidget(self.hint)
        self._kind = ""

    def set_kind(self, kind: str) -> None:
        self._kind = kind
        self.combo.blockSignals(True)
        self.combo.clear()
        for item in self._items:
            if dataset_kind(item) == kind:
                self.combo.addItem(f"{item.get('name') or Path(item['path']).name}  —  {item['path']}", item)
        self.combo.blockSignals(False)
        self.hint.setText("" if self.combo.count() else
                          f"No {DATASET_KIND_LABELS.get(kind, kind).lower()} imported yet: import one in the "
                          "Datasets view first.")
        self.changed.emit()

    def add(self, item: dict[str, Any]) -> None:
        self._items = [item, *(d for d in self._items if d["path"] != item["path"])]
        self.set_kind(dataset_kind(item))
        self.select(item["path"])

    def select(self, path: str) -> None:
        for i in range(self.combo.count()):
            if self.combo.itemData(i)["path"] == path:
                self.combo.setCurrentIndex(i)

    def item(self) -> dict[str, Any] | None:
        return self.combo.currentData()


def deg_out_dir(matrix: str, group: str) -> Path:
    digest = hashlib.sha1(f"{Path(matrix).resolve()}|{group}".encode()).hexdigest()[:10]
    return home_dir() / "deg" / f"{Path(matrix).name.split('.')[0]}-{digest}"


def _run_deg(matrix: str, samples: str, group: str, progress: Any = None, cancel: Any = None,
             partial: Any = None) -> str:
    out = deg_out_dir(matrix, group)
    run_cli(deg_args(matrix, samples, group, out), progress=progress, cancel=cancel)
    genes = deg_genes_file(out)
    if genes is None:
        from engine.errors import OutputError

        raise OutputError(f"expression deg wrote no genes.txt into {out}")
    return str(genes)


class GeneSelector(QWidget):
    """Genes for the generator: a list file, or the genes most different between two groups (DEG)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.matrix = ""
        self.samples = ""
        self.genes_path = ""
        self._worker: Worker | None = None
        self.file_radio = QRadioButton("Gene list file")
        self.deg_radio = QRadioButton("Differential expression:")
        group = QButtonGroup(self)
        group.addButton(self.file_radio)
        group.addButton(self.deg_radio)
        self.file_radio.setChecked(True)
        self.file_edit = QLineEdit()
        self.file_edit.setPlaceholderText("GENES.txt: one gene per line (a pathway)")
        self.file_button = QPushButton("Browse…")
        self.file_button.clicked.connect(self._on_browse_clicked)
        self.group_edit = QLineEdit()
        self.group_edit.setPlaceholderText("COL=A,B  e.g. sample_type=tumour,normal")
        self.deg_button = QPushButton("Select genes")
        self.deg_button.setToolTip("Run `metascope expression deg` (Welch / Mann-Whitney, corrected p, fold change)")
        self.deg_button.clicked.connect(self.run_deg)
        self.message = MessageLabel()
        for w in (self.file_radio, self.deg_radio):
            w.toggled.connect(self._on_changed)
        self.file_edit.textChanged.connect(self._on_changed)
        self.group_edit.textChanged.connect(self._on_group_changed)
        r1 = QHBoxLayout()
        r1.addWidget(self.file_radio)
        r1.addWidget(self.file_edit, 1)
        r1.addWidget(self.file_button)
        r2 = QHBoxLayout()
        r2.addWidget(self.deg_radio)
        r2.addWidget(self.group_edit, 1)
        r2.addWidget(self.deg_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(r1)
        lay.addLayout(r2)
        lay.addWidget(self.message)

    def set_dataset(self, matrix: str, samples: str) -> None:
        self.matrix, self.samples = matrix, samples

    def genes(self) -> str:
        """The genes file to train on (empty until chosen or selected)."""
        if self.file_radio.isChecked():
            text = self.file_edit.text().strip()
            return text if text and Path(text).is_file() else ""
        return self.genes_path

    def describe(self) -> str:
        if self.deg_radio.isChecked():
            return f"DEG {self.group_edit.text().strip()} → {self.genes_path or '(not run yet)'}"
        return self.file_edit.text().strip()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _on_browse_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a gene list", self.file_edit.text(),
                                              "Gene lists (*.txt *.csv);;All files (*)")
        if path:
            self.file_edit.setText(path)
            self.file_radio.setChecked(True)

    def _on_group_changed(self) -> None:
        self.genes_path = ""
        self.deg_radio.setChecked(True)
        self._on_changed()

    def _on_changed(self, *_a: Any) -> None:
        if self.file_radio.isChecked() and self.file_edit.text().strip() and not self.genes():
            self.message.show_message(f"Gene list not found: {self.file_edit.text().strip()}", "error")
        elif self.deg_radio.isChecked() and not self.genes_path:
            self.message.show_message("Click “Select genes” to run the differential expression test.", "info")
        elif not self.busy:
            self.message.clear_message()
        self.changed.emit()

    def run_deg(self) -> Worker | None:
        group = self.group_edit.text().strip()
        if "=" not in group or not self.matrix or not self.samples:
            self.message.show_message("DEG needs a matrix with a sample table and a group COL=A,B.", "error")
            return None
        self.deg_radio.setChecked(True)
        worker = Worker(_run_deg, self.matrix, self.samples, group)
        worker.signals.progress.connect(lambda ev: self.message.show_message(ev.message, "info"))
        worker.signals.finished.connect(self._on_deg_finished)
        worker.signals.failed.connect(self._on_deg_failed)
        self._worker = worker
        self.deg_button.setEnabled(False)
        self.message.show_message("Testing every gene…", "info")
        start_worker(worker)
        return worker

    def _on_deg_finished(self, path: str) -> None:
        self._worker = None
        self.deg_button.setEnabled(True)
        self.genes_path = path
        n = sum(1 for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip())
        self.message.show_message(f"✓ {n} genes selected ({path}); volcano plot beside it.", "ok")
        self.changed.emit()

    def _on_deg_failed(self, message: str, _u: bool, _tb: str) -> None:
        self._worker = None
        self.deg_button.setEnabled(True)
        self.message.show_message(message, "error")
        self.changed.emit()


def _spin(lo: int, hi: int, value: int, special: str = "") -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setValue(value)
    if special:
        s.setSpecialValueText(special)
    return s


class ModalityModelPage(QWizardPage):
    """Per-kind settings: genomics model + folds; Siamese label column + test types; WGAN genes + covariates."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Model and settings")
        self.stack = QStackedWidget()
        # genomics
        g = QWidget()
        gf = QFormLayout(g)
        self.genomics_model = QComboBox()
        for key, label in GENOMICS_MODELS:
            self.genomics_model.addItem(f"{key}: {label}", key)
        self.genomics_folds = _spin(0, 20, 5, "single split")
        self.genomics_folds.setToolTip("Patient-grouped K-fold cross-validation: pooled out-of-fold results")
        self.genomics_epochs = _spin(0, 1000, 0, "default")
        self.genomics_features = QComboBox()
        self.genomics_features_label = QLabel("Feature groups:")
        gf.addRow("Model:", self.genomics_model)
        gf.addRow("Folds:", self.genomics_folds)
        gf.addRow("Epochs (networks):", self.genomics_epochs)
        gf.addRow(self.genomics_features_label, self.genomics_features)
        self.genomics_drop = QLineEdit()
        self.genomics_drop.setPlaceholderText("more columns never to use as features (label leaks), comma-separated")
        self.genomics_drop_label = QLabel("Also drop:")
        gf.addRow(self.genomics_drop_label, self.genomics_drop)
        # siamese
        s = QWidget()
        sf = QFormLayout(s)
        self.siamese_label = QComboBox()
        self.siamese_label.currentIndexChanged.connect(self._on_label_changed)
        self.siamese_test_types = QLineEdit()
        self.siamese_test_types.setPlaceholderText("types held out of training, comma-separated (empty: engine default)")
        self.siamese_types_hint = QLabel()
        self.siamese_types_hint.setWordWrap(True)
        self.siamese_types_hint.setStyleSheet("color: palette(mid);")
        self.siamese_epochs = _spin(0, 1000, 0, "default")
        sf.addRow("Label column:", self.siamese_label)
        sf.addRow("Test types:", self.siamese_test_types)
        sf.addRow("", self.siamese_types_hint)
        sf.addRow("Epochs:", self.siamese_epochs)
        # wgan
        w = QWidget()
        wf = QFormLayout(w)
        self.genes = GeneSelector()
        self.covariates = QLineEdit()
        self.covariates.setPlaceholderText("age,sex,stage")
        self.where = QLineEdit()
        self.where.setPlaceholderText("COL=VALUE: train on a subset, e.g. sample_type=tumour (optional)")
        self.wgan_epochs = _spin(0, 100000, 0, "default")
        wf.addRow("Genes:", self.genes)
        wf.addRow("Covariates:", self.covariates)
        wf.addRow("Only samples with:", self.where)
        wf.addRow("Epochs:", self.wgan_epochs)
        for page in (g, s, w):
            self.stack.addWidget(page)
        self.message = MessageLabel()
        lay = QVBoxLayout(self)
        lay.addWidget(self.stack)
        lay.addWidget(self.message)
        lay.addStretch(1)
        self.genes.changed.connect(self.completeChanged)

    def kind(self) -> str:
        return self.wizard().dataset_page.task() if self.wizard() else "genomics"

    def item(self) -> dict[str, Any] | None:
        return self.wizard().dataset_page.modality_picker.item() if self.wizard() else None

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        kind = self.kind()
        self.stack.setCurrentIndex(list(RUN_KINDS).index(kind))
        self.setSubTitle(RUN_KINDS[kind][1])
        item = self.item() or {}
        if kind == "genomics":
            self._init_feature_groups()
        cols = label_columns(item)
        if kind == "siamese":
            self.siamese_label.blockSignals(True)
            self.siamese_label.clear()
            for name, entry in cols.items():
                self.siamese_label.addItem(f"{name} ({entry.get('distinct', '?')} values)", name)
            guess = next((i for i, n in enumerate(cols) if n.lower() in ("type", "cancer_type", "tumour_type",
                                                                           "tumor_type", "label")), 0)
            self.siamese_label.setCurrentIndex(guess)
            self.siamese_label.blockSignals(False)
            self._on_label_changed()
        if kind == "wgan":
            self.genes.set_dataset(item.get("path", ""), item.get("samples", ""))
            if not self.covariates.text():
                self.covariates.setText(",".join(c for c in cols if c.lower() in ("age", "sex", "gender", "stage")))
        self.completeChanged.emit()

    def _init_feature_groups(self) -> None:
        opts = supported_options(["train", "genomics"])
        flag = next((f for f in ("--features", "--feature-groups") if f in opts), "")
        self.genomics_features.clear()
        if flag:
            for key, label in (("all", "all features"), ("clinical", "clinical only"), ("mutations", "mutations only")):
                self.genomics_features.addItem(label, key)
        self.genomics_features.setProperty("flag", flag)
        self.genomics_features.setVisible(bool(flag))
        self.genomics_features_label.setVisible(bool(flag))
        self._drop_flag = "--drop-columns" in opts
        self.genomics_drop.setVisible(self._drop_flag)
        self.genomics_drop_label.setVisible(self._drop_flag)

    def _on_label_changed(self, *_a: Any) -> None:
        entry = label_columns(self.item()).get(self.siamese_label.currentData() or "", {})
        counts = entry.get("counts", {}) if isinstance(entry, dict) else {}
        self.siamese_types_hint.setText(
            "Types: " + ", ".join(f"{k} ({v})" for k, v in counts.items()) if counts else "")

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        kind = self.kind()
        if kind == "siamese":
            return self.siamese_label.count() > 0
        if kind == "wgan":
            return bool(self.genes.genes()) and not self.genes.busy
        return True

    def train_args(self, run_dir: Path) -> list[str]:
        """The ``metascope train KIND`` arguments of the current settings."""
        kind, item = self.kind(), self.item() or {}
        if kind == "genomics":
            flag = str(self.genomics_features.property("flag") or "")
            extra = [flag, str(self.genomics_features.currentData())] if flag and self.genomics_features.count() else []
            drop = ",".join(c.strip() for c in self.genomics_drop.text().split(",") if c.strip())
            if drop and getattr(self, "_drop_flag", False):
                extra += ["--drop-columns", drop]
            return genomics_train_args(item.get("path", ""), run_dir, str(self.genomics_model.currentData()),
                                       self.genomics_folds.value(), self.genomics_epochs.value(), extra)
        if kind == "siamese":
            types = [t for t in self.siamese_test_types.text().split(",") if t.strip()]
            return siamese_train_args(item.get("path", ""), item.get("samples", ""),
                                      str(self.siamese_label.currentData()), run_dir, types, self.siamese_epochs.value(),
                                      matrix_options(item, ["train", "siamese"]))
        covs = [c for c in self.covariates.text().split(",") if c.strip()]
        return wgan_train_args(item.get("path", ""), item.get("samples", ""), self.genes.genes(), covs, run_dir,
                               self.where.text(), self.wgan_epochs.value())


class ModalityReviewPage(QWizardPage):
    """Run name, the exact command that will run, and Start."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Review and start")
        self.setSubTitle("Training runs in the background; you can keep working, cancel, or resume later.")
        self.request: ModalityRequest | None = None
        self.name_edit = QLineEdit()
        self.name_edit.textChanged.connect(self._refresh)
        self.location = QLabel()
        self.location.setStyleSheet("color: palette(mid);")
        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.command = QPlainTextEdit()
        self.command.setReadOnly(True)
        self.command.setMaximumHeight(110)
        self.message = MessageLabel()
        form = QFormLayout()
        form.addRow("Run name:", self.name_edit)
        form.addRow("Saved in:", self.location)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.details)
        lay.addWidget(QLabel("<b>Command</b> (the same run from a terminal):"))
        lay.addWidget(self.command)
        lay.addWidget(self.message)
        lay.addStretch(1)
        self.setButtonText(QWizard.WizardButton.FinishButton, "Start training")

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        wiz = self.wizard()
        kind = wiz.dataset_page.task()
        item = wiz.dataset_page.modality_picker.item() or {}
        if not self.name_edit.text():
            self.name_edit.setText(f"{kind}-{item.get('name', 'data')}")
        self.location.setText(str(runs_dir()))
        self._refresh()

    def run_name(self) -> str:
        return self.name_edit.text().strip()

    def preview_dir(self) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.run_name()) or "run"
        return runs_dir() / f"YYYYmmdd-HHMMSS-{safe}"

    def command_text(self) -> str:
        wiz = self.wizard()
        return command_line(wiz.modality_model_page.train_args(self.preview_dir())) if wiz else ""

    def _refresh(self, *_a: Any) -> None:
        wiz = self.wizard()
        if wiz is None:
            return
        kind = wiz.dataset_page.task()
        item = wiz.dataset_page.modality_picker.item() or {}
        self.details.setText(
            f"<b>{html.escape(RUN_KINDS[kind][1])}</b> on {html.escape(item.get('path', '?'))}"
            + (f" with {html.escape(item['samples'])}" if item.get("samples") else ""))
        self.command.setPlainText(self.command_text())
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        return any(c.isalnum() for c in self.run_name())

    def validatePage(self) -> bool:  # noqa: N802 (Qt override)
        wiz = self.wizard()
        run = new_run_dir(self.run_name())
        self.request = ModalityRequest(wiz.dataset_page.task(), tuple(wiz.modality_model_page.train_args(run)), run)
        return True
