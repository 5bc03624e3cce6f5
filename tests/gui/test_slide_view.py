"""The slide review journey in the main window: open, navigate, run a heatmap, cancel, cache,
export, and errors that end in a dialog while the app stays usable."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QDialog, QMessageBox

from engine.slides.synthetic import SyntheticSlide
from gui import heatmap_job as hj
from gui.main_window import MainWindow
from gui.settings import Settings
from gui.views.slide_view import SlideView

HEATMAP_TIMEOUT_MS = 300_000  # a limit for a busy machine; an idle one needs seconds


@pytest.fixture(scope="session")
def demo_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The engine's demo model (finds the dense purple tumour texture of synthetic slides)."""
    from engine.demo import demo_model

    return demo_model(tmp_path_factory.mktemp("models") / "demo-model.onnx")


_ENGINE_RESULTS: dict[tuple[str, str], object] = {}


def engine_heatmap(slide: SyntheticSlide, model: Path):  # type: ignore[no-untyped-def]
    """The engine's heatmap of (slide, model), computed once per test session."""
    from engine.infer.pipeline import compute_heatmap

    key = (str(slide.path), str(model))
    if key not in _ENGINE_RESULTS:
        _ENGINE_RESULTS[key] = compute_heatmap(slide.path, model)
    return _ENGINE_RESULTS[key]


def _view(window: MainWindow) -> SlideView:
    return window.slide_view


def _wait_tiles(qtbot, view: SlideView) -> None:  # type: ignore[no-untyped-def]
    view.viewer.repaint()
    qtbot.waitUntil(lambda: view.viewer.thumbnail is not None and view.viewer.missing_tiles == 0
                    and view.viewer.scheduler.idle, timeout=30_000)


def _select_model(qtbot, view: SlideView, path: Path) -> None:  # type: ignore[no-untyped-def]
    view.select_model(str(path))
    qtbot.waitUntil(lambda: view.heatmap_panel.current_model() == str(path.resolve()), timeout=30_000)


def _run_and_wait(qtbot, view: SlideView) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(view.heatmap_finished, timeout=HEATMAP_TIMEOUT_MS):
        view.run_heatmap()


def _screen_xy(view: SlideView, x0: float, y0: float) -> tuple[int, int]:
    p = view.viewer.to_screen(x0, y0)
    return int(p.x()), int(p.y())


def _save(window: MainWindow, artifacts_dir: Path, name: str) -> None:
    window.grab().save(str(artifacts_dir / name))


def _tissue_point_outside_tumour(slide: SyntheticSlide) -> tuple[float, float]:
    """The centre of the second tissue blob (no tumour there)."""
    blob = slide.tissue_regions[1]
    return blob.cx, blob.cy


# -- opening -------------------------------------------------------------------------------------
def test_empty_window_has_slides_view_and_menus(window: MainWindow, artifacts_dir: Path) -> None:
    assert window.view_names()[0] == "Slides" and window.stack.currentIndex() == 0
    titles = [a.text() for a in window.menuBar().actions()]
    assert titles == ["&File", "&View", "&Help"]
    file_actions = [a.text() for a in window.menuBar().actions()[0].menu().actions() if a.text()]
    assert file_actions[:2] == ["&Open Slide…", "Open &Recent"] and "&Quit" in file_actions
    assert "Export Heatmap…" in file_actions
    assert not _view(window).export_action.isEnabled()
    _save(window, artifacts_dir, "slides-empty.png")


def test_add_view_is_one_line(window: MainWindow) -> None:
    from PySide6.QtWidgets import QLabel

    from gui.icons import icon

    before = window.view_names()
    index = window.add_view("Genomics", icon("datasets"), QLabel("genomics"))
    assert window.view_names() == [*before, "Genomics"]
    window.show_view("Genomics")
    assert window.stack.currentIndex() == index
    assert "Genomics" in [a.text() for a in window.go_menu.actions()]
    with pytest.raises(ValueError):
        window.add_view("Genomics", icon("datasets"), QLabel("again"))


