"""The Patch review view: an evaluation's patches, errors first, thumbnails read lazily."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from engine.infer.review import EXPORT_COLUMNS
from gui.views.patch_review_view import PatchReviewView

WAIT_MS = 15_000


def make_evaluation(folder: Path, n: int, n_images: int = 6) -> Path:
    """``metascope evaluate`` output for ``n`` patches over ``n_images`` small PNGs (reused), one
    missing image, probabilities spread so every kind occurs."""
    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir(parents=True)
    paths = []
    for i in range(n_images):
        p = images / f"patch_{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    out = folder / "eval"
    out.mkdir()
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "p_normal", "p_tumor", "predicted", "source", "index"])
        for i in range(n):
            p_t = float(rng.random())
            label = "tumor" if (i % 2) else "normal"
            src = folder / "gone.png" if i == n - 1 else paths[i % n_images]
            w.writerow([f"p{i:05d}", label, f"{1 - p_t:.6f}", f"{p_t:.6f}", "tumor" if p_t > 0.5 else "normal", src, i])
    (out / "metrics.json").write_text(json.dumps({"positive_class": "tumor", "threshold": 0.5, "auc": 0.5,
                                                  "class_names": ["normal", "tumor"]}))
    return out


@pytest.fixture()
def view(qtbot, dialogs):  # type: ignore[no-untyped-def]
    v = PatchReviewView()
    v.resize(1000, 700)
    qtbot.addWidget(v)
    v.show()
    qtbot.waitExposed(v)
    yield v
    v.shutdown()
    qtbot.waitUntil(lambda: v._thumb_worker is None, timeout=WAIT_MS)


def load(qtbot, view: PatchReviewView, path: Path) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(view.loaded, timeout=WAIT_MS):
        view.load(path)


def test_errors_first_filters_and_export(qtbot, view: PatchReviewView, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    load(qtbot, view, make_evaluation(tmp_path, 40))
    rows = view.visible_rows()
    assert len(rows) == 40
    n_err = sum(r.is_error for r in rows)
    assert 0 < n_err < 40 and all(r.is_error for r in rows[:n_err])
    assert [r.confidence for r in rows[:n_err]] == sorted((r.confidence for r in rows[:n_err]), reverse=True)
    assert view.kind_checks["FP"].text() == f"FP ({sum(r.kind == 'FP' for r in rows)})"
    assert "positive class <b>tumor</b>" in view.source_label.text() and view.export_button.isEnabled()

    view.kind_checks["TP"].setChecked(False)
    view.kind_checks["TN"].setChecked(False)
    assert len(view.visible_rows()) == n_err and view.model.data(view.model.index(0, 1)) in ("FP", "FN")
    view.p_min.setValue(0.5)
    assert {r.kind for r in view.visible_rows()} <= {"FP"}
    view.p_min.setValue(0.0)
    view.search_edit.setText("p0000")
    assert all(r.id.startswith("p0000") for r in view.visible_rows())
    view.search_edit.clear()

    out = tmp_path / "errors.csv"
    with qtbot.waitSignal(view.exported, timeout=WAIT_MS):
        assert view.export_to(out)
    got = list(csv.DictReader(out.read_text().splitlines()))
    assert [g["id"] for g in got] == [r.id for r in view.visible_rows()] and list(got[0])[:8] == list(EXPORT_COLUMNS)


def test_thumbnails_only_for_rows_on_screen(qtbot, view: PatchReviewView, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    load(qtbot, view, make_evaluation(tmp_path, 3000))
    model = view.model
    on_screen = view.visible_keys()
    assert 0 < len(on_screen) < 40
    qtbot.waitUntil(lambda: all(model.has_thumbnail(k) for k in view.visible_keys()), timeout=WAIT_MS)
    assert len(model.pixmaps) + len(model.errors) < 100  # not the 3,000
    view.table.scrollToBottom()
    qtbot.waitUntil(lambda: all(model.has_thumbnail(k) for k in view.visible_keys()), timeout=WAIT_MS)
    assert len(model.pixmaps) + len(model.errors) < 200
    bottom = view.visible_keys()
    assert bottom[-1] == model.rows[-1][0]
    view.search_edit.setText("p02999")  # the patch whose image file is gone
    assert len(model.rows) == 1
    qtbot.waitUntil(lambda: model.has_thumbnail(model.rows[0][0]), timeout=WAIT_MS)
    tip = model.data(model.index(0, 0), Qt.ItemDataRole.ToolTipRole)
    assert "image not found" in tip and model.data(model.index(0, 0), Qt.ItemDataRole.DecorationRole) is None


def test_double_click_shows_the_patch_larger(qtbot, view: PatchReviewView, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    load(qtbot, view, make_evaluation(tmp_path, 12))
    preview = view.show_patch(0)
    assert preview is not None and preview.row is view.visible_rows()[0]
    qtbot.waitUntil(lambda: not preview.image_label.pixmap().isNull(), timeout=WAIT_MS)
    assert preview.image_label.pixmap().width() == 24 * (384 // 24)
    gone = next(i for i, r in enumerate(view.visible_rows()) if r.source.endswith("gone.png"))
    broken = view.show_patch(gone)
    assert broken is not None
    qtbot.waitUntil(lambda: "Cannot show this patch" in broken.image_label.text(), timeout=WAIT_MS)
    broken.close()


@pytest.mark.parametrize("what", ["empty", "predict_output"])
def test_bad_folder_is_a_dialog(qtbot, view: PatchReviewView, dialogs, tmp_path: Path, what: str) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "x"
    folder.mkdir()
    if what == "predict_output":
        (folder / "predictions.csv").write_text("id,p_normal,p_tumor,predicted\na,0.2,0.8,tumor\n")
    with qtbot.waitSignal(view.load_failed, timeout=WAIT_MS) as sig:
        view.load(folder)
    assert dialogs and dialogs[-1][0] == "Cannot open the evaluation" and dialogs[-1][1] == sig.args[0]
    assert view.message.kind == "error" and view.review is None and not view.export_button.isEnabled()


def test_export_failure_is_a_dialog(qtbot, view: PatchReviewView, dialogs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    load(qtbot, view, make_evaluation(tmp_path, 5))
    (tmp_path / "a_file").write_text("not a folder")
    assert not view.export_to(tmp_path / "a_file" / "x.csv")
    assert dialogs[-1][0] == "Cannot export the patches"


def test_registered_in_the_main_window(qtbot, window, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert "Patch review" in window.view_names()
    assert any(a.text() == "Review &Evaluation…" for a in window.file_menu.actions())
    folder = make_evaluation(tmp_path, 8)
    view = window.patch_review_view
    with qtbot.waitSignal(view.loaded, timeout=WAIT_MS):
        window.review_evaluation(folder)
    assert window.stack.currentWidget() is view and len(view.visible_rows()) == 8
    qtbot.waitUntil(lambda: not view.thumbnails_busy(), timeout=WAIT_MS)
    if window.training_view is not None:  # a training run's "Review patches" opens here too
        with qtbot.waitSignal(view.loaded, timeout=WAIT_MS):
            window.training_view.review_patches_requested.emit(str(folder))
        assert window.stack.currentWidget() is view and len(view.visible_rows()) == 8
        qtbot.waitUntil(lambda: not view.thumbnails_busy(), timeout=WAIT_MS)


@pytest.mark.realdata
def test_3000_real_pcam_patches_stay_responsive(qtbot, view: PatchReviewView, shared_data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The 3,000 real PCam validation JPEGs: the table opens at once and reads only the thumbnails on screen."""
    import time

    files = sorted((shared_data / "pcam" / "valid").glob("*/*.jpg"))
    assert len(files) >= 3000
    rng = np.random.default_rng(1)
    out = tmp_path / "eval"
    out.mkdir()
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "p_0", "p_1", "predicted", "source", "index"])
        for i, p in enumerate(files):
            p1 = float(np.clip(rng.normal(0.75 if p.parent.name == "1" else 0.25, 0.2), 0, 1))
            w.writerow([p.stem, p.parent.name, f"{1 - p1:.6f}", f"{p1:.6f}", "1" if p1 > 0.5 else "0", p, i])
    (out / "metrics.json").write_text(json.dumps({"positive_class": "1", "threshold": 0.5}))
    t0 = time.perf_counter()
    load(qtbot, view, out)
    assert time.perf_counter() - t0 < 5.0 and len(view.visible_rows()) == len(files)
    assert view.visible_rows()[0].is_error
    qtbot.waitUntil(lambda: all(view.model.has_thumbnail(k) for k in view.visible_keys()), timeout=WAIT_MS)
    assert not view.model.errors and 0 < len(view.model.pixmaps) < 100
    view.table.verticalScrollBar().setValue(view.table.verticalScrollBar().maximum() // 2)
    qtbot.waitUntil(lambda: all(view.model.has_thumbnail(k) for k in view.visible_keys()), timeout=WAIT_MS)
    assert len(view.model.pixmaps) < 200


def test_models_view_evaluates_a_patch_model_and_opens_the_review(qtbot, window, tmp_path: Path, demo_onnx: Path,  # type: ignore[no-untyped-def]
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Models view > patch classifier > Evaluate on dataset runs `metascope evaluate`; Review patches opens it."""
    import gui.views.cli_runner as cli_runner
    from engine.library import ModelLibrary
    from gui.cli_job import CliResult
    from gui.views.datasets_view import DatasetStore

    calls: list[list[str]] = []

    def fake_run_cli(args, json_output=False, **_kw):  # type: ignore[no-untyped-def]  # writes what evaluate writes
        args = [str(a) for a in args]
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        made = make_evaluation(tmp_path / "made", 10)
        out.mkdir(parents=True)
        for f in made.iterdir():
            (out / f.name).write_bytes(f.read_bytes())
        return CliResult(tuple(args), "", "", None)

    monkeypatch.setattr(cli_runner, "run_cli", fake_run_cli)
    DatasetStore().upsert({"path": str(tmp_path / "patches"), "fmt": "folders", "mpp": 0.5, "name": "patches"})
    entry = ModelLibrary().add(demo_onnx)
    models = window.models_view
    window.show_view("Models")
    models.refresh(select=entry.path)
    qtbot.waitUntil(lambda: models.actions.isVisible(), timeout=WAIT_MS)
    actions = models.actions.patches
    assert models.actions.stack.currentWidget() is actions and actions.dataset_combo.count() == 1
    with qtbot.waitSignal(actions.runner.finished, timeout=WAIT_MS):
        actions.evaluate()
    assert calls[-1][:2] == ["evaluate", str(entry.path)] and calls[-1][calls[-1].index("--format") + 1] == "folders"
    assert actions.review_button.isEnabled()
    view = window.patch_review_view
    with qtbot.waitSignal(view.loaded, timeout=WAIT_MS):
        actions.review_button.click()
    assert window.stack.currentWidget() is view and len(view.visible_rows()) == 10
    qtbot.waitUntil(lambda: not view.thumbnails_busy(), timeout=WAIT_MS)
