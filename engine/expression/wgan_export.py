"""Exporting a WGAN run's generator as a MetaScope model package (task ``expression_generator``).

The ONNX graph takes ``noise (N, noise_dim)`` float32, then ``numeric (N, Kn)`` float32 and
``codes (N, Kc)`` int64 when the generator has numeric / categorical covariates, and returns
``expression (N, G)``: log-scale profiles (the per-gene standardisation, per group of the
grouping covariate when there is one, is inverted inside the graph, then values are clipped at
the training matrix's detection floor when it has one). The metadata (``extra``) carries
everything :mod:`engine.expression.generate` needs without torch: genes, covariate spec
(category maps, scaling), gene scaler, ``value_transform`` (how to put log values back on the
matrix's own scale: counts, TPM), noise dim, input names and a sample of the training covariate
rows (the default covariate distribution).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.modelpkg import ModelMetadata, write_metadata


def load_generator(run_dir: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The run's generator (EMA weights when used) in eval mode and its checkpoint.

    Raises:
        ConfigError: not a WGAN run, or no checkpoint yet.
    """
    from engine.expression.wgan import CovariateSpec, build_models
    from engine.expression.wgan_loop import CHECKPOINT
    from engine.expression.wgan_train import load_wgan_config
    from engine.train.runfolder import load_checkpoint

    run = Path(run_dir)
    load_wgan_config(run)
    path = run / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{run} has no checkpoint yet (training has not finished an epoch)")
    ck = load_checkpoint(path)
    spec = CovariateSpec.from_dict(ck["covariate_spec"])
    gen, _ = build_models(len(ck["genes"]), spec, ck["model_config"])
    gen.load_state_dict(ck["model"])
    gen.eval()
    return gen, ck


def _export_onnx(gen: Any, ck: dict[str, Any], path: str) -> list[str]:
    import torch

    from engine.expression.wgan import CovariateSpec

    spec = CovariateSpec.from_dict(ck["covariate_spec"])
    group = ck.get("group_scaler") or {"column": None, "code_index": 0, "mean": [ck["scaler"]["mean"]],
                                        "std": [ck["scaler"]["std"]]}
    mean = torch.tensor(group["mean"], dtype=torch.float32)  # (groups, genes)
    std = torch.tensor(group["std"], dtype=torch.float32)
    group_k = int(group["code_index"]) if group.get("column") is not None else None
    has_num, has_codes = spec.numeric_dim > 0, bool(spec.cardinalities)
    floor = ck.get("floor")
    n = 3

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gen = gen
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, noise: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
            k = 0
            num = cond[k] if has_num else noise.new_zeros((noise.shape[0], 0))
            k += int(has_num)
            codes = cond[k] if has_codes else torch.zeros((noise.shape[0], 0), dtype=torch.int64)
            z = self.gen(noise, num, codes)
            if group_k is None:
                x = z * self.std[0] + self.mean[0]
            else:  # per-group inverse standardisation: the group's row of the tables
                g = codes[:, group_k]
                x = z * self.std[g] + self.mean[g]
            return x if floor is None else torch.clamp(x, min=floor)

    names = ["noise"]
    args: list[torch.Tensor] = [torch.randn(n, int(ck["model_config"]["noise_dim"]))]
    if has_num:
        names.append("numeric")
        args.append(torch.zeros(n, spec.numeric_dim))
    if has_codes:
        names.append("codes")
        args.append(torch.zeros(n, len(spec.cardinalities), dtype=torch.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper().eval(), tuple(args), path, input_names=names, output_names=["expression"],
            dynamic_axes={name: {0: "n"} for name in [*names, "expression"]}, opset_version=17, dynamo=False,
        )
    return names


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], name: str | None = None) -> Path:
    """Write the run's generator as a model package at ``out`` (atomically); returns ``out``."""
    from engine.expression.wgan import CovariateSpec
    from engine.expression.wgan_train import load_wgan_config

    run = Path(run_dir)
    cfg = load_wgan_config(run)
    gen, ck = load_generator(run)
    spec = CovariateSpec.from_dict(ck["covariate_spec"])
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    metrics: dict[str, Any] = {}
    mpath = run / "metrics.json"
    if mpath.is_file():
        m = json.loads(mpath.read_text(encoding="utf-8"))
        metrics = {k: m.get(k) for k in ("gamma", "c2st_auc", "mean_corr", "var_corr")}
        metrics["baseline"] = {k: (m.get("baseline") or {}).get(k) for k in ("gamma", "c2st_auc")}
        if m.get("real_vs_real"):
            metrics["real_vs_real"] = {k: m["real_vs_real"].get(k) for k in ("gamma", "c2st_auc")}
    out_path = Path(out)
    with tempfile.TemporaryDirectory(prefix="metascope-wgan-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        inputs = _export_onnx(gen, ck, str(raw))
        meta = ModelMetadata(
            name=name or f"WGAN-GP {run.name}",
            task="expression_generator",
            class_names=(),
            output="logits",
            arch="conditional_wgan_gp_mlp",
            input_name="noise",
            output_name="expression",
            feature_dim=len(ck["genes"]),
            training_data={
                "matrix": cfg.matrix, "samples": cfg.samples, "where": list(cfg.where),
                "train_samples": len(split["train"]),
                "epochs": int(ck["epoch"]),
            },
            metrics=metrics,
            extra={
                "genes": list(ck["genes"]),
                "covariates": spec.to_dict(),
                "scaler": ck["scaler"],
                "group_scaler": {k: v for k, v in (ck.get("group_scaler") or {}).items() if k in ("column", "code_index")},
                "value_transform": ck.get("value_transform") or {"kind": "none"},
                "floor": ck.get("floor"),
                "noise_dim": int(ck["model_config"]["noise_dim"]),
                "inputs": inputs,
                "output_scale": "as the training matrix (see value_transform)",
                "training_covariates": split.get("train_covariates", []),
                "model_config": ck["model_config"],
            },
        )
        write_metadata(raw, meta, out_path=out_path)
    return out_path
