"""Export a trained patch classifier (or its feature extractor) as a MetaScope model package.

The ONNX file has a dynamic batch axis, is one self-contained file, carries the package metadata
(:mod:`engine.modelpkg`) and is verified against the torch model with onnxruntime before it is
moved to its final name: a model that does not reproduce torch's outputs is never written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.errors import ConfigError, ModelPackageError
from engine.fileio import atomic_path
from engine.jobs import ProgressCallback, ProgressEvent, report
from engine.modelpkg import SELECTION_SPLIT, ModelMetadata, labelled_metrics, portable, sha256_file

#: verification tolerance on logits / features (float32 on CPU differs by ~1e-6)
MAX_ABS_DIFF = 1e-4
OPSET = 18
EXPORTERS = ("dynamo", "torchscript")


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the model package.
        metadata: its embedded metadata.
        max_abs_diff: largest |onnxruntime - torch| over the verification batches.
        sha256: hex digest of the file.
        size_bytes: file size.
        exporter: ``"dynamo"`` or ``"torchscript"`` (the one that produced the file).
        duration_s: wall time in seconds.
    """

    path: Path
    metadata: ModelMetadata
    max_abs_diff: float
    sha256: str
    size_bytes: int
    exporter: str
    duration_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "task": self.metadata.task, "max_abs_diff": self.max_abs_diff,
            "sha256": self.sha256, "size_bytes": self.size_bytes, "exporter": self.exporter,
            "duration_s": round(self.duration_s, 2), "notes": list(self.notes),
        }


def load_trained(source: str | os.PathLike[str]) -> dict[str, Any]:
    """Resolve a run folder or checkpoint file into everything needed to rebuild the model.

    Args:
        source: a run folder (uses ``best.pt``, else ``checkpoint.pt``) or a ``.pt`` file of a run.

    Returns:
        The best-checkpoint dict: ``model`` (state_dict), ``arch``, ``num_classes``, ``input_size``,
        ``class_names``, ``positive_class``, ``mean``, ``std``, ``mpp``, ``metrics``, ``data``,
        ``config``, ``epoch``.

    Raises:
        ConfigError: no checkpoint there, or a file that is not a MetaScope checkpoint.
    """
    from engine.train.runfolder import BEST_NAME, CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint

    p = Path(source)
    if p.is_dir():
        cand = [p / BEST_NAME, p / CHECKPOINT_NAME]
        path = next((c for c in cand if c.is_file()), None)
        if path is None:
            raise ConfigError(f"{p} holds no trained model ({BEST_NAME} or {CHECKPOINT_NAME}); has an epoch finished?")
    elif p.is_file():
        path = p
    else:
        raise ConfigError(f"run folder or checkpoint not found: {p}")
    from engine.train.calibration import read_run_calibration

    ck = load_checkpoint(path)
    stored_cal = read_run_calibration(path.parent)
    if "mean" not in ck:
        # a checkpoint.pt: the rest lives in the run's config.json
        cfg_path = path.parent / CONFIG_NAME
        try:
            stored = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path.name} needs the run's {CONFIG_NAME} next to it: {exc}") from exc
        cfg = stored.get("config", {})
        data = stored.get("data", {})
        best = ck.get("best_metrics", {})
        ck = {
            "model": ck["model"], "arch": ck.get("arch", cfg.get("arch")), "class_names": stored.get("class_names", []),
            "num_classes": len(stored.get("class_names", [])), "input_size": ck.get("input_size"),
            "positive_class": stored.get("positive_class", 1), "mean": cfg.get("mean"), "std": cfg.get("std"),
            "mpp": data.get("mpp"), "metrics": best, "data": data, "config": cfg, "epoch": ck.get("epoch"),
            "stain_norm": ck.get("stain_norm"), "calibration": stored_cal,
        }
    if stored_cal is not None and stored_cal.get("epoch") == ck.get("epoch"):
        ck["calibration"] = stored_cal  # refitted after training (same best epoch): the newer fit
    missing = [k for k in ("arch", "class_names", "input_size", "mean", "std") if not ck.get(k)]
    if missing:
        raise ConfigError(f"{path} is not a complete MetaScope checkpoint (missing {', '.join(missing)})")
    ck["source"] = str(path)
    return ck


