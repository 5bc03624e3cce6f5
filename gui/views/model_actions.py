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


class _DatasetActions(QWidget):
    """Shared by the genomics and patch panels: a dataset picker (datasets of ``KIND``), a row of
    action buttons, the running command, and the metrics and plots of its output folder."""

    KIND = ""
    LABEL = "Dataset:"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model: Path | None = None
        self._out: Path | None = None
        self.combo = QComboBox()
        self.runner = CliRunner()  # each panel connects its finished signal to its own results
        self.metrics_label = QLabel()
        self.metrics_label.setTextFormat(Qt.TextFormat.RichText)
        self.gallery = PngGallery(min_height=220)

    def _lay_out(self, buttons: tuple[QPushButton, ...]) -> None:
        form = QFormLayout()
        form.addRow(self.LABEL, self.combo)
        row = QHBoxLayout()
        for b in buttons:
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
        self.combo.clear()
        for d in datasets:
            if dataset_kind(d) == self.KIND:
                self.combo.addItem(d.get("name") or Path(d["path"]).name, self._item_data(d))

    def _item_data(self, dataset: dict[str, Any]) -> Any:
        return dataset


class GenomicsActions(_DatasetActions):
    """Evaluate or predict a mutation study with a genomics classifier (onnxruntime only)."""

    KIND = GENOMICS_STUDY
    LABEL = "Study:"
    review_samples_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.study_combo = self.combo
        self.evaluate_button = QPushButton("Evaluate on study")
        self.evaluate_button.setToolTip("AUC with CI, ROC, calibration, per-tumour-type table (needs the labels)")
        self.evaluate_button.clicked.connect(self.evaluate)
        self.predict_button = QPushButton("Predict study")
        self.predict_button.setToolTip("A prediction for every sample of the study")
        self.predict_button.clicked.connect(self.predict)
        self.samples_button = QPushButton("Review samples")
        self.samples_button.setEnabled(False)
        self.samples_button.clicked.connect(self._on_samples_clicked)
        self.runner.finished.connect(self._on_finished)
        self.runner.busy_changed.connect(self._on_busy)
        self._lay_out((self.evaluate_button, self.predict_button, self.samples_button))

    def _item_data(self, dataset: dict[str, Any]) -> Any:
        return dataset["path"]

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


class PatchActions(_DatasetActions):
    """Evaluate a patch classifier on a labelled patch dataset (``metascope evaluate``), then
    review its patches, the most confident errors first."""

    KIND = PATCHES
    review_patches_requested = Signal(str)  # the evaluation folder

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.dataset_combo = self.combo
        self.evaluate_button = QPushButton("Evaluate on dataset")
        self.evaluate_button.setToolTip("AUC with CI, ROC, calibration and every patch's probability (needs labels)")
        self.evaluate_button.clicked.connect(self.evaluate)
        self.review_button = QPushButton("Review patches")
        self.review_button.setToolTip("The patches, false positives and false negatives first, with their images")
        self.review_button.setEnabled(False)
        self.review_button.clicked.connect(self._on_review_clicked)
        self.runner.finished.connect(self._on_finished)
        self.runner.busy_changed.connect(lambda busy: self.evaluate_button.setEnabled(not busy))
        self._lay_out((self.evaluate_button, self.review_button))

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
