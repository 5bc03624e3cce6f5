"""The demo model package: self-describing, and it tells synthetic tumour from stroma."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.demo import DEMO_MODEL_NAME, roc_auc
from engine.infer.preprocess import Preprocessor, to_probabilities
from engine.infer.session import load_model
from engine.modelpkg import read_metadata
from engine.slides.synthetic import Ellipse, make_texture


def test_demo_model_metadata(demo_onnx: Path) -> None:
    meta = read_metadata(demo_onnx)
    assert meta.name == DEMO_MODEL_NAME
    assert meta.task == "patch_classification"
    assert meta.class_names == ("normal", "tumour") and meta.positive_class_name == "tumour"
    assert meta.input_size == 96 and meta.input_mpp == pytest.approx(0.972)


def test_demo_model_scores_tumour_patches_high_and_stroma_low(demo_onnx: Path) -> None:
    # one tissue blob filling the canvas, tumour in its left half only
    tex = make_texture(4000, 2000, 0.5, seed=5, tissue_regions=(Ellipse(2000, 1000, 4000, 3000),),
                       tumour_regions=(Ellipse(0, 1000, 1800, 3000),))
    session = load_model(demo_onnx)
    pre = Preprocessor(session.metadata)
    # 96 px patches at ~0.972 um/px (downsample ~1.944 from 0.5 um/px)
    tumour = np.stack([tex.render(100 + 200 * i, 500, 96, 96, 1.944) for i in range(6)])
    stroma = np.stack([tex.render(2300 + 250 * i, 500, 96, 96, 1.944) for i in range(6)])
    p_t = to_probabilities(session.run(pre(tumour)), session.metadata)[:, 1]
    p_s = to_probabilities(session.run(pre(stroma)), session.metadata)[:, 1]
    assert p_t.min() > 0.9 and p_s.max() < 0.1
    glass = np.full((2, 96, 96, 3), 250, dtype=np.uint8)
    assert to_probabilities(session.run(pre(glass)), session.metadata)[:, 1].max() < 0.1


def test_roc_auc() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1], bool)) == pytest.approx(0.5)
    assert roc_auc(np.array([0.5]), np.array([1], bool)) is None
