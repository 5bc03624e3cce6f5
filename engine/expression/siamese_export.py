"""The Siamese model package (task ``expression_embedding``) and its onnxruntime-only use.

One ONNX file: inputs ``expression (B, G)`` (log values in the package's gene order; genes a
matrix lacks are filled with the training means), ``embedding_a`` and ``embedding_b (P, D)``;
outputs ``embedding (B, D)`` and ``similarity (P,)`` (sigmoid "same type"). Per-sample and
per-gene normalisation happen inside the graph. The metadata ``extra`` holds the gene list, the
fill values, the normalisation and the training / test types. :func:`export_run` needs torch;
everything else here needs numpy + onnxruntime only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, ModelPackageError
from engine.expression.matrix import ExpressionMatrix, align_genes
from engine.expression.oneshot import PairScore, euclidean_score, pearson_score
from engine.expression.preprocess import GenePrep
from engine.modelpkg import ModelMetadata, read_metadata, write_metadata

TASK = "expression_embedding"


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], name: str | None = None) -> Path:
    """Write the run's best Siamese network as a model package at ``out`` (atomically)."""
    from engine.expression.siamese_model import SiameseModelConfig, SiameseNet, export_onnx
    from engine.expression.siamese_train import load_siamese_config
    from engine.train.runfolder import load_checkpoint

    run = Path(run_dir)
    cfg = load_siamese_config(run)
    best = run / "checkpoints" / "best.pt"
    if not best.is_file():
        raise ConfigError(f"{run} has no trained Siamese model yet (no checkpoints/best.pt); resume it with --resume")
    ck = load_checkpoint(best)
    prep = GenePrep.from_dict(json.loads((run / "genes.json").read_text(encoding="utf-8")))
    split = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    mcfg = SiameseModelConfig.from_dict(ck["model_config"])
    net = SiameseNet(mcfg)
    net.load_state_dict(ck["model"])
    net.eval()
    metrics: dict[str, Any] = {"best_epoch": ck["best"].get("epoch"), "val_accuracy": ck["best"].get("val_accuracy")}
    mpath = run / "metrics.json"
    if mpath.is_file():
        try:
            metrics["ways"] = json.loads(mpath.read_text(encoding="utf-8")).get("ways", {})
        except (OSError, json.JSONDecodeError):
            pass  # a damaged metrics.json: the package goes out without the N-way results (the run folder keeps them)
    meta = ModelMetadata(
        name=name or f"Siamese {run.name}", task=TASK, class_names=tuple(split["train_types"]),
        positive_class=0, output="probabilities", arch="cancer_siamese_1dcnn", input_name="expression",
        output_name="embedding", feature_dim=mcfg.output_dim,
        training_data={"matrix": cfg.matrix, "samples": cfg.samples, "label_column": cfg.label_column,
                       "train_types": split["train_types"], "val_types": split["val_types"],
                       "test_types": split["test_types"], "train_samples": len(split["train"])},
        metrics=metrics,
        extra={"preprocessing": prep.to_dict(), "model_config": mcfg.to_dict(),
               "outputs": {"embedding": "(B, D) from expression (B, G)",
                           "similarity": "(P,) sigmoid same-type score of embedding_a, embedding_b (P, D)"}},
    )
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="metascope-siamese-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        export_onnx(net, prep.center, prep.scale, prep.sample_norm, str(raw))
        write_metadata(raw, meta, out_path=out)
    return out


@dataclass
class SiamesePackage:
    """A loaded package: onnxruntime session, metadata, gene preprocessing."""

    path: Path
    meta: ModelMetadata
    prep: GenePrep
    session: Any

    @property
    def embed_dim(self) -> int:
        return int(self.meta.feature_dim or 0)

    def prepare(self, matrix: ExpressionMatrix) -> tuple[np.ndarray, dict]:
        """Log values of ``matrix`` in the package's gene order (missing genes = training means)."""
        return align_genes(matrix, self.prep.genes, fill=self.prep.fill)

    def embed(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        empty = np.zeros((0, self.embed_dim), np.float32)
        outs = [self.session.run(["embedding"], {"expression": x[i:i + batch], "embedding_a": empty,
                                                 "embedding_b": empty})[0] for i in range(0, len(x), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, self.embed_dim), np.float32)

    def similarity(self, ea: np.ndarray, eb: np.ndarray, batch: int = 65536) -> np.ndarray:
        dummy = np.zeros((1, len(self.prep.genes)), np.float32)
        outs = [self.session.run(["similarity"], {"expression": dummy, "embedding_a": ea[i:i + batch],
                                                  "embedding_b": eb[i:i + batch]})[0]
                for i in range(0, len(ea), batch)]
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)


def load_package(path: str | os.PathLike[str]) -> SiamesePackage:
    """Open a Siamese package (``model.onnx`` or a run folder holding one) with onnxruntime."""
    import onnxruntime as ort

    p = Path(path)
    if p.is_dir():
        p = p / "model.onnx"
        if not p.is_file():
            raise ModelPackageError(f"{path} holds no model.onnx (training not finished? export it with "
                                    "'metascope export RUN_DIR --out MODEL.onnx')")
    meta = read_metadata(p)
    if meta.task != TASK:
        raise ModelPackageError(f"{p.name} is a {meta.task} model, not a Siamese expression model ({TASK})")
    try:
        prep = GenePrep.from_dict(meta.extra["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelPackageError(f"{p.name} lacks the gene list / preprocessing of a Siamese package") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    return SiamesePackage(p, meta, prep, sess)


def package_scorers(pkg: SiamesePackage, matrix: ExpressionMatrix) -> tuple[dict[str, PairScore], dict]:
    """``{"siamese", "nn1", "nn1_euclidean"}`` pair scorers over ``matrix``'s samples (same genes)."""
    x, rep = pkg.prepare(matrix)
    emb = pkg.embed(x)

    def siamese(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return pkg.similarity(emb[i], emb[j])

    return {"siamese": siamese, "nn1": pearson_score(x), "nn1_euclidean": euclidean_score(x)}, rep
