"""Demo assets: a synthetic slide and a small model that finds its tumour, generated on demand.

The demo model is built directly with ``onnx.helper`` (no torch, no training): it unmixes the
stains of each pixel (colour deconvolution, Ruifrok & Johnston), averages the hematoxylin
density over the tile and maps it through a logistic. Tumour in the synthetic texture is packed
with large, dark hematoxylin nuclei on a purple background, stroma is pink with sparse small
nuclei, so mean hematoxylin density separates them. It is a real MetaScope model package: any
code path that runs trained models runs this one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.fileio import atomic_path
from engine.jobs import CancelToken, ProgressCallback
from engine.paths import demo_dir

if TYPE_CHECKING:
    from engine.infer.pipeline import HeatmapResult
    from engine.slides.synthetic import SyntheticSlide

DEMO_MODEL_NAME = "Demo model (synthetic tissue)"
# Bumped whenever the generated assets change, so a stale demo folder is regenerated.
DEMO_VERSION = 1
DEMO_MODEL_FILE = f"demo-model-v{DEMO_VERSION}.onnx"
# Level-0 size and resolution of the demo slide: ~1,000 tissue tiles at the model's 0.972 um/px,
# a few seconds of heatmap on a laptop, and about as long to generate once.
DEMO_SLIDE_SIZE = (10_240, 7_680)
DEMO_SLIDE_MPP = 0.5
DEMO_SEED = 7

# Model input: PCam convention (96 px at ~0.97 um/px, 10x), so the demo exercises the same
# resampling as real patch models.
INPUT_SIZE = 96
INPUT_MPP = 0.972
# Optical density per RGB channel of one unit of each stain (same spectra as the synthetic
# texture; close to the published H&E vectors).
HEMATOXYLIN_OD = (1.2, 1.6, 0.6)
EOSIN_OD = (0.08, 0.47, 0.27)
# Logistic on mean hematoxylin density: stroma ~0.05, tumour ~0.6; decision point in between.
H_THRESHOLD = 0.28
H_GAIN = 25.0


def demo_model(path: str | os.PathLike[str]) -> Path:
    """Write the demo model package to ``path`` (atomically) and return the path.

    The graph, for input ``image`` float32 ``(N, 3, 96, 96)`` RGB in 0-1::

        od    = -log(clip(image, 1/255, 1))            # N x 3 x 96 x 96 optical density
        stain = relu(conv1x1(od, pinv([H; E])))         # N x 2 x 96 x 96 (hematoxylin, eosin)
        mean  = flatten(global_average_pool(stain))     # N x 2
        logits = mean @ W + b                           # N x 2 (normal, tumour)
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from engine.modelpkg import METADATA_KEY, ModelMetadata

    stains = np.array([HEMATOXYLIN_OD, EOSIN_OD], dtype=np.float64)  # 2 x 3
    unmix = np.linalg.pinv(stains).T.astype(np.float32).reshape(2, 3, 1, 1)  # conv weight: out x in x 1 x 1
    head_w = np.array([[0.0, H_GAIN], [0.0, 0.0]], dtype=np.float32)  # (H, E) -> (normal, tumour)
    head_b = np.array([0.0, -H_GAIN * H_THRESHOLD], dtype=np.float32)
    inits = [
        numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "clip_min"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "clip_max"),
        numpy_helper.from_array(unmix, "unmix_w"),
        numpy_helper.from_array(np.zeros(2, dtype=np.float32), "unmix_b"),
        numpy_helper.from_array(head_w, "head_w"),
        numpy_helper.from_array(head_b, "head_b"),
    ]
    nodes = [
        helper.make_node("Clip", ["image", "clip_min", "clip_max"], ["clipped"]),
        helper.make_node("Log", ["clipped"], ["log"]),
        helper.make_node("Neg", ["log"], ["od"]),
        helper.make_node("Conv", ["od", "unmix_w", "unmix_b"], ["stain_raw"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["stain_raw"], ["stain"]),
        helper.make_node("GlobalAveragePool", ["stain"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "head_w", "head_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "metascope_demo",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="metascope", doc_string=DEMO_MODEL_NAME
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    meta = ModelMetadata(
        name=DEMO_MODEL_NAME,
        task="patch_classification",
        class_names=("normal", "tumour"),
        positive_class=1,
        input_size=INPUT_SIZE,
        input_mpp=INPUT_MPP,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        channel_order="RGB",
        input_layout="NCHW",
        output="logits",
        arch="stain-deconvolution-logistic",
        input_name="image",
        output_name="logits",
        training_data={
            "dataset": "none: weights set by hand for MetaScope's synthetic H&E texture",
            "note": "for demonstration and self-tests only; not for real tissue",
        },
        extra={"demo_version": DEMO_VERSION},
    )
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = meta.to_json()
    out = Path(path)
    with atomic_path(out) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return out


def demo_slide(
    path: str | os.PathLike[str],
    size: tuple[int, int] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SyntheticSlide:
    """Write the demo slide (Aperio-style pyramidal TIFF with mpp) and return its ``SyntheticSlide``.

    Args:
        size: level-0 ``(width, height)``; default :data:`DEMO_SLIDE_SIZE`.
    """
    from engine.slides.synthetic import write_synthetic_slide

    size = size or DEMO_SLIDE_SIZE

    return write_synthetic_slide(
        path,
        size[0],
        size[1],
        mpp=DEMO_SLIDE_MPP,
        flavour="aperio",
        seed=DEMO_SEED,
        with_label=False,
        progress=progress,
        cancel=cancel,
    )


def demo_truth(size: tuple[int, int] | None = None) -> SyntheticSlide:
    """Ground truth of the demo slide (a ``SyntheticTexture``-backed ``SyntheticSlide`` without a file)."""
    from engine.slides.synthetic import SyntheticSlide, make_texture

    size = size or DEMO_SLIDE_SIZE

    texture = make_texture(size[0], size[1], DEMO_SLIDE_MPP, DEMO_SEED)
    return SyntheticSlide(
        path=None,
        width=size[0],
        height=size[1],
        mpp=DEMO_SLIDE_MPP,
        mpp_in_file=True,
        flavour="aperio",
        level_dimensions=((size[0], size[1]),),
        texture=texture,
    )


def ensure_demo_assets(
    folder: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[Path, Path]:
    """Generate the demo slide and model once into ``folder`` (default :func:`engine.paths.demo_dir`).

    Both files are written atomically, so an interrupted first run is simply redone; later calls
    reuse the files.

    Returns:
        ``(slide_path, model_path)``.

    Raises:
        OutputError: the demo folder cannot be written.
    """
    from engine.fileio import ensure_writable_dir

    d = Path(folder) if folder is not None else demo_dir()
    w, h = DEMO_SLIDE_SIZE
    slide = d / f"demo-slide-v{DEMO_VERSION}-{w}x{h}.svs"  # the size is part of the ground truth
    model = d / DEMO_MODEL_FILE
    if slide.is_file() and model.is_file():
        return slide, model
    ensure_writable_dir(d)
    if not model.is_file():
        demo_model(model)
    if not slide.is_file():
        demo_slide(slide, progress=progress, cancel=cancel)
    return slide, model


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank-sum statistic (ties count half).

    Args:
        scores: float ``(N,)``; labels: bool ``(N,)``.

    Returns:
        AUC in 0-1, or ``None`` when one class is absent.
    """
    from engine.train.metrics import roc_auc as _auc

    auc = _auc(np.asarray(labels, dtype=bool), np.asarray(scores, dtype=np.float64))
    return None if np.isnan(auc) else auc


def score_against_truth(result: HeatmapResult, truth: SyntheticSlide) -> dict[str, float | int | None]:
    """How well a heatmap finds the known tumour of a synthetic slide.

    Tiles at least half tumour count as positive, tiles without tumour as negative; tiles in
    between (on the tumour border) are left out of the AUC.

    Returns:
        ``auc``, ``mean_inside``, ``mean_outside``, ``p95_outside``, ``tiles_inside``, ``tiles_outside``.
    """
    p = result.positive_probabilities.astype(np.float64)
    frac = truth.tumour_fraction(result.level0_xy, result.tile_size_level0)
    done = np.isfinite(p)
    inside = done & (frac >= 0.5)
    outside = done & (frac == 0)
    both = inside | outside
    return {
        "auc": roc_auc(p[both], inside[both]),
        "mean_inside": float(p[inside].mean()) if inside.any() else None,
        "mean_outside": float(p[outside].mean()) if outside.any() else None,
        "p95_outside": float(np.percentile(p[outside], 95)) if outside.any() else None,
        "tiles_inside": int(inside.sum()),
        "tiles_outside": int(outside.sum()),
    }
