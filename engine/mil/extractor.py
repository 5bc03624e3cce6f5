"""A fixed (untrained) colour and texture statistics feature extractor, built with ``onnx.helper``.

A baseline backbone for MIL that needs no training and no weights file: per tile it measures
colour means and spreads, how much of the tile is dark, how purple (haematoxylin-like) it is,
and how much fine texture it has (edges). Dense clusters of dark purple nuclei, as in tumour,
stand out clearly. It is a proper MetaScope model package (task ``feature_extractor``) that runs
on the same pipeline as any other extractor; a learned extractor (a patch model's penultimate
layer) is the better choice when one is available.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.modelpkg import ModelMetadata

#: Names of the 16 features, in output order.
STATS_FEATURES = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "gray_mean",
    "gray_std",
    "dark_frac_030",
    "dark_frac_045",
    "dark_frac_060",
    "purple_rb_minus_g",
    "saturation",
    "edges_laplacian",
    "edges_gradient",
    "dark_blocks",
)


def build_stats_extractor(
    path: str | os.PathLike[str],
    input_size: int = 64,
    input_mpp: float | None = 1.0,
    name: str = "colour-texture-stats",
) -> Path:
    """Write the statistics extractor as a model package.

    Args:
        path: output ``.onnx`` path (written atomically).
        input_size: tile side in pixels fed to the model (the graph takes any size; this is what
            feature extraction will read).
        input_mpp: microns per pixel tiles are read at.
        name: display name.

    Returns:
        The written path. The model maps ``image (N, 3, S, S)`` in [0, 1] RGB to
        ``features (N, 16)`` float32 (see :data:`STATS_FEATURES`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from engine.fileio import atomic_path
    from engine.modelpkg import METADATA_KEY

    def const(name: str, arr: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(arr), name=name)

    inits = [
        const("gray_w", np.array([0.299, 0.587, 0.114], np.float32).reshape(1, 3, 1, 1)),
        const("lap_w", np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32).reshape(1, 1, 3, 3)),
        const("grad_w", np.array([[[-1, 1], [0, 0]], [[-1, 0], [1, 0]]], np.float32).reshape(2, 1, 2, 2)),
        const("thr", np.array([0.30, 0.45, 0.60], np.float32).reshape(1, 3, 1, 1)),
        const("sharp", np.array(25.0, np.float32)),
        const("eps", np.array(1e-6, np.float32)),
        const("half", np.array(0.5, np.float32)),
        const("block_thr", np.array(0.35, np.float32)),
        const("idx_r", np.array([0], np.int64)),
        const("idx_g", np.array([1], np.int64)),
        const("idx_b", np.array([2], np.int64)),
        const("axis1", np.array([1], np.int64)),
    ]
    n = helper.make_node
    nodes = [
        # colour moments: N x 3 each
        n("ReduceMean", ["image"], ["mean_c"], axes=[2, 3], keepdims=0),
        n("Mul", ["image", "image"], ["sq"]),
        n("ReduceMean", ["sq"], ["mean_sq"], axes=[2, 3], keepdims=0),
        n("Mul", ["mean_c", "mean_c"], ["mean_c2"]),
        n("Sub", ["mean_sq", "mean_c2"], ["var_c"]),
        n("Relu", ["var_c"], ["var_c_pos"]),
        n("Add", ["var_c_pos", "eps"], ["var_c_eps"]),
        n("Sqrt", ["var_c_eps"], ["std_c"]),
        # grey level: N x 1 x S x S
        n("Conv", ["image", "gray_w"], ["gray"]),
        n("ReduceMean", ["gray"], ["gray_mean"], axes=[1, 2, 3], keepdims=0),
        n("Mul", ["gray", "gray"], ["gray_sq"]),
        n("ReduceMean", ["gray_sq"], ["gray_mean_sq"], axes=[1, 2, 3], keepdims=0),
        n("Mul", ["gray_mean", "gray_mean"], ["gray_mean2"]),
        n("Sub", ["gray_mean_sq", "gray_mean2"], ["gray_var"]),
        n("Relu", ["gray_var"], ["gray_var_pos"]),
        n("Add", ["gray_var_pos", "eps"], ["gray_var_eps"]),
        n("Sqrt", ["gray_var_eps"], ["gray_std0"]),
        n("Unsqueeze", ["gray_mean", "axis1"], ["gray_mean_1"]),  # N x 1
        n("Unsqueeze", ["gray_std0", "axis1"], ["gray_std_1"]),  # N x 1
        # soft fraction of pixels darker than each threshold: N x 3
        n("Sub", ["thr", "gray"], ["below"]),
        n("Mul", ["below", "sharp"], ["below_s"]),
        n("Sigmoid", ["below_s"], ["dark_soft"]),
        n("ReduceMean", ["dark_soft"], ["dark_frac"], axes=[2, 3], keepdims=0),
        # purple: (R + B) / 2 - G, positive part: N x 1
        n("Gather", ["image", "idx_r"], ["ch_r"], axis=1),
        n("Gather", ["image", "idx_g"], ["ch_g"], axis=1),
        n("Gather", ["image", "idx_b"], ["ch_b"], axis=1),
        n("Add", ["ch_r", "ch_b"], ["rb"]),
        n("Mul", ["rb", "half"], ["rb_half"]),
        n("Sub", ["rb_half", "ch_g"], ["purple_raw"]),
        n("Relu", ["purple_raw"], ["purple"]),
        n("ReduceMean", ["purple"], ["purple_mean"], axes=[2, 3], keepdims=0),
        # saturation proxy: max - min over channels: N x 1
        n("ReduceMax", ["image"], ["cmax"], axes=[1], keepdims=1),
        n("ReduceMin", ["image"], ["cmin"], axes=[1], keepdims=1),
        n("Sub", ["cmax", "cmin"], ["sat"]),
        n("ReduceMean", ["sat"], ["sat_mean"], axes=[2, 3], keepdims=0),
        # texture: mean |laplacian| and mean |gradient| of grey: N x 1 each
        n("Conv", ["gray", "lap_w"], ["lap"]),
        n("Abs", ["lap"], ["lap_abs"]),
        n("ReduceMean", ["lap_abs"], ["lap_mean"], axes=[2, 3], keepdims=0),
        n("Conv", ["gray", "grad_w"], ["grad"]),
        n("Abs", ["grad"], ["grad_abs"]),
        n("ReduceMean", ["grad_abs"], ["grad_mean2"], axes=[2, 3], keepdims=1),
        n("ReduceMean", ["grad_mean2"], ["grad_mean"], axes=[1, 2, 3], keepdims=0),
        n("Unsqueeze", ["grad_mean", "axis1"], ["grad_mean_1"]),
        # dense nuclei: fraction of 8x8 blocks whose mean darkness (at 0.45) exceeds block_thr
        n("Gather", ["dark_soft", "idx_g"], ["dark045"], axis=1),  # N x 1 x S x S (threshold 0.45)
        n("AveragePool", ["dark045"], ["dark_blocks_map"], kernel_shape=[8, 8], strides=[8, 8]),
        n("Sub", ["dark_blocks_map", "block_thr"], ["blk_d"]),
        n("Mul", ["blk_d", "sharp"], ["blk_s"]),
        n("Sigmoid", ["blk_s"], ["blk_soft"]),
        n("ReduceMean", ["blk_soft"], ["dark_blocks"], axes=[2, 3], keepdims=0),
        n(
            "Concat",
            [
                "mean_c",
                "std_c",
                "gray_mean_1",
                "gray_std_1",
                "dark_frac",
                "purple_mean",
                "sat_mean",
                "lap_mean",
                "grad_mean_1",
                "dark_blocks",
            ],
            ["features"],
            axis=1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "stats_extractor",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, input_size, input_size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(STATS_FEATURES)])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="metascope")
    model.ir_version = 8
    onnx.checker.check_model(model)
    meta = ModelMetadata(
        name=name,
        task="feature_extractor",
        class_names=(),
        input_size=input_size,
        input_mpp=input_mpp,
        arch="stats",
        input_name="image",
        output_name="features",
        feature_dim=len(STATS_FEATURES),
        extra={"feature_names": list(STATS_FEATURES), "description": __doc__.split("\n\n")[0].replace("\n", " ")},
    )
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = meta.to_json()
    out = Path(path)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out
