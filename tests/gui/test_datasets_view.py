"""Datasets view: import + validation in a worker, summary, class balance, thumbnails, memory."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from gui.views.datasets_view import DatasetStore, DatasetsView  # noqa: E402

WAIT_MS = 30_000


def _view(qtbot) -> DatasetsView:  # noqa: ANN001
    view = DatasetsView()
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    return view


def test_import_validate_summary_thumbnails_and_remembered(
    qtbot, folder_dataset_3class: Path, artifacts_dir: Path
) -> None:
    view = _view(qtbot)
    assert view.dataset_list.count() == 0 and not view.train_button.isEnabled()
    worker = view.import_dataset(str(folder_dataset_3class), "auto", 0.5)
    with qtbot.waitSignal(worker.signals.finished, timeout=WAIT_MS):
        pass
    qtbot.waitUntil(lambda: view.dataset_list.count() == 1, timeout=WAIT_MS)
    assert "no errors" in view.import_message.text()
    text = view.summary.text()
    assert "lymphocytes: 12 (33%)" in text and "stroma: 12" in text and "tumour: 12" in text
    assert "96×96 px" in text and "0.5 µm/px" in text and "Ready for training" in text
    assert view.train_button.isEnabled()

    # thumbnails: a balanced sample of all classes, then one class only
    qtbot.waitUntil(lambda: view.thumbs.count() == 36, timeout=WAIT_MS)
    assert set(view.thumbnail_labels()) == {"lymphocytes", "stroma", "tumour"}
    assert not view.thumbs.item(0).icon().isNull()
    view.balance.draw_now()
    view.grab().save(str(artifacts_dir / "datasets-view.png"))
    view.class_filter.setCurrentIndex(view.class_filter.findData(2))
    qtbot.waitUntil(lambda: view.thumbs.count() == 12, timeout=WAIT_MS)
    assert set(view.thumbnail_labels()) == {"tumour"}

    # "train on it" hands the remembered entry to the wizard
    with qtbot.waitSignal(view.train_requested, timeout=5000) as sig:
        view.train_button.click()
    assert sig.args[0]["path"] == str(folder_dataset_3class) and sig.args[0]["mpp"] == 0.5

    # remembered between launches
    again = _view(qtbot)
    assert again.dataset_list.count() == 1
    assert [d["path"] for d in DatasetStore().items()] == [str(folder_dataset_3class)]


def test_broken_dataset_shows_problems_and_cannot_train(qtbot, broken_datasets) -> None:  # noqa: ANN001
    view = _view(qtbot)
    worker = view.import_dataset(str(broken_datasets["missing_file"]))
    with qtbot.waitSignal(worker.signals.finished, timeout=WAIT_MS):
        pass
    qtbot.waitUntil(lambda: view.dataset_list.count() == 1, timeout=WAIT_MS)
    assert view.import_message.kind == "error" and "do not exist" in view.import_message.text()
    assert "Missing files <b>2</b>" in view.summary.text()
    assert not view.train_button.isEnabled()

    worker = view.import_dataset(str(broken_datasets["bad_csv"]))
    with qtbot.waitSignal(worker.signals.failed, timeout=WAIT_MS):
        pass
    assert view.import_message.kind == "error" and view.dataset_list.count() == 1


def test_import_can_be_cancelled(qtbot, kaggle_dataset: Path) -> None:  # noqa: ANN001
    view = _view(qtbot)
    worker = view.import_dataset(str(kaggle_dataset))
    with qtbot.waitSignal(worker.signals.cancelled, timeout=WAIT_MS):
        view.cancel_button.click()
    assert "cancelled" in view.import_message.text() and view.dataset_list.count() == 0
    assert view.import_button.isEnabled() and not view.cancel_button.isVisible()
