"""Slide-level (MIL) models in the slide view: chosen from the library like heatmap models, their
feature extractor found by sha256 (or asked for), clinical values from a generated form, class
probabilities as bars, and the attention map painted with the heatmap's overlay controls.

The aggregator is a tiny hand-built ``mil_aggregator`` package (attention on dark, nuclei-dense
tiles, younger age pushing towards N+) over the colour/texture statistics extractor: built in
milliseconds, exact and deterministic, with the same inputs/outputs and metadata as an exported
trained model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication, QFileDialog

from engine.slides.synthetic import SyntheticSlide
from gui.main_window import MainWindow
from gui.views.slide_view import SlideView

RUN_TIMEOUT_MS = 300_000  # a limit for a busy machine; an idle one needs seconds
TILE_PX, TILE_MPP = 64, 1.0
DARK = 9  # index of "dark_frac_045" in engine.mil.extractor.STATS_FEATURES
AGE = {"name": "age", "median": 60.0, "mean": 60.0, "std": 10.0}
ER_CATEGORIES = ["negative", "positive"]


def build_aggregator(path: Path, extractor: Path) -> Path:
    """A two-class (N0, N+) MIL aggregator package with a clinical branch (age, ER)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from engine.fileio import atomic_path
    from engine.modelpkg import METADATA_KEY, ModelMetadata, sha256_file

    w_att = np.zeros((16, 1), np.float32)
    w_att[DARK, 0] = 10.0  # attention on tiles dense with dark nuclei
    w_cls = np.zeros((16, 2), np.float32)
    w_cls[DARK, 1] = 12.0  # N+ when the attended tiles are dark
    b_cls = np.array([0.0, -12.0 * 0.2], np.float32)
    w_num = np.array([[0.0, -0.8], [0.0, 0.0]], np.float32)  # (age z, age missing) -> logits: younger, more N+
    emb = np.array([[0, 0], [0, 0], [0, -0.3], [0, 0.3]], np.float32)  # unknown, missing, negative, positive
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w_att, "w_att"), (w_cls, "w_cls"), (b_cls, "b_cls"), (w_num, "w_num"), (emb, "emb"),
        (np.array([-1], np.int64), "flat"), (np.array([0], np.int64), "axis0"), (np.array([1], np.int64), "axis1"))]
    nodes = [
        helper.make_node("MatMul", ["features", "w_att"], ["att_logit"]),  # N x 1
        helper.make_node("Reshape", ["att_logit", "flat"], ["att_flat"]),  # N
        helper.make_node("Softmax", ["att_flat"], ["attention"], axis=0),  # N, sums to 1
        helper.make_node("Unsqueeze", ["attention", "axis0"], ["att_row"]),  # 1 x N
        helper.make_node("MatMul", ["att_row", "features"], ["slide"]),  # 1 x 16
        helper.make_node("MatMul", ["slide", "w_cls"], ["img_logits0"]),
        helper.make_node("Add", ["img_logits0", "b_cls"], ["img_logits"]),  # 1 x 2
        helper.make_node("MatMul", ["clinical_numeric", "w_num"], ["num_logits"]),  # 1 x 2
        helper.make_node("Gather", ["emb", "clinical_codes"], ["code_emb"], axis=0),  # 1 x 1 x 2
        helper.make_node("ReduceSum", ["code_emb", "axis1"], ["code_logits"], keepdims=0),  # 1 x 2
        helper.make_node("Add", ["img_logits", "num_logits"], ["l1"]),
        helper.make_node("Add", ["l1", "code_logits"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mil",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("clinical_numeric", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("clinical_codes", TensorProto.INT64, [1, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["N"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="metascope-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    meta = ModelMetadata(
        name="Lymph-node status (test MIL)", task="mil_aggregator", class_names=("N0", "N+"), positive_class=1,
        input_size=TILE_PX, input_mpp=TILE_MPP, output="probabilities", arch="gated_attention_mil",
        input_name="features", output_name="probabilities", feature_dim=16,
        feature_extractor={"name": "colour-texture-stats", "sha256": sha256_file(extractor)},
        metrics={"auc": 0.93},
        extra={"clinical": {"numeric": [AGE], "categorical": [{"name": "er", "categories": ER_CATEGORIES}]},
               "tiling": {"tile_size": TILE_PX, "mpp": TILE_MPP}},
    )
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = meta.to_json()
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


@pytest.fixture(scope="module")
def mil_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(extractor, aggregator)`` package files, outside the model library."""
    from engine.mil.extractor import build_stats_extractor

    root = tmp_path_factory.mktemp("mil-pair")
    extractor = build_stats_extractor(root / "stats.onnx", input_size=TILE_PX, input_mpp=TILE_MPP)
    return extractor, build_aggregator(root / "tiny-mil.onnx", extractor)


def _choose_mil_model(qtbot, view: SlideView, library_path: Path) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(view.models_refreshed, timeout=30_000):
        view.refresh_models()
    combo = view.heatmap_panel.model_combo
    index = combo.findData(str(library_path.resolve()))
    assert index >= 0, "the MIL model is offered in the model chooser"
    combo.setCurrentIndex(index)
    combo.activated.emit(index)
    assert view.heatmap_panel.mil_mode


def test_mil_model_predicts_the_slide_and_paints_attention(open_and_wait, qtbot, window: MainWindow, dialogs,
                                                           synthetic_svs: SyntheticSlide, mil_pair,
                                                           artifacts_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from engine.library import ModelLibrary

    extractor, aggregator = mil_pair
    lib = ModelLibrary()
    lib.add(extractor)
    entry = lib.add(aggregator)
    view = window.slide_view
    open_and_wait(window, synthetic_svs.path)
    _choose_mil_model(qtbot, view, entry.path)
    panel = view.heatmap_panel

    # the form is generated from the model's clinical spec; the extractor was found by sha256
    assert panel.clinical_form.names == ["age", "er"]
    assert panel.run_button.text() == "Predict Slide" and panel.run_button.isEnabled()
    assert "features: colour-texture-stats" in panel.model_info.text()
    assert "not in the model library" not in panel.model_info.text()
    panel.clinical_form.set_value("age", "44")
    panel.clinical_form.set_value("er", "positive")

    with qtbot.waitSignal(view.heatmap_finished, timeout=RUN_TIMEOUT_MS):
        panel.run_button.click()
    assert dialogs == []
    pred = view.prediction
    assert pred is not None and view.result is None
    assert pred.clinical == {"age": "44", "er": "positive"}
    assert pred.predicted_class == "N+" and float(pred.probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    # bars: both classes, the predicted one highlighted
    assert panel.class_bars.isVisible() and panel.class_bars.predicted == "N+"
    assert "N+" in panel.class_bars.toolTip() and "N0" in panel.class_bars.toolTip()
    assert "Predicted" in panel.summary_label.text() and "age = 44" in panel.summary_label.text()

    # the attention map is an overlay: high on the tumour, low elsewhere on the tissue
    overlay = view.viewer.overlay
    assert overlay is not None and overlay.value_label == "attention"
    tumour = synthetic_svs.tumour_regions[0]
    normal = synthetic_svs.tissue_regions[1]
    hit_t, hit_n = overlay.value_at(tumour.cx, tumour.cy), overlay.value_at(normal.cx, normal.cy)
    assert hit_t is not None and hit_n is not None
    assert hit_t[0] > 0.5 and hit_n[0] < 0.1
    view.viewer.repaint()
    qtbot.waitUntil(lambda: view.viewer.missing_tiles == 0 and view.viewer.scheduler.idle, timeout=30_000)
    p_t, p_n = view.viewer.to_screen(tumour.cx, tumour.cy), view.viewer.to_screen(normal.cx, normal.cy)
    shown = view.viewer.grab().toImage()
    panel.show_check.setChecked(False)
    hidden = view.viewer.grab().toImage()
    panel.show_check.setChecked(True)

    def diff(p) -> int:  # type: ignore[no-untyped-def]
        a, b = shown.pixelColor(int(p.x()), int(p.y())), hidden.pixelColor(int(p.x()), int(p.y()))
        return abs(a.red() - b.red()) + abs(a.green() - b.green()) + abs(a.blue() - b.blue())

    assert diff(p_t) > 60 and diff(p_n) < 10

    # hover value, top regions navigate to the tumour, same overlay controls
    view.viewer._update_hover(p_t)
    assert re.match(r"attention [\d.]+  ·  x ", window.hover_label.text())
    view.viewer.hovered.emit(None)  # the pointer leaves the slide
    regions = [panel.regions_list.item(i).text() for i in range(panel.regions_list.count())]
    assert regions and all(float(re.search(r"attention ([\d.]+)", t)[1]) >= panel.threshold for t in regions)
    panel.regions_list.itemClicked.emit(panel.regions_list.item(0))
    cx, cy = view.viewer.center
    assert (cx - tumour.cx) ** 2 + (cy - tumour.cy) ** 2 < (tumour.rx + 300) ** 2
    panel.threshold_slider.setValue(95)
    assert view.viewer.overlay.threshold == pytest.approx(0.95)
    panel.threshold_slider.setValue(20)
    view.viewer.fit()
    view.viewer.repaint()
    qtbot.waitUntil(lambda: view.viewer.missing_tiles == 0 and view.viewer.scheduler.idle, timeout=30_000)
    window.statusBar().clearMessage()
    QApplication.processEvents()  # lay out the side panel's new text (posted layout requests) before the shot
    window.grab().save(str(artifacts_dir / "mil-prediction.png"))

    # export: prediction JSON, attention map and tiles
    with qtbot.waitSignal(view.export_finished, timeout=30_000) as blocker:
        view.export_to(tmp_path / "exports")
    out = Path(blocker.args[0])
    d = json.loads((out / "prediction.json").read_text())
    assert d["predicted_class"] == "N+" and (out / "attention.png").is_file()
    assert np.load(out / "attention.npy").shape == pred.attention_grid.shape

    # the same slide, image only (nothing typed in): missing values are reported, not invented
    panel.clinical_form.set_value("age", "")
    panel.clinical_form.set_value("er", "")
    with qtbot.waitSignal(view.heatmap_finished, timeout=RUN_TIMEOUT_MS):
        view.run_heatmap()
    notes = " ".join(view.prediction.clinical_notes)
    assert "age: missing" in notes and "er: missing" in notes
    assert "none given" in panel.summary_label.text()


def test_extractor_not_in_the_library_is_asked_for_and_checked(open_and_wait, qtbot, window: MainWindow, dialogs, monkeypatch,
                                                               synthetic_svs: SyntheticSlide, mil_pair,
                                                               tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from engine.library import ModelLibrary
    from engine.mil.extractor import build_stats_extractor

    # an extractor of the user's own (the shipped colour-texture-stats package would be found by its sha256)
    extractor = build_stats_extractor(tmp_path / "own-stats.onnx", input_size=TILE_PX, input_mpp=TILE_MPP,
                                      name="lab-stats")
    aggregator = build_aggregator(tmp_path / "own-mil.onnx", extractor)
    entry = ModelLibrary().add(aggregator)  # the extractor stays outside the library
    view = window.slide_view
    open_and_wait(window, synthetic_svs.path)
    _choose_mil_model(qtbot, view, entry.path)
    assert "not in the model library" in view.heatmap_panel.model_info.text()

    wrong = build_stats_extractor(tmp_path / "other.onnx", input_size=48)
    answers = [str(wrong), str(extractor)]
    asked: list[str] = []

    def fake_open(parent, title, *args):  # type: ignore[no-untyped-def]
        asked.append(title)
        return answers.pop(0), ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(fake_open))
    view.run_heatmap()
    qtbot.waitUntil(lambda: bool(dialogs), timeout=30_000)
    assert asked[0].startswith("Find the feature extractor")
    assert dialogs[-1][0] == "Not the right feature extractor" and "not the feature extractor" in dialogs[-1][1]
    assert not view.running

    with qtbot.waitSignal(view.heatmap_finished, timeout=RUN_TIMEOUT_MS):
        view.run_heatmap()  # asks again; the right file starts the prediction
    assert view.prediction is not None and len(asked) == 2
    # switching back to a heatmap model restores the heatmap controls
    view.heatmap_panel.set_mode(False)
    assert view.heatmap_panel.run_button.text() == "Run Heatmap"


def test_cancel_a_prediction_leaves_the_view_usable(open_and_wait, qtbot, window: MainWindow, synthetic_svs: SyntheticSlide,
                                                    mil_pair) -> None:  # type: ignore[no-untyped-def]
    from engine.library import ModelLibrary

    extractor, aggregator = mil_pair
    lib = ModelLibrary()
    lib.add(extractor)
    entry = lib.add(aggregator)
    view = window.slide_view
    open_and_wait(window, synthetic_svs.path)
    _choose_mil_model(qtbot, view, entry.path)
    view.run_heatmap()
    assert view.running and view.heatmap_panel.cancel_button.isEnabled()
    with qtbot.waitSignal(view.heatmap_cancelled, timeout=RUN_TIMEOUT_MS):
        view.heatmap_panel.cancel_button.click()
    assert not view.running and view.prediction is None and view.viewer.overlay is None
    assert "Cancelled" in view.heatmap_panel.progress_label.text()
    assert view.heatmap_panel.run_button.isEnabled()
