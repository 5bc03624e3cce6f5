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
    with qtbot.waitSignal(view.import_finished, timeout=WAIT_MS):
        view.import_dataset(str(folder_dataset_3class), "auto", 0.5)
    assert view.dataset_list.count() == 1 and not view.importing
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
    with qtbot.waitSignal(view.train_requested, timeout=WAIT_MS) as sig:
        view.train_button.click()
    assert sig.args[0]["path"] == str(folder_dataset_3class) and sig.args[0]["mpp"] == 0.5

    # remembered between launches
    again = _view(qtbot)
    assert again.dataset_list.count() == 1
    assert [d["path"] for d in DatasetStore().items()] == [str(folder_dataset_3class)]


def test_broken_dataset_shows_problems_and_cannot_train(qtbot, broken_datasets) -> None:  # noqa: ANN001
    view = _view(qtbot)
    # connected before the import starts: a fast worker cannot end before the test listens
    with qtbot.waitSignal(view.import_finished, timeout=WAIT_MS):
        view.import_dataset(str(broken_datasets["missing_file"]))
    assert view.dataset_list.count() == 1
    assert view.import_message.kind == "error" and "do not exist" in view.import_message.text()
    assert "Missing files <b>2</b>" in view.summary.text()
    assert not view.train_button.isEnabled()

    with qtbot.waitSignal(view.import_failed, timeout=WAIT_MS):
        view.import_dataset(str(broken_datasets["bad_csv"]))
    assert view.import_message.kind == "error" and view.dataset_list.count() == 1
    assert not view.importing and view.import_button.isEnabled()


def test_a_fast_import_that_ends_before_anyone_looks_is_still_reported(qtbot, broken_datasets) -> None:  # noqa: ANN001
    view = _view(qtbot)
    outcomes: list[str] = []
    view.import_failed.connect(outcomes.append)
    view.import_dataset(str(broken_datasets["bad_csv"]))
    # the worker may well have failed already; the view's own signal still arrives, once
    qtbot.waitUntil(lambda: bool(outcomes), timeout=WAIT_MS)
    assert len(outcomes) == 1 and not view.importing and view.import_message.kind == "error"


def test_import_can_be_cancelled(qtbot, kaggle_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import gui.views.datasets_view as dv

    real = dv._open_and_validate

    def validate_held_until_cancel(path, fmt, mpp, progress=None, cancel=None, partial=None):  # noqa: ANN001, ANN202
        """The real validation, held at its first progress report until Cancel is pressed (a slow
        disk), so Cancel always lands mid-import however fast or busy the machine is."""

        def held(event) -> None:  # noqa: ANN001
            cancel.wait(WAIT_MS / 1000)
            progress(event)

        return real(path, fmt, mpp, progress=held, cancel=cancel)

    monkeypatch.setattr(dv, "_open_and_validate", validate_held_until_cancel)
    view = _view(qtbot)
    with qtbot.waitSignal(view.import_cancelled, timeout=WAIT_MS):
        view.import_dataset(str(kaggle_dataset))
        assert view.importing
        view.cancel_button.click()
    assert "cancelled" in view.import_message.text() and view.dataset_list.count() == 0
    assert view.import_button.isEnabled() and not view.cancel_button.isVisible()