def test_open_slide_shows_tiles_properties_and_recent(open_and_wait, qtbot, window: MainWindow, synthetic_svs: SyntheticSlide,
                                                      artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    view = _view(window)
    open_and_wait(window, synthetic_svs.path)
    _wait_tiles(qtbot, view)
    assert view.viewer.first_paint_s is not None and view.viewer.first_paint_s < 2.0
    assert view.properties.fields["Size"].text().startswith("4,096 x 3,072 px")
    assert view.properties.fields["Resolution"].text().startswith("0.5000 µm/px")
    assert view.properties.fields["Format"].text() == "aperio"
    assert "hidden" in view.properties.fields["Other images"].text()  # the label exists, not shown
    assert window.settings.recent_files()[0] == str(synthetic_svs.path.resolve())
    assert "synthetic.svs" in window.windowTitle()
    window.statusBar().clearMessage()
    _save(window, artifacts_dir, "slides-open.png")
    view.tabs.setCurrentIndex(1)
    _save(window, artifacts_dir, "slides-properties.png")


def test_drop_a_slide_file_opens_it(qtbot, window: MainWindow, synthetic_svs: SyntheticSlide) -> None:  # type: ignore[no-untyped-def]
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(synthetic_svs.path))])
    event = QDropEvent(QPointF(300, 300), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(_view(window).slide_opened, timeout=30_000):
        window.dropEvent(event)
    assert _view(window).slide_path == str(synthetic_svs.path.resolve())


@pytest.mark.parametrize("which", ["not_a_slide", "truncated_slide"])
def test_bad_file_gives_a_dialog_and_keeps_the_open_slide(open_and_wait, request, qtbot, window: MainWindow, dialogs,
                                                          synthetic_svs: SyntheticSlide, which: str) -> None:  # type: ignore[no-untyped-def]
    bad: Path = request.getfixturevalue(which)
    view = _view(window)
    open_and_wait(window, synthetic_svs.path)
    with qtbot.waitSignal(view.slide_open_failed, timeout=30_000) as failed:
        window.open_path(bad)
    assert failed.args[0] == str(bad.resolve()) and not view.opening
    assert len(dialogs) == 1
    title, text = dialogs[0]
    assert title == "Cannot open slide" and bad.name in text
    assert ("not a slide" in text) if which == "not_a_slide" else ("truncated" in text or "damaged" in text)
    assert view.slide_path == str(synthetic_svs.path.resolve())  # nothing else was lost
    view.viewer.zoom_by(2.0)
    _wait_tiles(qtbot, view)


def test_label_images_need_an_explicit_confirmation(open_and_wait, qtbot, window: MainWindow, dialogs, monkeypatch,
                                                     synthetic_svs: SyntheticSlide) -> None:  # type: ignore[no-untyped-def]
    shown_dialogs: list[str] = []
    monkeypatch.setattr(QDialog, "exec", lambda d: shown_dialogs.append(d.windowTitle()) or 0)
    view = _view(window)
    open_and_wait(window, synthetic_svs.path)
    view.show_associated_images()
    assert "patient" in dialogs[-1][1]
    assert shown_dialogs == []  # declined: nothing shown

    def accept(box: QMessageBox) -> int:
        next(b for b in box.buttons() if b.text() == "Show Images").click()
        return 0

    monkeypatch.setattr(QMessageBox, "exec", accept)
    view.show_associated_images()
    assert len(shown_dialogs) == 1 and "Label and macro" in shown_dialogs[0]


# -- heatmap ---------------------------------------------------------------------------------------
def test_heatmap_fills_in_over_the_tumour_and_is_cached(open_and_wait, qtbot, window: MainWindow, synthetic_svs: SyntheticSlide,
                                                        demo_model_path: Path, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    view = _view(window)
    open_and_wait(window, synthetic_svs.path)
    _select_model(qtbot, view, demo_model_path)
    batches_while_running: list[bool] = []
    # listen before the run starts: a fast run cannot end before the test waits for it
    view.heatmap_batch.connect(lambda _done: batches_while_running.append(view.running))
    with qtbot.waitSignal(view.heatmap_finished, timeout=HEATMAP_TIMEOUT_MS):
        view.run_heatmap()
        assert view.running and view.heatmap_panel.cancel_button.isEnabled()
    assert batches_while_running and all(batches_while_running), "the overlay received batches during the run"
    assert not view.running and view.result is not None
    _wait_tiles(qtbot, view)

    tumour = synthetic_svs.tumour_regions[0]
    tx, ty = _screen_xy(view, tumour.cx, tumour.cy)
    nx, ny = _screen_xy(view, *_tissue_point_outside_tumour(synthetic_svs))
    with_overlay = view.viewer.grab().toImage()
    view.heatmap_panel.show_check.setChecked(False)
    without = view.viewer.grab().toImage()
    view.heatmap_panel.show_check.setChecked(True)

    def diff(x: int, y: int) -> int:
        a, b = with_overlay.pixelColor(x, y), without.pixelColor(x, y)
        return abs(a.red() - b.red()) + abs(a.green() - b.green()) + abs(a.blue() - b.blue())

    assert diff(tx, ty) > 60, "the overlay colours the tumour"
    assert diff(nx, ny) < 10, "normal tissue stays uncoloured at the default threshold"
    assert view.viewer.overlay is not None
    assert view.viewer.overlay.value_at(tumour.cx, tumour.cy)[0] > 0.9  # type: ignore[index]

    # summary and region list point at the tumour
    assert "Highest tile probability" in view.heatmap_panel.summary_label.text()
    regions = [view.heatmap_panel.regions_list.item(i).text() for i in range(view.heatmap_panel.regions_list.count())]
    assert 1 <= len(regions) <= 10
    assert all(float(re.search(r"p = ([\d.]+)", t)[1]) >= 0.5 for t in regions), "only regions at the threshold"
    view.heatmap_panel.regions_list.itemClicked.emit(view.heatmap_panel.regions_list.item(0))
    cx, cy = view.viewer.center
    assert (cx - tumour.cx) ** 2 / (tumour.rx + 200) ** 2 + (cy - tumour.cy) ** 2 / (tumour.rx + 200) ** 2 < 1
    _wait_tiles(qtbot, view)
    _save(window, artifacts_dir, "heatmap-region.png")
    view.viewer.fit()
    _wait_tiles(qtbot, view)
    window.statusBar().clearMessage()
    _save(window, artifacts_dir, "heatmap-done.png")

    # hover reports probability and level-0 coordinates
    view.viewer._update_hover(QPointF(*_screen_xy(view, tumour.cx, tumour.cy)))

    hover = re.match(r"p = ([\d.]+)  ·  x ([\d,]+)  y ([\d,]+)", window.hover_label.text())
    assert hover is not None and float(hover[1]) > 0.9
    assert abs(int(hover[2].replace(",", "")) - tumour.cx) < 10 and abs(int(hover[3].replace(",", "")) - tumour.cy) < 10

    # cached: reopening shows it at once without running the model
    folder = hj.cache_folder(str(synthetic_svs.path), view._current_choice())  # type: ignore[arg-type]
    assert {"heatmap.npy", "heatmap.json", "overlay.png", "tiles.csv", "tiles.geojson"} <= {
        p.name for p in folder.iterdir()}
    open_and_wait(window, synthetic_svs.path)
    assert view.result is not None and not view.running
    assert "cache" in view.heatmap_panel.progress_label.text()


def slow_heatmap_job(slide_path, model, mpp=None, progress=None, cancel=None, partial=None):  # type: ignore[no-untyped-def]
    """The heatmap job of a very slow workstation (runs in the child process): small batches, and
    after the first one nothing more until Cancel is pressed, so Cancel always lands mid-run
    however fast or busy the machine is."""
    import engine.infer.pipeline as pipeline

    real = pipeline.compute_heatmap
    latest: list[object] = []
    # the child passes progress through a 10-per-second throttle; the latest count is sent past it
    # before the job holds, so the view always shows how far the run got
    send_now = getattr(progress, "_callback", progress)

    def remember(event):  # type: ignore[no-untyped-def]
        latest[:] = [event]
        progress(event)

    def held_compute(*args, on_batch=None, **kwargs):  # type: ignore[no-untyped-def]
        def held_batch(r, c, p):  # type: ignore[no-untyped-def]
            on_batch(r, c, p)
            if latest:
                send_now(latest[0])
            cancel.wait(HEATMAP_TIMEOUT_MS / 1000)

        return real(*args, on_batch=held_batch, **{**kwargs, "cfg": pipeline.InferenceConfig(batch_size=16)})

    pipeline.compute_heatmap = lambda s, m, cfg=None, **kw: held_compute(s, m, **kw)
    return hj.run_heatmap(slide_path, model, mpp, progress=remember, cancel=cancel, partial=partial)


def test_cancel_midway_keeps_no_cache_and_the_app_usable(open_and_wait, qtbot, window: MainWindow, synthetic_svs: SyntheticSlide,
                                                         demo_model_path: Path) -> None:  # type: ignore[no-untyped-def]
    view = _view(window)
    view.heatmap_job = slow_heatmap_job
    view = _view(window)
    open_and_wait(window, synthetic_svs.path)
    _select_model(qtbot, view, demo_model_path)
    view.run_heatmap()
    qtbot.waitUntil(lambda: view.viewer.overlay is not None and view.viewer.overlay.analysed_count() > 0,
                    timeout=HEATMAP_TIMEOUT_MS)
    with qtbot.waitSignal(view.heatmap_cancelled, timeout=HEATMAP_TIMEOUT_MS):
        view.heatmap_panel.cancel_button.click()
    assert not view.running and view.result is None and view.viewer.overlay is None
    assert "Cancelled" in view.heatmap_panel.progress_label.text()
    root = hj.cache_root(str(synthetic_svs.path))
    assert not root.exists() or not any(root.iterdir()), "a cancelled run leaves no partial cache"
    # still usable: navigate, then a full run
    view.viewer.zoom_by(2.0)
    _wait_tiles(qtbot, view)
    view.heatmap_job = hj.run_heatmap
    _run_and_wait(qtbot, view)
    assert view.result is not None


def test_export_writes_files_and_an_unwritable_folder_gives_a_dialog(open_and_wait, qtbot, window: MainWindow, dialogs,
                                                                      synthetic_svs: SyntheticSlide,
                                                                      demo_model_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    view = _view(window)
    open_and_wait(window, synthetic_svs.path)
    _select_model(qtbot, view, demo_model_path)
    result = engine_heatmap(synthetic_svs, demo_model_path)
    view._show_result(hj.HeatmapData(result, view.slide_path, view._current_choice(), ""))  # type: ignore[arg-type]
    assert view.export_action.isEnabled()
    with qtbot.waitSignal(view.export_finished, timeout=30_000) as blocker:
        view.export_to(tmp_path / "exports")
    out = Path(blocker.args[0])
    assert out.parent == tmp_path / "exports"
    names = {p.name for p in out.iterdir()}
    assert {"overlay.png", "tiles.geojson", "tiles.csv"} <= names
    assert not any("label" in n or "macro" in n for n in names)
    import json

    geo = json.loads((out / "tiles.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and geo["features"]

    blocker_file = tmp_path / "a-file"
    blocker_file.write_text("x")
    with qtbot.waitSignal(view.status_message, timeout=30_000,
                          check_params_cb=lambda text, _t: text == "Export failed"):
        view.export_to(blocker_file / "sub")
    assert dialogs[-1][0] == "Cannot export the result" and "cannot write" in dialogs[-1][1]
    assert view.result is not None  # nothing else lost


def test_a_model_that_does_not_fit_gives_a_dialog(open_and_wait, qtbot, window: MainWindow, dialogs, tmp_path: Path,
                                                  synthetic_svs: SyntheticSlide) -> None:  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    view = _view(window)
    open_and_wait(window, synthetic_svs.path)
    view.select_model(str(plain))
    qtbot.waitUntil(lambda: bool(dialogs), timeout=30_000)
    assert dialogs[-1][0] == "Cannot use this model" and "not a MetaScope model" in dialogs[-1][1]
    assert not view.running and view.heatmap_panel.current_model() != str(plain)


def _runqueue_wait_s() -> float:
    """Seconds this thread has waited, runnable, for a CPU the OS gave to other processes (Linux
    schedstat; 0 elsewhere). A stall measured on a busy machine (other jobs, a CI neighbour) is
    not the app's: it is taken out, so what remains is the time the app itself blocked its loop."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def test_event_loop_never_stalls_while_tiles_load_and_a_heatmap_runs(open_and_wait, qtbot, window: MainWindow,
                                                                      synthetic_svs: SyntheticSlide,
                                                                      demo_model_path: Path) -> None:  # type: ignore[no-untyped-def]
    view = _view(window)
    with qtbot.waitSignal(view.models_refreshed, timeout=30_000):
        view.refresh_models()  # as at start-up: also loads the inference runtime in the background
    open_and_wait(window, synthetic_svs.path)
    _select_model(qtbot, view, demo_model_path)
    gaps: list[float] = []
    last = [(time.perf_counter(), _runqueue_wait_s())]

    def tick() -> None:  # the time between two ticks the app itself kept the event loop from running
        now = (time.perf_counter(), _runqueue_wait_s())
        gaps.append((now[0] - last[0][0]) - (now[1] - last[0][1]))
        last[0] = now

    step = [0]

    def navigate() -> None:  # zoom and pan inside the event loop, as wheel and drag events would
        i = step[0]
        step[0] += 1
        if i % 20 < 8:
            view.viewer.zoom_by(1.3, QPointF(500 + 10 * (i % 20), 400))
        elif i % 20 < 14:
            view.viewer.pan_by(40, -25)
        else:
            view.viewer.zoom_by(1 / 1.3)

    probe, nav = QTimer(), QTimer()
    probe.setInterval(5)
    probe.timeout.connect(tick)
    nav.setInterval(50)
    nav.timeout.connect(navigate)
    last[0] = (time.perf_counter(), _runqueue_wait_s())
    probe.start()
    nav.start()
    qtbot.waitUntil(lambda: step[0] >= 30, timeout=HEATMAP_TIMEOUT_MS)  # tiles load while navigating
    view.run_heatmap()
    qtbot.waitUntil(lambda: not view.running, timeout=HEATMAP_TIMEOUT_MS)
    nav.stop()
    probe.stop()
    assert view.result is not None and len(gaps) > 100 and step[0] > 20
    assert max(gaps) < 0.25, f"longest event-loop stall {max(gaps) * 1000:.0f} ms"


def test_first_start_runs_the_demo_journey(qtbot, dialogs, monkeypatch, synthetic_svs: SyntheticSlide,
                                           demo_model_path: Path, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    import engine.demo
    from gui.app import create_main_window

    monkeypatch.delenv("METASCOPE_NO_DEMO", raising=False)
    monkeypatch.setattr(engine.demo, "ensure_demo_assets",
                        lambda **kw: (synthetic_svs.path, demo_model_path))
    settings = Settings()
    assert not settings.get("app/first_run_done")
    window = create_main_window([], settings)
    window.resize(1440, 900)
    qtbot.addWidget(window)
    view = window.slide_view
    # set before the event loop runs the demo: the run then holds after its first batch until
    # Cancel, so the test sees it running however fast or busy the machine is
    view.heatmap_job = slow_heatmap_job
    qtbot.waitUntil(lambda: view.running and view.viewer.overlay is not None
                    and view.viewer.overlay.analysed_count() > 0, timeout=HEATMAP_TIMEOUT_MS)
    # tiles done / total with an ETA
    qtbot.waitUntil(lambda: " tiles · " in view.heatmap_panel.progress_label.text()
                    and "left" in view.heatmap_panel.progress_label.text(), timeout=HEATMAP_TIMEOUT_MS)
    window.statusBar().clearMessage()
    _save(window, artifacts_dir, "heatmap-running.png")
    assert view.slide_path == str(synthetic_svs.path.resolve())
    assert view.heatmap_panel.current_model() == str(demo_model_path.resolve())
    assert settings.get("app/first_run_done")
    assert dialogs == []
    with qtbot.waitSignal(view.heatmap_cancelled, timeout=HEATMAP_TIMEOUT_MS):
        view.cancel_heatmap()
    window.close()


def test_geometry_and_overlay_settings_persist(qtbot, dialogs) -> None:  # type: ignore[no-untyped-def]
    first = MainWindow(Settings())
    qtbot.addWidget(first)
    first.resize(785, 545)  # fits the 800 x 600 offscreen screen
    first.show()
    first.slide_view.heatmap_panel.opacity_slider.setValue(35)
    first.close()
    second = MainWindow(Settings())
    qtbot.addWidget(second)
    assert (second.width(), second.height()) == (785, 545)
    assert second.slide_view.heatmap_panel.opacity == pytest.approx(0.35)
    second.close()


def test_about_shows_the_version(window: MainWindow, dialogs) -> None:
    from engine import __version__

    window.show_about()
    assert dialogs[-1][0] == "About MetaScope" and __version__ in dialogs[-1][1]


def test_grid_summary_counts_tiles_at_the_display_threshold(synthetic_svs: SyntheticSlide) -> None:
    class R:
        grid = np.array([[0.2, 0.8], [np.nan, 0.95]], np.float32)
        slide_mpp, stride_level0, origin_level0, tile_size_level0 = 0.5, 200, (0, 0), 200
        summary = {"tissue_area_mm2": 0.3}
        timing = {"total_s": 1.5}

    data = hj.HeatmapData(R(), str(synthetic_svs.path), hj.ModelChoice("m.onnx", "M", "0" * 64, ""), "")
    html = hj.summary_html(data, 0.5)
    assert "2 tiles at or above 0.50" in html and "0.950" in html and "66.7%" in html
    assert "No tile at or above 0.99" in hj.summary_html(data, 0.99)


def test_slide_without_mpp_asks_for_the_resolution(open_and_wait, qtbot, window: MainWindow, monkeypatch,
                                                   synthetic_tiff_no_mpp: SyntheticSlide,
                                                   demo_model_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QInputDialog

    asked: list[str] = []
    answer = [(0.0, False)]

    def fake_get_double(parent, title, label, *args):  # type: ignore[no-untyped-def]
        asked.append(label)
        return answer[0]

    monkeypatch.setattr(QInputDialog, "getDouble", staticmethod(fake_get_double))
    view = _view(window)
    open_and_wait(window, synthetic_tiff_no_mpp.path)
    assert view.properties.fields["Resolution"].text() == "not recorded"
    _select_model(qtbot, view, demo_model_path)
    view.run_heatmap()
    assert len(asked) == 1 and "microns per pixel" in asked[0]
    assert not view.running  # declined: nothing runs
    answer[0] = (0.5, True)
    _run_and_wait(qtbot, view)
    assert len(asked) == 2 and view.result is not None
    assert view.result.result.slide_mpp == pytest.approx(0.5) and view.result.result.slide_mpp_source == "user"
    open_and_wait(window, synthetic_tiff_no_mpp.path)  # the typed-in resolution finds the cached result
    assert view.result is not None and len(asked) == 2


def test_app_uses_the_package_operating_threshold_and_shares_the_cli_cache(
    open_and_wait, qtbot, window: MainWindow, synthetic_svs: SyntheticSlide, demo_model_path: Path, tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from engine.infer import cache
    from engine.infer.lesions import operating_threshold
    from engine.infer.pipeline import InferenceConfig
    from engine.infer.session import load_model
    from engine.modelpkg import read_metadata, write_metadata
    from engine.slides import open_slide

    meta = read_metadata(demo_model_path)
    strict = write_metadata(demo_model_path, replace(meta, extra={**meta.extra, "operating_threshold": 0.8}),
                            tmp_path / "strict.onnx")
    view = _view(window)
    open_and_wait(window, synthetic_svs.path)
    _select_model(qtbot, view, strict)
    assert view.heatmap_panel.threshold == pytest.approx(0.8), "the display threshold starts at the model's"
    _run_and_wait(qtbot, view)
    assert view.result is not None and view.result.result.threshold == pytest.approx(0.8)
    # `metascope heatmap --cache` (threshold defaults to the model's) finds the app's result
    session = load_model(strict)
    cfg = InferenceConfig(threshold=operating_threshold(session.metadata))
    assert Path(view.result.cache_folder) == cache.cache_folder(
        synthetic_svs.path, session.sha256, cfg=cfg, model_threshold=cache.model_default_threshold(session.metadata))
    with open_slide(synthetic_svs.path) as reader:
        result, from_cache = cache.cached_heatmap(reader, synthetic_svs.path, session, cfg)
    assert from_cache and result.threshold == pytest.approx(0.8)
    # the user's slider still moves the display threshold
    view.heatmap_panel.threshold_slider.setValue(30)
    assert view.heatmap_panel.threshold == pytest.approx(0.3)
