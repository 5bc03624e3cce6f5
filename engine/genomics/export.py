"""Exporting a genomics run as a MetaScope model package (task ``genomics_classifier``).

One ONNX file, built node by node with ``onnx.helper`` (no torch exporter, no skl2onnx):

- inputs ``numeric (N, Dn)`` float32 (NaN = missing) and ``codes (N, Kc)`` int64 (0 = missing /
  unseen category); output ``probabilities (N, 2)``;
- networks: median imputation, standardisation, missing indicators and the category tables
  (one-hot or the learned embedding) inside the graph, then Gemm/Relu layers and Softmax;
- boosted trees: each category's positive rate looked up in the graph, then an
  ``ai.onnx.ml.TreeEnsembleRegressor`` (NaN follows each split's learned missing direction),
  Sigmoid.

The metadata carries the column names, category maps and feature settings, so
:mod:`engine.genomics.predict` rebuilds the inputs from a study with numpy and pandas only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.genomics.encode import Preprocessor
from engine.genomics.train import FINAL_FOLD, GenomicsTrainConfig, load_genomics_config
from engine.modelpkg import ModelMetadata, embed_metadata

OPSET = 17
ML_OPSET = 3


def _const(name: str, arr: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(arr, order="C"), name=name)


def _inputs(pre: Preprocessor) -> tuple[list[Any], list[Any], list[Any]]:
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", len(pre.numeric)]),
        helper.make_tensor_value_info("codes", TensorProto.INT64, ["N", len(pre.categorical)]),
    ]
    return inputs, [], []


def _category_columns(pre: Preprocessor, nodes: list[Any], inits: list[Any]) -> list[str]:
    """Nodes slicing ``codes`` into one (N,) int64 tensor per categorical column."""
    from onnx import helper

    out = []
    for j in range(len(pre.categorical)):
        inits.append(_const(f"cat_idx_{j}", np.array(j, dtype=np.int64)))
        nodes.append(helper.make_node("Gather", ["codes", f"cat_idx_{j}"], [f"code_{j}"], axis=1))
        out.append(f"code_{j}")
    return out


def dense_graph(pre: Preprocessor, state: dict[str, np.ndarray]) -> Any:
    """ONNX model of a ``dense`` / ``dense_embed`` network from its numpy state dict."""
    from onnx import TensorProto, helper

    inputs, nodes, inits = _inputs(pre)
    inits += [_const("median", np.asarray(pre.median, np.float32)), _const("mean", np.asarray(pre.mean, np.float32)),
              _const("std", np.asarray(pre.std, np.float32))]
    nodes += [
        helper.make_node("IsNaN", ["numeric"], ["isnan"]),
        helper.make_node("Where", ["isnan", "median", "numeric"], ["filled"]),
        helper.make_node("Sub", ["filled", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["z"]),
    ]
    parts = ["z"]
    if pre.mask_columns:
        inits.append(_const("mask_idx", np.asarray(pre.mask_columns, np.int64)))
        nodes += [helper.make_node("Gather", ["isnan", "mask_idx"], ["mask_b"], axis=1),
                  helper.make_node("Cast", ["mask_b"], ["mask"], to=TensorProto.FLOAT)]
        parts.append("mask")
    for j, code in enumerate(_category_columns(pre, nodes, inits)):
        inits.append(_const(f"table_{j}", state[f"tables.{j}.weight"].astype(np.float32)))
        nodes.append(helper.make_node("Gather", [f"table_{j}", code], [f"emb_{j}"], axis=0))
        parts.append(f"emb_{j}")
    nodes.append(helper.make_node("Concat", parts, ["h0"], axis=1))
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"head\.(\d+)\.weight$", k))})
    h = "h0"
    for n, k in enumerate(layers):
        inits += [_const(f"w{k}", state[f"head.{k}.weight"].astype(np.float32)),
                  _const(f"b{k}", state[f"head.{k}.bias"].astype(np.float32))]
        nodes.append(helper.make_node("Gemm", [h, f"w{k}", f"b{k}"], [f"g{k}"], transB=1))
        h = f"g{k}"
        if n < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"r{k}"]))
            h = f"r{k}"
    nodes.append(helper.make_node("Softmax", [h], ["probabilities"], axis=1))
    return _model(nodes, inputs, inits, ml=False)


def tree_graph(pre: Preprocessor, trees: dict[str, Any]) -> Any:
    """ONNX model of the boosted trees (see :func:`engine.genomics.models.gbm_trees`)."""
    from onnx import helper

    inputs, nodes, inits = _inputs(pre)
    parts = ["numeric"]
    for j, code in enumerate(_category_columns(pre, nodes, inits)):
        rate = np.array([np.nan if v is None else v for v in pre.target_rate[pre.categorical[j]]], dtype=np.float32)
        inits += [_const(f"rate_{j}", rate), _const(f"unsq_{j}", np.array([1], dtype=np.int64))]
        nodes += [helper.make_node("Gather", [f"rate_{j}", code], [f"rate_v_{j}"], axis=0),
                  helper.make_node("Unsqueeze", [f"rate_v_{j}", f"unsq_{j}"], [f"rate_c_{j}"])]
        parts.append(f"rate_c_{j}")
    nodes.append(helper.make_node("Concat", parts, ["x"], axis=1))
    attrs: dict[str, list[Any]] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes", "nodes_truenodeids",
        "nodes_falsenodeids", "nodes_missing_value_tracks_true", "target_treeids", "target_nodeids", "target_ids",
        "target_weights")}
    for t, tree in enumerate(trees["trees"]):
        for i in range(len(tree["leaf"])):
            leaf = bool(tree["leaf"][i])
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(i)
            attrs["nodes_featureids"].append(0 if leaf else int(tree["feature"][i]))
            attrs["nodes_values"].append(0.0 if leaf else float(tree["threshold"][i]))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(0 if leaf else int(tree["left"][i]))
            attrs["nodes_falsenodeids"].append(0 if leaf else int(tree["right"][i]))
            attrs["nodes_missing_value_tracks_true"].append(0 if leaf else int(tree["missing_left"][i]))
            if leaf:
                attrs["target_treeids"].append(t)
                attrs["target_nodeids"].append(i)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(tree["value"][i]))
    nodes.append(helper.make_node("TreeEnsembleRegressor", ["x"], ["raw"], domain="ai.onnx.ml", n_targets=1,
                                  base_values=[float(trees["base"])], aggregate_function="SUM",
                                  post_transform="NONE", **attrs))
    inits.append(_const("one", np.array(1.0, dtype=np.float32)))
    nodes += [helper.make_node("Sigmoid", ["raw"], ["p1"]), helper.make_node("Sub", ["one", "p1"], ["p0"]),
              helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
    return _model(nodes, inputs, inits, ml=True)


def _model(nodes: list[Any], inputs: list[Any], inits: list[Any], ml: bool) -> Any:
    import onnx
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph(nodes, "metascope_genomics", inputs, [out], initializer=inits)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("ai.onnx.ml", ML_OPSET)] if ml else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="metascope")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def chosen_fold(run: Path) -> int:
    """The final model when the run fitted one, else the best fold."""
    for ext in ("pkl", "pt"):
        if (run / "checkpoints" / f"fold_{FINAL_FOLD}_best.{ext}").is_file():
            return FINAL_FOLD
    m = run / "metrics.json"
    if m.is_file():
        try:
            return int(json.loads(m.read_text(encoding="utf-8"))["best_fold"])
        except (ValueError, KeyError, TypeError):
            pass
    done = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(run.glob("fold_*.json"))]
    if not done:
        raise ConfigError(f"{run} has no finished fold to export (training not finished; resume it with --resume)")
    return int(max(done, key=lambda r: (r["best_score"], -r["fold"]))["fold"])


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], name: str | None = None) -> Path:
    """Write the run's model (final model, else best fold) as a ``genomics_classifier`` package.

    Raises:
        ConfigError / RunFolderError: not a genomics run, or no trained model yet.
    """
    from engine.fileio import atomic_path

    run = Path(run_dir)
    cfg = load_genomics_config(run)
    fold = chosen_fold(run)
    if cfg.model == "gbm":
        from engine.genomics.fold import load_pickle
        from engine.genomics.models import gbm_trees

        ck = load_pickle(run / "checkpoints" / f"fold_{fold}_best.pkl")
        pre = Preprocessor.from_dict(ck["preprocessor"])
        model = tree_graph(pre, gbm_trees(ck["model"]))
    else:
        from engine.train.runfolder import load_checkpoint

        ck = load_checkpoint(run / "checkpoints" / f"fold_{fold}_best.pt")
        pre = Preprocessor.from_dict(ck["preprocessor"])
        model = dense_graph(pre, {k: v.detach().cpu().numpy() for k, v in ck["model"].items()})
    embed_metadata(model, _metadata(run, cfg, ck, pre, fold, name))
    import onnx

    dst = Path(out)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return dst


def _metadata(run: Path, cfg: GenomicsTrainConfig, ck: dict[str, Any], pre: Preprocessor, fold: int,
              name: str | None) -> ModelMetadata:
    metrics: dict[str, Any] = {}
    mp = run / "metrics.json"
    if mp.is_file():
        m = json.loads(mp.read_text(encoding="utf-8"))
        metrics = {k: m.get(k) for k in ("auc", "auc_ci95", "accuracy", "sensitivity", "specificity", "n", "evaluated_on")}
    data = json.loads((run / "data.json").read_text(encoding="utf-8")) if (run / "data.json").is_file() else {}
    feats = data.get("features", {})
    genes = [c[5:] for c in pre.numeric if c.startswith("gene_")]
    return ModelMetadata(
        name=name or f"Genomics {cfg.model} {run.name}",
        task="genomics_classifier",
        class_names=tuple(ck["class_names"]),
        positive_class=1,
        output="probabilities",
        arch=f"genomics_{cfg.model}",
        input_name="numeric",
        output_name="probabilities",
        feature_dim=len(pre.numeric) + len(pre.categorical),
        training_data={"study": cfg.study, "label_column": cfg.label_column, "features": cfg.features,
                       "folds": cfg.n_folds, "fold_exported": "final" if fold == FINAL_FOLD else fold,
                       "best_epoch": int(ck["best"]["epoch"]), "samples": data.get("samples_used"),
                       "label_counts": data.get("label_counts")},
        metrics=metrics,
        extra={
            "preprocessing": pre.to_dict(),
            "feature_settings": {"features": cfg.features, "genes": genes, "min_gene_freq": cfg.min_gene_freq,
                                 "max_genes": cfg.max_genes, "label_column": cfg.label_column, "positive": cfg.positive,
                                 "roles": feats.get("roles", {}),
                                 "dropped_columns": [d["column"] for d in data.get("dropped_columns", [])]},
            "inputs": {"numeric": "(N, Dn) float32, NaN = missing", "codes": "(N, Kc) int64, 0 = missing/unseen"},
            "model_config": {k: v for k, v in cfg.to_dict().items() if k not in ("study",)},
        },
    )
