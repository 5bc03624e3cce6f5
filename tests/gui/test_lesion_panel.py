"""Lesions in the slide view (issue 14): listed largest first, click to go there, outlines over the
slide, the category in the slide result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from engine.slides.synthetic import Ellipse, write_synthetic_slide

TIMEOUT_MS = 300_000  # a limit for a busy machine; an idle one needs seconds


@pytest.fixture(scope="module")
def tumour_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gui-lesions")
    return write_synthetic_slide(d / "lesion.svs", 2048, 1536, seed=3, levels=2, with_label=False,
                                 tumour_regions=(Ellipse(1100.0, 800.0, 380.0, 320.0),)).path


def test_lesions_listed_outlined_and_zoomed_to(qtbot, window, open_and_wait, tumour_slide, demo_onnx) -> None:  # type: ignore[no-untyped-def]
    view = window.slide_view
    open_and_wait(window, tumour_slide)
    view.select_model(str(demo_onnx))
    qtbot.waitUntil(lambda: view.heatmap_panel.current_model() == str(Path(demo_onnx).resolve()), timeout=TIMEOUT_MS)
    with qtbot.waitSignal(view.heatmap_finished, timeout=TIMEOUT_MS):
        view.run_heatmap()
    panel = view.lesion_panel
    qtbot.waitUntil(lambda: view.result is not None and len(panel.lesions) > 0, timeout=TIMEOUT_MS)

    diam = [les.diameter_px for les in panel.lesions]
    assert diam == sorted(diam, reverse=True)
    category = panel.summary["category"]
    assert category in ("isolated tumour cells", "micrometastasis", "macrometastasis")
    assert category in view.heatmap_panel.summary_label.text()  # in the slide result
    assert panel.list.count() == len(panel.lesions) and "mm" in panel.list.item(0).text()
    assert view.lesion_outlines.lesions == panel.lesions

    # click the largest: the viewer centres on it and the outline is highlighted
    view.viewer.fit()
    item = panel.list.item(0)
    rect = panel.list.visualItemRect(item)
    qtbot.mouseClick(panel.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    x0, y0, x1, y1 = panel.lesions[0].bbox
    qtbot.waitUntil(lambda: view.lesion_outlines.selected == 0, timeout=TIMEOUT_MS)
    cx, cy = view.viewer.center
    assert abs(cx - (x0 + x1) / 2) < 1 and abs(cy - (y0 + y1) / 2) < 1

    # the outline is drawn over the slide (magenta/blue pixels along it)
    path = view.lesion_outlines.path(panel.lesions[0])
    assert path.boundingRect().width() > 10
    img = view.viewer.grab().toImage()
    arr = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, : 4 * img.width()]
    bgra = arr.reshape(img.height(), img.width(), 4)
    blue = (bgra[..., 0] > 200) & (bgra[..., 1] > 120) & (bgra[..., 1] < 180) & (bgra[..., 2] < 40)
    assert blue.sum() > 20


def test_lesions_use_the_package_operating_threshold(demo_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from engine.infer.pipeline import HeatmapResult
    from engine.modelpkg import read_metadata, write_metadata
    from gui.widgets.lesion_panel import category_html, compute_lesions

    grid = np.full((8, 8), 0.1, dtype=np.float32)
    grid[1:3, 1:3] = 0.95
    grid[5:7, 5:7] = 0.7  # a lesion at 0.5, not at 0.9
    rc = np.argwhere(np.isfinite(grid)).astype(np.int32)
    p = grid[rc[:, 0], rc[:, 1]]
    result = HeatmapResult(
        grid=grid, probabilities=np.stack([1 - p, p], 1), level0_xy=rc[:, ::-1].astype(np.int64) * 200,
        grid_rc=rc, class_names=("normal", "tumour"), positive_class=1, tile_size_level0=200, stride_level0=200,
        origin_level0=(0, 0), slide_mpp=0.5, slide_mpp_source="file", slide={"name": "s"}, model={}, summary={},
        timing={}, config={"threshold": 0.5})
    strict = write_metadata(demo_onnx, replace(read_metadata(demo_onnx), extra={"operating_threshold": 0.9}),
                            tmp_path / "strict.onnx")
    assert len(compute_lesions(result)[0]) == 2
    lesions, summary = compute_lesions(result, str(strict))
    assert len(lesions) == 1 and summary["threshold"] == 0.9
    # 2 x 2 cells of 0.1 mm: 0.27 mm across the diagonal (corners cut)
    assert "micrometastasis" in category_html(summary) and "0.27 mm" in category_html(summary)
