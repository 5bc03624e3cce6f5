"""What a genomics / expression model in the library can do, below its model card.

* ``patch_classification``: evaluate on a patch dataset, then review its patches (Patch review view).
* ``genomics_classifier``: evaluate on a study (metrics, plots, samples) or predict a study.
* ``expression_embedding``: the one-shot panel (N-way test, classify, markers).
* ``expression_generator``: open it in the Generator view (generate + realism).
Every action is a ``metascope`` command run in a worker (:class:`gui.views.cli_runner.CliRunner`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from gui.modalities import GENOMICS_STUDY, PATCHES, dataset_kind, read_json
from gui.views.cli_runner import CliRunner
from gui.views.modality_results import PngGallery, metrics_table_html, per_group_html
from gui.views.oneshot_panel import OneShotPanel, results_dir

ACTION_TASKS = ("patch_classification", "genomics_classifier", "expression_embedding", "expression_generator")


def _datasets() -> list[dict[str, Any]]:
    from gui.views.datasets_view import DatasetStore

    return DatasetStore().items()


class GenomicsActions(QWidget):
    """Evaluate or predict a mutation study with a genomics classifier (onnxruntime only)."""

    review_samples_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model: Path | None = None
        self._out: Path | None = None
        self.study_combo = QComboBox()
        self.evaluate_button = QPushButton("Evaluate on study")
        self.evaluate_button.setToolTip("AUC with CI, ROC, calibration, per-tumour-type table (needs the labels)")
        self.evaluate_button.clicked.connect(self.evaluate)
        self.predict_button = QPushButton("Predict study")
        self.predict_button.setToolTip("A prediction for every sample of the study")
        self.predict_button.clicked.connect(self.predict)
        self.samples_button = QPushButton("Review samples")
        self.samples_button.setEnabled(False)
        self.samples_button.clicked.connect(self._on_samples_clicked)
        self.runner = CliRunner()
        self.runner.finished.connect(self._on_finished)
        self.runner.busy_changed.connect(self._on_busy)
        self.metrics_label = QLabel()
        self.metrics_label.setTextFormat(Qt.TextFormat.RichText)
        self.gallery = PngGallery(min_height=220)
        form = QFormLayout()
        form.addRow("Study:", self.study_combo)
        row = QHBoxLayout()
        for b in (self.evaluate_button, self.predict_button, self.samples_button):
            row.addWidget(b)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.runner)
        lay.addWidget(self.metrics_label)
        lay.addWidget(self.gallery, 1)

    def set_model(self, model: Path, datasets: list[dict[str, Any]]) -> None:
        self.model = model
        self.study_combo.clear()
        for d in datasets:
            if dataset_kind(d) == GENOMICS_STUDY:
                self.study_combo.addItem(d.get("name") or Path(d["path"]).name, d["path"])

    def _study(self) -> str | None:
        study = self.study_combo.currentData()
        if not study or self.model is None:
            self.runner.message.show_message("Import a mutation study in the Datasets view first.", "error")
            return None
        return str(study)

    def evaluate(self) -> Any:
        study = self._study()
        if study is None or self.model is None:
            return None
        self._out = results_dir("evaluate", self.model)
        return self.runner.start("evaluate", ["genomics", "evaluate", str(self.model), "--study", study,
                                              "--out", str(self._out)], "Evaluating…")

    def predict(self) -> Any:
        study = self._study()
        if study is None or self.model is None:
            return None
        self._out = results_dir("predict", self.model)
        return self.runner.start("predict", ["genomics", "predict", str(self.model), "--study", study,
                                             "--out", str(self._out / "predictions.csv")], "Predicting…")

    def _on_busy(self, busy: bool) -> None:
        self.evaluate_button.setEnabled(not busy)
        self.predict_button.setEnabled(not busy)

    def _on_finished(self, tag: str, _result: Any) -> None:
        if self._out is None:
            return
        if tag == "evaluate":
            self.metrics_label.setText(metrics_table_html(read_json(self._out / "metrics.json"))
                                       + per_group_html(self._out))
            self.gallery.set_folder(self._out)
        self.samples_button.setEnabled((self._out / "predictions.csv").is_file())

    def _on_samples_clicked(self) -> None:
        if self._out is not None:
            self.review_samples_requested.emit(str(self._out / "predictions.csv"))


class PatchActions(QWidget):
    """Evaluate a patch classifier on a labelled patch dataset (``metascope evaluate``), then
    review its patches, the most confident errors first."""

    review_patches_requested = Signal(str)  # the evaluation folder

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model: Path | None = None
        self._out: Path | None = None
        self.dataset_combo = QComboBox()
        self.evaluate_button = QPushButton("Evaluate on dataset")
        self.evaluate_button.setToolTip("AUC with CI, ROC, calibration and every patch's probability (needs labels)")
        self.evaluate_button.clicked.connect(self.evaluate)
        self.review_button = QPushButton("Review patches")
        self.review_button.setToolTip("The patches, false positives and false negatives first, with their images")
        self.review_button.setEnabled(False)
        self.review_button.clicked.connect(self._on_review_clicked)
        self.runner = CliRunner()
        self.runner.finished.connect(self._on_finished)
        self.runner.busy_changed.connect(lambda busy: self.evaluate_button.setEnabled(not busy))
        self.metrics_label = QLabel()
        self.metrics_label.setTextFormat(Qt.TextFormat.RichText)
        self.gallery = PngGallery(min_height=220)
        form = QFormLayout()
        form.addRow("Dataset:", self.dataset_combo)
        row = QHBoxLayout()
        for b in (self.evaluate_button, self.review_button):
            row.addWidget(b)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.runner)
        lay.addWidget(self.metrics_label)
        lay.addWidget(self.gallery, 1)

    def set_model(self, model: Path, datasets: list[dict[str, Any]]) -> None:
        self.model = model
        self.dataset_combo.clear()
        for d in datasets:
            if dataset_kind(d) == PATCHES:
                self.dataset_combo.addItem(d.get("name") or Path(d["path"]).name, d)

    def evaluate(self) -> Any:
        item = self.dataset_combo.currentData()
        if not item or self.model is None:
            self.runner.message.show_message("Import a labelled patch dataset in the Datasets view first.", "error")
            return None
        self._out = results_dir("evaluate", self.model)
        args = ["evaluate", str(self.model), "--data", str(item["path"]), "--out", str(self._out)]
        if item.get("fmt") and item["fmt"] != "auto":
            args += ["--format", str(item["fmt"])]
        if item.get("mpp"):
            args += ["--mpp", str(item["mpp"])]
        return self.runner.start("evaluate", args, "Evaluating…")

    def _on_finished(self, _tag: str, _result: Any) -> None:
        if self._out is None:
            return
        self.metrics_label.setText(metrics_table_html(read_json(self._out / "metrics.json")))
        self.gallery.set_folder(self._out)
        self.review_button.setEnabled((self._out / "predictions.csv").is_file())

    def _on_review_clicked(self) -> None:
        if self._out is not None:
            self.review_patches_requested.emit(str(self._out))


class GeneratorActions(QWidget):
    """A generator model: generation and realism live in the Generator view."""

    generator_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model: Path | None = None
        self.open_button = QPushButton("Generate profiles and check realism…")
        self.open_button.clicked.connect(lambda: self.model and self.generator_requested.emit(str(self.model)))
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.open_button)
        lay.addStretch(1)

    def set_model(self, model: Path) -> None:
        self.model = model


class ModelActionsPanel(QWidget):
    """The actions of the selected model's task (hidden for tasks without any)."""

    review_samples_requested = Signal(str)
    review_patches_requested = Signal(str)
    generator_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.patches = PatchActions()
        self.genomics = GenomicsActions()
        self.oneshot = OneShotPanel()
        self.generator = GeneratorActions()
        self.stack = QStackedWidget()
        for w in (self.patches, self.genomics, self.oneshot, self.generator):
            self.stack.addWidget(w)
        self.patches.review_patches_requested.connect(self.review_patches_requested)
        self.genomics.review_samples_requested.connect(self.review_samples_requested)
        self.oneshot.review_samples_requested.connect(self.review_samples_requested)
        self.generator.generator_requested.connect(self.generator_requested)
        self.title = QLabel()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.stack, 1)
        self.hide()

    def show_model(self, task: str, model: Path, training_data: dict[str, Any] | None = None) -> None:
        if task not in ACTION_TASKS:
            self.hide()
            return
        datasets = _datasets()
        self.title.setText("<b>Use this model</b>")
        if task == "patch_classification":
            self.patches.set_model(model, datasets)
            self.stack.setCurrentWidget(self.patches)
        elif task == "genomics_classifier":
            self.genomics.set_model(model, datasets)
            self.stack.setCurrentWidget(self.genomics)
        elif task == "expression_embedding":
            run = str((training_data or {}).get("run_dir") or "")
            self.oneshot.set_model(model, datasets, run)
            self.stack.setCurrentWidget(self.oneshot)
        else:
            self.generator.set_model(model)
            self.stack.setCurrentWidget(self.generator)
        self.show()
