"""Slide QC in the app (issue 16): damaged tiles show a placeholder, the QC mask is a layer
with its reason on hover, warnings reach the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from engine.slides.artefacts import corrupt_tiles, draw_pen, tile_grid, to_greyscale, write_tiled_tiff
from engine.slides.synthetic import make_texture
from gui.main_window import MainWindow

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources" / "models" / "pcam-starter.onnx"
W = 1536
TIMEOUT_MS = 300_000  # a limit for a busy machine; an idle one needs seconds


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gui-qc")
    he = make_texture(W, W, 0.5, seed=3).render(0, 0, W, W)
    pen = he.copy()
    draw_pen(pen, [(300, 300), (900, 500), (1200, 1200)], width=70, colour="green")
    pen_path = write_tiled_tiff(d / "pen.tif", pen, tile=128, levels=1)
    # one damaged JPEG tile inside one analysis tile (128 px tile 3,3 lies in 187 px tile 2,2):
    # under the default 5% of unreadable tiles
    damaged = write_tiled_tiff(d / "damaged.tif", he, tile=128, levels=1)
    _rows, cols, _ = tile_grid(damaged)
    corrupt_tiles(damaged, [cols * 3 + 3])
    grey = write_tiled_tiff(d / "grey.tif", to_greyscale(he), tile=128, levels=1)
    return {"pen": pen_path, "damaged": damaged, "grey": grey}


def _run(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    view = window.slide_view
    view.select_model(str(MODEL))
    qtbot.waitUntil(lambda: view.heatmap_panel.current_model() == str(MODEL.resolve()), timeout=TIMEOUT_MS)
    with qtbot.waitSignal(view.heatmap_finished, timeout=TIMEOUT_MS):
        view.run_heatmap()


def test_damaged_tiles_show_a_placeholder_and_the_heatmap_completes(qtbot, window, open_and_wait, slides) -> None:  # type: ignore[no-untyped-def]
    view = window.slide_view
    open_and_wait(window, slides["damaged"])
    viewer = view.viewer
    _rows, _cols, tile = tile_grid(slides["damaged"])
    viewer.show_region(2 * tile, 2 * tile, 3 * tile, 3 * tile)
    viewer.one_to_one()  # level 0, where the damaged tile is
    viewer.repaint()
    qtbot.waitUntil(lambda: viewer.scheduler.idle and len(viewer.scheduler.failed) > 0, timeout=TIMEOUT_MS)
    img = viewer.grab().toImage()
    arr = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, : 4 * img.width()]
    bgra = arr.reshape(img.height(), img.width(), 4)
    magenta = (bgra[..., 2] > 200) & (bgra[..., 1] < 80) & (bgra[..., 0] > 200)
    assert magenta.sum() > 20  # the placeholder's hatching, not a hole
    _run(qtbot, window)
    summary = view.result.summary
    assert summary["unreadable_tiles"] >= 1
    assert "could not be decoded" in view.heatmap_panel.summary_label.text()
    assert view.viewer.qc_layer is not None and view.viewer.qc_layer.count >= summary["unreadable_tiles"]


def test_qc_mask_layer_toggles_and_explains_on_hover(qtbot, window, open_and_wait, slides) -> None:  # type: ignore[no-untyped-def]
    view = window.slide_view
    open_and_wait(window, slides["pen"])
    _run(qtbot, window)
    layer = view.viewer.qc_layer
    assert layer is not None and layer.visible and layer.count > 0
    assert "left out" in view.heatmap_panel.summary_label.text()
    rows, cols = np.nonzero(layer.reasons == 2)  # pen
    x, y, w, h = layer.geometry.cell_rect(int(rows[0]), int(cols[0]))
    view.viewer.fit()
    p = view.viewer.to_screen(x + w / 2, y + h / 2)
    view.viewer._update_hover(QPointF(p.x(), p.y()))
    assert "QC: pen mark (left out)" in window.hover_label.text()
    view.qc_action.trigger()
    assert not layer.visible
    view.viewer._update_hover(QPointF(p.x(), p.y()))
    assert "QC:" not in window.hover_label.text()
    view.qc_action.trigger()
    assert layer.visible


def test_he_only_model_asks_before_analysing_a_greyscale_slide(  # type: ignore[no-untyped-def]
    qtbot, window, open_and_wait, dialogs, monkeypatch, tmp_path, slides
) -> None:
    import dataclasses

    from engine.modelpkg import read_metadata, write_metadata
    from gui.views import slide_view as sv

    meta = read_metadata(MODEL)
    strict = write_metadata(
        MODEL, dataclasses.replace(meta, extra={**meta.extra, "requires_stain": "H&E"}), tmp_path / "he-only.onnx"
    )
    grey = slides["grey"]
    view = window.slide_view
    open_and_wait(window, grey)
    view.select_model(str(strict))
    qtbot.waitUntil(lambda: view.heatmap_panel.current_model() == str(strict.resolve()), timeout=TIMEOUT_MS)
    with qtbot.waitSignal(view.heatmap_failed, timeout=TIMEOUT_MS):
        view.run_heatmap()
    assert dialogs and dialogs[-1][0] == "Not an H&E slide" and "greyscale" in dialogs[-1][1]
    assert view.result is None  # declined: nothing analysed
    asked: list[str] = []

    def accept(_parent, _title, message, ok_text="Continue"):  # type: ignore[no-untyped-def]
        asked.append(message)
        return True

    monkeypatch.setattr(sv, "confirm", accept)
    # the refusal comes back, the user accepts, the run starts again with the override and finishes
    with qtbot.waitSignal(view.heatmap_finished, timeout=2 * TIMEOUT_MS):
        view.run_heatmap()
    assert asked and view.result is not None
    assert any("greyscale" in w for w in view.result.summary["warnings"])
    assert "Warning:" in view.heatmap_panel.summary_label.text()
