"""Exporting a MIL run's aggregator as a MetaScope model package (task ``mil_aggregator``).

The package is one ONNX file with a variable bag size (inputs ``features (N, D)`` and, for
clinical models, ``clinical_numeric (1, Kn)`` / ``clinical_codes (1, Kc)``; outputs
``probabilities (1, C)`` and ``attention (N,)``). Its metadata records the feature extractor it
needs (name + sha256), the tiling the features were made with, and the clinical encoding, so
:func:`engine.mil.predict.predict_slide` needs nothing else. torch is imported lazily.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.mil.train import load_mil_config
from engine.modelpkg import SELECTION_SPLIT, ModelMetadata, labelled_metrics, portable_path, write_metadata


def best_fold(run: Path) -> int:
    """The fold to export: the run's best fold (lowest validation loss), 1 for a single split.

    Raises:
        ConfigError: the run has no finished fold.
    """
    metrics = run / "metrics.json"
    if metrics.is_file():
        try:
            return int(json.loads(metrics.read_text(encoding="utf-8"))["best_fold"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unfinished or older metrics.json: the fold files below say the same
    folds = sorted(run.glob("fold_*.json"))
    if not folds:
        raise ConfigError(f"{run} has no finished fold to export (training not finished; resume it with --resume)")
    results = [json.loads(p.read_text(encoding="utf-8")) for p in folds]
    return int(max(results, key=lambda r: (r["best_score"], -r["fold"]))["fold"])


def load_run_model(run_dir: str | os.PathLike[str], fold: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The trained torch model of a run (best checkpoint of ``fold``, default the best fold).

    Returns:
        ``(model in eval mode, checkpoint dict)``.

    Raises:
        ConfigError / RunFolderError: not a MIL run, or the checkpoint is missing.
    """
    from engine.mil.model import GatedAttentionMIL, MILModelConfig
    from engine.train.runfolder import load_checkpoint

    run = Path(run_dir)
    load_mil_config(run)  # raises for folders that are not MIL runs
    k = fold if fold is not None else best_fold(run)
    ck = load_checkpoint(run / "checkpoints" / f"fold_{k}_best.pt")
    model = GatedAttentionMIL(MILModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def export_run(
    run_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], fold: int | None = None, name: str | None = None
) -> Path:
    """Write the run's aggregator as a model package at ``out_path`` (atomically).

    Args:
        run_dir: a finished (or partly finished) MIL run folder.
        out_path: the ``.onnx`` to write.
        fold: which fold's best model (default: the best fold).
        name: display name (default: the run folder's name).

    Returns:
        ``out_path``.
    """
    from engine.mil.model import export_onnx

    run = Path(run_dir)
    cfg = load_mil_config(run)
    model, ck = load_run_model(run, fold)
    metrics: dict[str, Any] = {}
    mpath = run / "metrics.json"
    if mpath.is_file():
        m = json.loads(mpath.read_text(encoding="utf-8"))
        values = {k: m.get(k) for k in ("auc", "auc_ci95", "ci_resampling", "accuracy", "sensitivity", "specificity", "n")}
        part = str(m.get("evaluated_on") or "test")
        # without a test set the run reports the validation slides that picked the best epoch
        selection = part == "validation"
        metrics = labelled_metrics(values, SELECTION_SPLIT if selection else part, selection=selection)
    ex = ck["extraction"]
    class_names = tuple(ck["class_names"])
    meta = ModelMetadata(
        name=name or f"MIL {run.name}",
        task="mil_aggregator",
        class_names=class_names,
        positive_class=1,
        input_size=int(ex.get("tile_size") or 96),
        input_mpp=float(ex["mpp"]) if ex.get("mpp") else None,
        output="probabilities",
        arch="tanh_attention_mil" if ck["model_config"].get("attention") == "tanh" else "gated_attention_mil",
        input_name="features",
        output_name="probabilities",
        feature_dim=int(ex["feature_dim"]),
        feature_extractor={"name": ex.get("extractor_name", ""), "sha256": ex.get("extractor_sha256", "")},
        training_data={
            "manifest": portable_path(str(cfg.manifest)),
            "labels": cfg.labels,
            "folds": cfg.n_folds,
            "fold_exported": int(ck["fold"]),
            "best_epoch": int(ck["best"]["epoch"]),
        },
        metrics=metrics,
        extra={
            "clinical": ck["clinical_spec"],
            "tiling": {"tile_size": ex.get("tile_size"), "mpp": ex.get("mpp")},
            # tissue settings and tile cap of the training bags: prediction tiles slides alike
            "feature_settings": ex.get("feature_settings"),
            "model_config": ck["model_config"],
            # BALNMP recipe: the slide is the mean over fixed random bags of this many tiles (0: one bag)
            "bag_size": int(getattr(cfg, "bag_size", 0)),
            "outputs": {"probabilities": "(1, C) softmax", "attention": "(N,) per tile, sums to 1"},
        },
    )
    out = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="metascope-mil-export-") as tmpdir:
        raw = Path(tmpdir) / "model.onnx"
        export_onnx(model, str(raw))
        write_metadata(raw, meta, out_path=out)  # atomic: temporary name, then rename
    return out