class _Dihedral8:
    """Wraps a classifier so that ``forward`` averages its class probabilities over the 8
    rotations / reflections of the input (returned as log-probabilities, which are logits:
    softmax of the output is exactly the mean of the 8 softmaxes)."""

    def __new__(cls, model: Any) -> Any:
        import math

        import torch

        class Dihedral8(torch.nn.Module):
            def __init__(self, net: Any) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                t = x.transpose(2, 3)
                # the dihedral group: identity, rot90, rot180, rot270 and their mirror images
                views = [x, t.flip(3), x.flip(2).flip(3), t.flip(2), x.flip(3), t, x.flip(2), t.flip(2).flip(3)]
                out = self.net(torch.cat(views, 0))
                logp = torch.log_softmax(out.reshape(8, x.shape[0], out.shape[-1]), dim=2)
                return torch.logsumexp(logp, dim=0) - math.log(8.0)

        return Dihedral8(model).eval()


def _build(ck: dict[str, Any]) -> Any:
    from engine.models import build_model

    model = build_model(ck["arch"], len(ck["class_names"]), int(ck["input_size"]))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint does not match architecture {ck['arch']}: {str(exc).splitlines()[0]}") from exc
    return model.eval()


class _Features:
    """Wraps a network so that ``forward`` returns its penultimate embedding."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class FeatureExtractor(torch.nn.Module):
            def __init__(self, net: Any) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net.features(x)

        return FeatureExtractor(model).eval()


@contextlib.contextmanager
def _restore_level(logger: logging.Logger, level: int) -> Any:
    try:
        yield
    finally:
        logger.setLevel(level)


def _export(module: Any, example: Any, path: Path, out_name: str, exporter: str) -> None:
    import torch

    # both exporters print progress and deprecation chatter; the caller reports progress itself
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _restore_level(onnx_log, level):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(
                module, (example,), input_names=["input"], output_names=[out_name],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                dynamo=True, external_data=False, opset_version=OPSET, verbose=False,
            )
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                module, (example,), str(path), input_names=["input"], output_names=[out_name],
                dynamic_axes={"input": {0: "batch"}, out_name: {0: "batch"}}, dynamo=False, opset_version=17,
            )


def export_onnx(
    source: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
    *,
    features: bool = False,
    name: str | None = None,
    exporter: str = "dynamo",
    tta8: bool = False,
) -> ExportReport:
    """Export a trained run as a verified MetaScope model package.

    Args:
        source: run folder (best model) or checkpoint file.
        out_path: the ``.onnx`` file to write (replaced atomically if it exists).
        progress: receives ``export`` events (build, export, verify).
        features: export the feature extractor (task ``feature_extractor``: outputs the
            ``(N, feature_dim)`` penultimate embedding, for MIL) instead of the classifier.
        name: display name in the metadata; default the output file's stem.
        exporter: ``"dynamo"`` (torch.export; falls back to TorchScript if it fails) or
            ``"torchscript"``.
        tta8: fold 8-fold dihedral test-time augmentation into the graph (the mean of the class
            probabilities over the 8 rotations / reflections; 8x the compute per patch), recorded
            as ``extra["tta"]``; every consumer of the package gets it without code changes.

    Returns:
        :class:`ExportReport`.

    Raises:
        ConfigError: no usable checkpoint, unknown exporter.
        ModelPackageError: onnxruntime's outputs differ from torch's by more than 1e-4.
        OutputError: the output location cannot be written.
    """
    import torch

    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if tta8 and features:
        raise ConfigError("--tta8 applies to classifiers, not to a feature extractor export")
    t0 = time.monotonic()
    out = Path(out_path)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"the model file must end in .onnx, got {out.name}")
    total = 4
    ck = load_trained(source)  # before any progress output: a bad path is a one-line error
    report(progress, ProgressEvent("export", 0, total, "checkpoint loaded"))
    model = _build(ck)
    module = _Features(model) if features else (_Dihedral8(model) if tta8 else model)
    size = int(ck["input_size"])
    gen = torch.Generator().manual_seed(0)
    # verification inputs look like normalised patches: N(0, 1) per pixel, two batch sizes to
    # prove the batch axis is really dynamic
    batches = [torch.randn(8, 3, size, size, generator=gen), torch.randn(3, 3, size, size, generator=gen)]
    out_name = "features" if features else "logits"
    notes: list[str] = []
    report(progress, ProgressEvent("export", 1, total, "exporting to ONNX"))
    with atomic_path(out) as tmp:
        used = exporter
        try:
            _export(module, batches[0], tmp, out_name, exporter)
        except Exception as exc:  # torch.export fails on some graphs; TorchScript handles these nets
            if exporter != "dynamo":
                raise
            notes.append(f"dynamo exporter failed ({type(exc).__name__}); used the TorchScript exporter")
            used = "torchscript"
            _export(module, batches[0], tmp, out_name, used)
        report(progress, ProgressEvent("export", 2, total, "verifying with onnxruntime"))
        diff = _verify(module, tmp, batches, out_name)
        if not diff < MAX_ABS_DIFF:
            raise ModelPackageError(
                f"export verification failed: onnxruntime and torch differ by {diff:.3g} (limit {MAX_ABS_DIFF:g})"
            )
        meta = _metadata(ck, out, name, features, model, diff, used, tta8)
        _embed(tmp, meta)
        report(progress, ProgressEvent("export", 3, total, "writing"))
    report(progress, ProgressEvent("export", total, total, f"exported {out.name} (max abs diff {diff:.2g})"))
    return ExportReport(out, meta, diff, sha256_file(out), out.stat().st_size, used, time.monotonic() - t0, notes)


def _verify(module: Any, path: Path, batches: list[Any], out_name: str) -> float:
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    diff = 0.0
    with torch.no_grad():
        for xb in batches:
            ref = module(xb).numpy()
            got = sess.run([out_name], {"input": xb.numpy()})[0]
            if got.shape != ref.shape:
                raise ModelPackageError(f"exported model returns shape {got.shape}, torch {ref.shape}")
            diff = max(diff, float(np.abs(got - ref).max()))
    return diff


def _metadata(
    ck: dict[str, Any], out: Path, name: str | None, features: bool, model: Any, diff: float, exporter: str, tta8: bool = False
) -> ModelMetadata:
    class_names = tuple(str(c) for c in ck["class_names"])
    values = {k: v for k, v in dict(ck.get("metrics") or {}).items() if isinstance(v, (int, float, str))}
    if "val_auc" in values:
        values["auc"] = values["val_auc"]
    # the validation split picked the best epoch: its numbers are labelled as such, not as a test
    metrics = labelled_metrics(values, SELECTION_SPLIT, selection=True) if values else {}
    # no absolute paths of this machine in a shipped file: relative to the dataset root
    data = dict(ck.get("data") or {})
    root = data.get("source") or data.get("path") or (ck.get("config") or {}).get("data")
    extra = {
        "epoch": ck.get("epoch"), "source": Path(str(ck.get("source") or "")).name,
        "verify_max_abs_diff": diff, "exporter": exporter,
        "train_config": portable(ck.get("config", {}), root),
    }
    if features:
        extra["classifier_class_names"] = list(class_names)
    if ck.get("stain_norm"):
        # the preprocessing training used: engine.infer.preprocess applies it wherever the package runs
        extra["stain_norm"] = dict(ck["stain_norm"])
    cal = ck.get("calibration")
    if not features and isinstance(cal, dict) and "operating_threshold" in cal:
        extra.update({k: cal[k] for k in ("operating_threshold", "calibration", "threshold_rule") if k in cal})
    if tta8:
        extra["tta"] = {
            "method": "dihedral8", "views": 8, "combine": "mean probability",
            # the run's calibration was fitted on single-view validation outputs; refit it on the
            # TTA package's outputs (engine.train.calibration.calibrate_package_on_run, export --recalibrate)
            "calibration_fitted_with_tta": False,
        }
    return ModelMetadata(
        name=name or out.stem,
        task="feature_extractor" if features else "patch_classification",
        class_names=() if features else class_names,
        positive_class=0 if features else int(ck.get("positive_class", 1)),
        input_size=int(ck["input_size"]),
        input_mpp=float(ck["mpp"]) if ck.get("mpp") else None,
        mean=tuple(float(v) for v in ck["mean"]),
        std=tuple(float(v) for v in ck["std"]),
        channel_order="RGB",
        input_layout="NCHW",
        output="logits",
        arch=str(ck["arch"]),
        input_name="input",
        output_name="features" if features else "logits",
        feature_dim=int(model.feature_dim) if features else None,
        training_data=portable(data, root),
        metrics=metrics,
        extra=extra,
        metascope_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _embed(path: Path, meta: ModelMetadata) -> None:
    """Add the metadata entry to the ONNX file in place (it is still the temporary file)."""
    import onnx

    from engine.modelpkg import embed_metadata

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelPackageError(f"the exported ONNX file cannot be read back: {type(exc).__name__}") from exc
    embed_metadata(proto, meta)
    proto.producer_name = "MetaScope"
    proto.producer_version = __version__
    onnx.save(proto, str(path))
