"""Exporting a genomics run as a MetaScope model package (task ``genomics_classifier``).

One ONNX file, built node by node with ``onnx.helper`` (no torch exporter, no skl2onnx):

- inputs ``numeric (N, Dn)`` float32 (NaN = missing) and ``codes (N, Kc)`` int64 (0 = missing /
  unseen category); output ``probabilities (N, 2)``;
- networks: median imputation, log1p of long-tailed counts, standardisation, missing indicators and the category tables
  (one-hot or the learned embedding) inside the graph, then Gemm/Relu layers and Softmax;
- boosted trees: one ``ai.onnx.ml.TreeEnsemble`` (opset 5) holding every member of the bag (leaf
  values divided by the number of members) with ``<=`` splits on numbers and set-membership
  splits on category codes (NaN follows each split's learned missing direction), plus the mean
  baseline, Sigmoid.

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
#: TreeEnsemble (set-membership splits) needs ai.onnx.ml 5 with ONNX opset 21 (onnxruntime >= 1.20)
TREE_OPSET = 21
ML_OPSET = 5


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
    logmask = np.zeros(len(pre.numeric), dtype=bool)
    logmask[pre.log_columns] = True
    inits += [_const("logmask", logmask), _const("one", np.array(1.0, dtype=np.float32))]
    nodes += [
        helper.make_node("IsNaN", ["numeric"], ["isnan"]),
        helper.make_node("Where", ["isnan", "median", "numeric"], ["imputed"]),
        helper.make_node("Relu", ["imputed"], ["nonneg"]),
        helper.make_node("Add", ["nonneg", "one"], ["plus1"]),
        helper.make_node("Log", ["plus1"], ["logged"]),
        helper.make_node("Where", ["logmask", "logged", "imputed"], ["filled"]),
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
    """ONNX model of the boosted trees (see :func:`engine.genomics.models.gbm_trees`):
    ``ai.onnx.ml.TreeEnsemble`` (opset 5) with ``<=`` splits on numbers and set-membership
    splits on category codes (code 0 -> NaN follows the split's missing direction)."""
    from onnx import TensorProto, helper

    inputs, nodes, inits = _inputs(pre)
    inits += [_const("zero_code", np.array(0, dtype=np.int64)), _const("nan", np.array(np.nan, dtype=np.float32))]
    nodes += [helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT),
              helper.make_node("Equal", ["codes", "zero_code"], ["code_missing"]),
              helper.make_node("Where", ["code_missing", "nan", "codes_f"], ["cats"]),
              helper.make_node("Concat", ["numeric", "cats"], ["x"], axis=1)]
    a = _ensemble_attributes(trees)
    nodes.append(helper.make_node(
        "TreeEnsemble", ["x"], ["raw0"], domain="ai.onnx.ml", n_targets=1, aggregate_function=1, post_transform=0,
        tree_roots=a["roots"], nodes_featureids=a["feature"], nodes_truenodeids=a["true"], nodes_trueleafs=a["true_leaf"],
        nodes_falsenodeids=a["false"], nodes_falseleafs=a["false_leaf"], nodes_missing_value_tracks_true=a["missing"],
        nodes_modes=_const("modes", np.asarray(a["modes"], np.uint8)),
        nodes_splits=_const("splits", np.asarray(a["splits"], np.float32)),
        membership_values=_const("members", np.asarray(a["members"] or [np.nan], np.float32)),
        leaf_targetids=[0] * len(a["leaf_weights"]), leaf_weights=_const("weights", np.asarray(a["leaf_weights"], np.float32)),
    ))
    inits += [_const("base", np.array([[trees["base"]]], dtype=np.float32)), _const("one", np.array(1.0, dtype=np.float32))]
    nodes += [helper.make_node("Add", ["raw0", "base"], ["raw"]), helper.make_node("Sigmoid", ["raw"], ["p1"]),
              helper.make_node("Sub", ["one", "p1"], ["p0"]),
              helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
    return _model(nodes, inputs, inits, ml=True)


def _ensemble_attributes(trees: dict[str, Any]) -> dict[str, list[Any]]:
    """Flatten scikit-learn trees into TreeEnsemble's split-node and leaf arrays."""
    a: dict[str, list[Any]] = {k: [] for k in (
        "roots", "feature", "true", "true_leaf", "false", "false_leaf", "missing", "modes", "splits", "members",
        "leaf_weights")}
    for tree in trees["trees"]:
        leaf = tree["leaf"]
        node_id: dict[int, int] = {}
        leaf_id: dict[int, int] = {}
        for i in range(len(leaf)):
            if leaf[i]:
                leaf_id[i] = len(a["leaf_weights"])
                a["leaf_weights"].append(float(tree["value"][i]))
            else:
                node_id[i] = len(a["feature"]) + len(node_id)
        if leaf[0]:  # a tree without a split: one always-true split onto its only leaf
            a["roots"].append(len(a["feature"]))
            for k, v in (("feature", 0), ("true", leaf_id[0]), ("true_leaf", 1), ("false", leaf_id[0]),
                         ("false_leaf", 1), ("missing", 1), ("modes", 0), ("splits", np.inf)):
                a[k].append(v)
            continue
        a["roots"].append(node_id[0])
        members = {int(k): v for k, v in tree.get("members", {}).items()}
        for i in sorted(node_id, key=node_id.get):
            left, right = int(tree["left"][i]), int(tree["right"][i])
            a["feature"].append(int(tree["feature"][i]))
            a["true"].append(leaf_id[left] if leaf[left] else node_id[left])
            a["true_leaf"].append(int(bool(leaf[left])))
            a["false"].append(leaf_id[right] if leaf[right] else node_id[right])
            a["false_leaf"].append(int(bool(leaf[right])))
            a["missing"].append(int(tree["missing_left"][i]))
            if tree.get("categorical", [0] * len(leaf))[i]:
                a["modes"].append(6)  # BRANCH_MEMBER
                a["splits"].append(np.nan)
                a["members"] += [float(c) for c in members[i]] + [np.nan]
            else:
                a["modes"].append(0)  # BRANCH_LEQ
                a["splits"].append(float(tree["threshold"][i]))
    return a


def _model(nodes: list[Any], inputs: list[Any], inits: list[Any], ml: bool) -> Any:
    import onnx
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph(nodes, "metascope_genomics", inputs, [out], initializer=inits)
    opsets = ([helper.make_opsetid("", TREE_OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)] if ml
              else [helper.make_opsetid("", OPSET)])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="metascope")
    model.ir_version = 10 if ml else 8
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
            pass  # an unfinished or older metrics.json: the fold files below say the same
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
