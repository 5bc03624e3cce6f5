"""The training wizard: dataset -> split -> model -> settings -> review; emits a ``TrainConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QWidget, QWizard

from gui.modalities import PATCHES, dataset_kind
from gui.wizard.common import DatasetSummary
from gui.wizard.page_dataset import DatasetPage
from gui.wizard.page_modality import ModalityModelPage, ModalityReviewPage
from gui.wizard.page_model import ModelPage
from gui.wizard.page_review import ReviewPage
from gui.wizard.page_settings import SettingsPage
from gui.wizard.page_split import SplitPage


class TrainingWizard(QWizard):
    """Builds a validated :class:`engine.train.config.TrainConfig` and a fresh run folder.

    On Finish, :attr:`start_requested` carries ``(config, run_dir)``; the Training view starts the
    run. Each page checks its own inputs and shows what is wrong before Next is enabled.
    """

    start_requested = Signal(object, object)  # TrainConfig, Path

    def __init__(
        self,
        parent: QWidget | None = None,
        recent_datasets: list[dict[str, Any]] | None = None,
        dataset: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Train a new model")
        self.setWizardStyle(QWizard.WizardStyle.ModernStyle)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.setOption(QWizard.WizardOption.HaveHelpButton, False)
        self.setMinimumSize(760, 560)

        self.dataset_page = DatasetPage(recent_datasets)
        self.split_page = SplitPage()
        self.model_page = ModelPage()
        self.settings_page = SettingsPage()
        self.review_page = ReviewPage()
        for page in (self.dataset_page, self.split_page, self.model_page, self.settings_page, self.review_page):
            self.addPage(page)
        # genomics / expression kinds: dataset -> model and settings -> review (the exact command)
        self.modality_model_page = ModalityModelPage()
        self.modality_review_page = ModalityReviewPage()
        self._modality_model_id = self.addPage(self.modality_model_page)
        self._modality_review_id = self.addPage(self.modality_review_page)
        self.accepted.connect(self._on_accepted)
        if dataset and dataset_kind(dataset) != PATCHES:
            self.dataset_page.set_modality_dataset(dataset)
        elif dataset:
            self.dataset_page.set_dataset(dataset["path"], dataset.get("fmt", "auto"), dataset.get("mpp"))

    def nextId(self) -> int:  # noqa: N802 (Qt override)
        page = self.currentPage()
        if page is self.dataset_page and self.dataset_page.is_modality():
            return self._modality_model_id
        if page is self.modality_model_page:
            return self._modality_review_id
        if page is self.review_page or page is self.modality_review_page:
            return -1
        return super().nextId()

    @property
    def summary(self) -> DatasetSummary | None:
        return self.dataset_page.summary

    @property
    def config(self) -> Any:
        return self.review_page.config

    @property
    def run_dir(self) -> Path | None:
        return self.review_page.run_dir

    def _on_accepted(self) -> None:
        if self.dataset_page.is_modality():
            request = self.modality_review_page.request
            if request is not None:
                self.start_requested.emit(request, request.run_dir)
            return
        if self.review_page.config is not None and self.review_page.run_dir is not None:
            self.start_requested.emit(self.review_page.config, self.review_page.run_dir)
