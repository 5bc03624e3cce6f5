"""Patch-classifier commands: ``train patches``, ``export``, ``evaluate``, ``predict``.

Nothing heavy is imported here at module level: torch, onnx and matplotlib load inside handlers so
``metascope --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.cli.options import add_device_option
from engine.cli.progress import TerminalProgress
from engine.errors import ConfigError
from engine.jobs import CancelToken
from engine.models.registry import architecture_names
from engine.train.config import (
    CACHE_MODES,
    CALIBRATIONS,
    CLASS_WEIGHTING,
    DEFAULT_HARD_NEGATIVES,
    OPTIMIZERS,
    SCHEDULES,
    SPLITS,
    STAIN_NORMS,
    THRESHOLD_RULES,
)

DATA_FORMATS = ("auto", "kaggle", "folders", "pcam_h5", "annotated_slides", "images")
# options of ``train patches`` that map 1:1 onto TrainConfig fields (dest -> field)
_TRAIN_FIELDS = {
    "data": "data", "format": "fmt", "mpp": "mpp", "resize": "resize", "arch": "arch", "weights": "weights", "epochs": "epochs",
    "batch_size": "batch_size", "lr": "lr", "weight_decay": "weight_decay", "optimizer": "optimizer", "schedule": "schedule",
    "warmup_epochs": "warmup_epochs", "class_weighting": "class_weighting", "val_fraction": "val_fraction",
    "split": "split", "patience": "patience", "seed": "seed", "device": "device", "precision": "precision", "workers": "num_workers",
    "cache": "cache", "dropout": "dropout", "positive_class": "positive_class", "ema": "ema",
    "stain_norm": "stain_norm", "hard_negatives": "hard_negatives", "calibration": "calibration", "threshold_rule": "threshold_rule",
    "threshold_target": "threshold_target",
}


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``train patches``, ``export``, ``evaluate`` and ``predict``."""
    p = groups["train"].add_parser(
        "patches",
        help="train a patch classifier",
        description=(
            "Train a patch classifier (Kaggle folder+CSV, class folders, PCam HDF5, annotated slides). "
            "The run folder receives config.json, events.jsonl, checkpoint.pt (every epoch) and best.pt."
        ),
    )
    p.add_argument("--data", help="dataset path (required unless --config or --resume)")
    p.add_argument("--config", metavar="CONFIG.json", help="settings as a TrainConfig JSON (from the wizard); options given here override it")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (new, or an existing run with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--recipe", choices=("metascope", "pcam-seed"),
                   help="start from a named recipe: metascope (the defaults) or pcam-seed (the published PCam/Kaggle "
                        "run: seed_cnn_original, pixels/255, no augmentation, Adam 1e-3, batch 1024, 20 epochs, 80:20); "
                        "options given here override it")
    p.add_argument("--format", choices=DATA_FORMATS, help="dataset format (default: detect)")
    p.add_argument("--mpp", type=float, help="microns per pixel of the patches when the dataset does not say")
    p.add_argument("--resize", type=int, metavar="PX", help="train on patches resized to PX pixels (the model's mpp scales)")
    p.add_argument("--arch", choices=architecture_names(), help="architecture (default seed_cnn)")
    p.add_argument("--weights", metavar="FILE", help="initialise from a local weights file (.pt/.pth)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 10)")
    p.add_argument("--batch-size", type=int, help="patches per step (default 64)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default adamw)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default cosine)")
    p.add_argument("--warmup-epochs", type=float, help="warmup length in epochs (default 0.5)")
    p.add_argument("--class-weighting", choices=CLASS_WEIGHTING, help="loss class weights (default balanced)")
    p.add_argument("--val-fraction", type=float, help="fraction held out for validation (default 0.2)")
    p.add_argument("--split", choices=SPLITS, help="validation split (default auto: grouped when the data has groups)")
    p.add_argument("--patience", type=int, help="early stopping patience in epochs, 0 = off (default 5)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    add_device_option(p, default=None)
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: float16 mixed precision on CUDA, float32 on CPU (default); fp32; fp16 (CUDA); bf16")
    p.add_argument("--workers", type=int, help="data-loading worker processes when not cached (default 0)")
    p.add_argument("--cache", choices=CACHE_MODES, help="decode patches into memory (default auto: when they fit in 4 GiB)")
    p.add_argument("--dropout", type=float, help="dropout rate for networks with dropout")
    p.add_argument("--positive-class", help="class name shown by heatmaps (default: inferred)")
    p.add_argument("--no-augment", action="store_true", help="train without augmentations")
    p.add_argument("--hed", type=float, help="HED stain jitter strength (default 0.03, 0 = off)")
    p.add_argument("--freeze-bn", action="store_true", help="keep batch-norm statistics fixed (fine-tuning)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999) for validation and export (default off)")
    p.add_argument("--stain-norm", choices=STAIN_NORMS,
                   help="stain normalisation fitted on the training patches and stored in the model (default none)")
    p.add_argument("--hard-negatives", type=float, nargs="?", const=DEFAULT_HARD_NEGATIVES, metavar="ALPHA",
                   help="hard-negative mining: after one warm-up epoch, draw each epoch's negative patches with weight "
                        "1 + ALPHA x the rank of their last training loss (0..1); positives and epoch length unchanged "
                        f"(default off; ALPHA {DEFAULT_HARD_NEGATIVES:g} when given without a value)")
    _threshold_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_cmd_train)

    e = sub.add_parser(
        "export", help="export a trained run as an ONNX model package",
        description="Export the best model of a run as one ONNX file with MetaScope metadata, verified with onnxruntime.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="training run folder (or a best.pt/checkpoint.pt file)")
    e.add_argument("--out", required=True, metavar="MODEL.onnx", help="model file to write")
    e.add_argument("--features", action="store_true", help="export the feature extractor (penultimate embedding, for MIL)")
    e.add_argument("--name", help="display name (default: file name)")
    e.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="ONNX exporter (default dynamo)")
    e.add_argument("--tta8", action="store_true",
                   help="fold 8-fold rotation/flip test-time augmentation into the model (8x compute per patch)")
    e.add_argument("--recalibrate", action="store_true",
                   help="refit the exported model's calibration and operating threshold on the run's validation split "
                        "(recommended with --tta8: the run's were fitted without TTA)")
    e.add_argument("--json", action="store_true", help="print the export report as JSON")
    e.set_defaults(handler=_cmd_export)

    v = sub.add_parser(
        "evaluate", help="score a model on labelled patches",
        description="Accuracy, AUC with bootstrap 95% CI, sensitivity, specificity, F1, confusion matrix, ROC and calibration plots.",
    )
    v.add_argument("model", metavar="MODEL.onnx")
    v.add_argument("--data", required=True, help="labelled dataset")
    v.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _common_inference(v)
    _threshold_option(v)
    v.set_defaults(handler=_cmd_evaluate)

    r = sub.add_parser(
        "predict", help="class probabilities for patches",
        description="Write class probabilities for a folder or CSV of patches; the Kaggle layout gets a submission CSV (id,label).",
    )
    r.add_argument("model", metavar="MODEL.onnx")
    r.add_argument("--data", required=True, help="folder or CSV of patches")
    r.add_argument("--out", required=True, metavar="PREDICTIONS.csv", help="CSV to write")
    sub_group = r.add_mutually_exclusive_group()
    sub_group.add_argument("--submission", dest="submission", action="store_true", default=None,
                           help="write the Kaggle submission format id,label")
    sub_group.add_argument("--probabilities", dest="submission", action="store_false",
                           help="write per-class probabilities even for the Kaggle layout")
    r.add_argument("--labels", action="store_true",
                   help="with --submission: write rounded 0/1 labels (p > 0.5) instead of probabilities, as the competition example did")
    _common_inference(r)
    _threshold_option(r)
    r.set_defaults(handler=_cmd_predict)

    c = sub.add_parser(
        "calibrate", help="fit a model's calibration and operating threshold on labelled validation patches",
        description=(
            "Run the model on labelled validation patches, fit its calibration (temperature, optionally isotonic) "
            "and choose its operating threshold (default: at most 5% of the negative patches flagged); both are "
            "stored in the model package (and its MODEL.md card) and used by heatmaps, evaluate and predict."
        ),
    )
    c.add_argument("model", metavar="MODEL.onnx")
    c.add_argument("--data", required=True, help="labelled validation dataset (not the test set)")
    c.add_argument("--out", metavar="MODEL.onnx", help="write the calibrated package there (default: update MODEL in place)")
    _common_inference(c, tta=False)
    _threshold_options(c)
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(handler=_cmd_calibrate)


def _threshold_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", choices=CALIBRATIONS,
                   help="calibration fitted on the validation split (default temperature)")
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES,
                   help="how the operating threshold is chosen on the validation split (default specificity: "
                        "at most 1 - target of the negatives flagged)")
    p.add_argument("--threshold-target", type=float, metavar="X",
                   help="the rule's target: specificity / sensitivity (default 0.95), or the threshold for 'fixed'")


def _threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on the positive-class probability (default: the model's operating threshold, else 0.5)")


def _common_inference(p: argparse.ArgumentParser, tta: bool = True) -> None:
    p.add_argument("--format", choices=DATA_FORMATS, default="auto", help="dataset format (default: detect)")
    p.add_argument("--mpp", type=float, help="microns per pixel of the patches when the dataset does not say")
    if tta:
        p.add_argument("--tta", action="store_true", help="average over the 8 rotations/flips (8x slower)")
    add_device_option(p)
    p.add_argument("--batch-size", type=int, default=256, help="patches per inference call (default 256)")


@contextmanager
def _cancel_on_signals() -> Iterator[CancelToken]:
    """Ctrl+C / SIGTERM set a cancel token: training stops at the next step and keeps its checkpoint."""
    token = CancelToken()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if token.cancelled:  # second Ctrl+C: stop now
            raise KeyboardInterrupt
        token.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (embedded use): no signal handling
            continue
    try:
        yield token
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def _train_config(args: argparse.Namespace) -> Any:
    from dataclasses import asdict

    from engine.train.config import AugmentConfig, TrainConfig
    from engine.train.runfolder import load_run_config

    given = {f: getattr(args, d) for d, f in _TRAIN_FIELDS.items() if getattr(args, d) is not None}
    if args.resume:
        base = load_run_config(Path(args.out))["config"]
    elif args.config:
        base = _read_config(Path(args.config))
    else:
        if not args.data:
            raise ConfigError("--data is required for a new run (or pass --resume to continue RUN_DIR)")
        base = TrainConfig(data=args.data).to_dict()
    if args.recipe and not args.resume:
        from engine.train.recipes import recipe_settings

        # recipe < --config file < options: the recipe replaces the defaults, never given values
        overlay = _read_config(Path(args.config)) if args.config else {}
        base = {**base, **recipe_settings(args.recipe), **overlay}
    base.update(given)
    if args.freeze_bn:
        base["freeze_bn"] = True
    aug = dict(base.get("augment") or {})
    if args.no_augment:
        aug = asdict(AugmentConfig.none())
    if args.hed is not None:
        aug["hed"] = args.hed
    base["augment"] = aug
    return TrainConfig.from_dict(base)


def _read_config(path: Path) -> dict[str, Any]:

    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read training config {path}: {exc}") from exc
    if isinstance(d, dict) and isinstance(d.get("config"), dict):  # a run's config.json
        d = d["config"]
    if not isinstance(d, dict):
        raise ConfigError(f"training config {path} must be a JSON object")
    return d


def _cmd_train(args: argparse.Namespace) -> int:
    from engine.runs import StopFileWatcher
    from engine.train.trainer import train

    cfg = _train_config(args)
    bar = TerminalProgress()
    with _cancel_on_signals() as cancel:
        try:
            # the app asks a run to stop by writing RUN_DIR/STOP (engine.runs.request_stop)
            with StopFileWatcher(args.out, cancel):
                result = train(cfg, args.out, progress=bar, cancel=cancel, resume=args.resume)
        finally:
            bar.close()
    from engine.train.calibration import read_run_calibration

    cal = read_run_calibration(result.run_dir)
    summary = {
        "run_dir": str(result.run_dir), "status": result.status, "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch, "best": result.best_metrics, "duration_s": round(result.duration_s, 1),
        "calibration": cal,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        b = result.best_metrics
        print(
            f"{result.status}: {result.epochs_completed} epochs in {result.duration_s:.0f} s; best epoch "
            f"{result.best_epoch}: val AUC {b.get('val_auc', float('nan')):.4f}, accuracy {b.get('accuracy', float('nan')):.4f} "
            f"-> {result.best_checkpoint}"
        )
        if cal:
            r = cal.get("threshold_rule", {})
            print(f"operating threshold {cal['operating_threshold']:.4f} ({r.get('rule')} rule): sensitivity "
                  f"{r.get('sensitivity', float('nan')):.3f}, specificity {r.get('specificity', float('nan')):.3f} "
                  f"on {r.get('n_val')} validation patches")
    return 0


#: ``config.json`` "kind" of a run folder -> "module:function" exporting it (``fn(run_dir, out, name=None) -> Path``).
#: Patch runs (no kind) go through :func:`engine.export.export_onnx`; MIL runs have ``metascope mil export``.
RUN_KIND_EXPORTERS = {
    "genomics": "engine.genomics.export:export_run",
    "siamese": "engine.expression.siamese_export:export_run",
    "wgan": "engine.expression.wgan_export:export_run",
}


def _run_kind(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError):
        return ""
    return str(cfg.get("kind") or "") if isinstance(cfg, dict) else ""


def _cmd_export(args: argparse.Namespace) -> int:
    from engine.export import export_onnx

    kind = _run_kind(args.run_dir)
    if kind == "mil":
        raise ConfigError(f"{args.run_dir} is a slide-level MIL run: export it with `metascope mil export`")
    if kind in RUN_KIND_EXPORTERS:
        module_name, func_name = RUN_KIND_EXPORTERS[kind].split(":")
        path = getattr(importlib.import_module(module_name), func_name)(args.run_dir, args.out, name=args.name)
        print(f"exported {kind} model {path}")
        return 0
    bar = TerminalProgress()
    try:
        rep = export_onnx(args.run_dir, args.out, progress=bar, features=args.features, name=args.name,
                          exporter=args.exporter, tta8=args.tta8)
    finally:
        bar.close()
    if args.recalibrate and not args.features:
        from engine.train.calibration import calibrate_package_on_run

        bar = TerminalProgress()
        try:
            res = calibrate_package_on_run(rep.path, args.run_dir, device="auto", progress=bar)
        finally:
            bar.close()
        t = res.threshold
        print(f"recalibrated on {t.n_val} validation patches: threshold {t.threshold:.4f} "
              f"(sensitivity {t.sensitivity:.3f}, specificity {t.specificity:.3f})")
    card = None
    if not args.features:
        from engine.modelcard import write_model_card

        # the same card the Training view writes: MODEL.md beside MODEL.onnx
        card = write_model_card(args.run_dir, rep.path, name=args.name)
    if args.json:
        print(json.dumps({**rep.to_dict(), "model_card": str(card) if card else None}, indent=2))
    else:
        kind = "feature extractor" if args.features else "classifier"
        print(f"exported {kind} {rep.path} ({rep.size_bytes / 1e6:.1f} MB, verified: max abs diff {rep.max_abs_diff:.2g})"
              + (f"; model card {card.name}" if card else ""))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.train.evaluate import evaluate

    bar = TerminalProgress()
    with _cancel_on_signals() as cancel:
        try:
            res = evaluate(args.model, args.data, args.out, fmt=args.format, mpp=args.mpp, tta=args.tta,
                           device=args.device, batch_size=args.batch_size, progress=bar, cancel=cancel,
                           threshold=args.threshold)
        finally:
            bar.close()
    m = res.metrics
    ci = m["ci95"]["auc"]
    print(
        f"AUC {m['auc']:.4f} (95% CI {ci[0]:.4f}-{ci[1]:.4f}), accuracy {m['accuracy']:.4f}, "
        f"sensitivity {m['sensitivity']:.4f}, specificity {m['specificity']:.4f}, F1 {m['f1']:.4f} "
        f"at threshold {m['threshold']:.4g} on {m['n']} patches -> {res.out_dir}"
    )
    for note in m["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"review the errors: metascope review {res.out_dir}", file=sys.stderr)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from engine.train.evaluate import predict

    if args.labels and args.submission is False:
        raise ConfigError("--labels applies to the submission format; drop --probabilities")
    bar = TerminalProgress()
    with _cancel_on_signals() as cancel:
        try:
            res = predict(args.model, args.data, args.out, fmt=args.format, mpp=args.mpp, tta=args.tta,
                          submission=True if args.labels else args.submission, labels=args.labels, device=args.device, batch_size=args.batch_size,
                          progress=bar, cancel=cancel, threshold=args.threshold)
        finally:
            bar.close()
    print(f"wrote {res.kind} for {res.n} patches -> {res.path}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from engine.train.calibration import DEFAULT_METHOD, DEFAULT_RULE, calibrate_package_on_data

    bar = TerminalProgress()
    with _cancel_on_signals() as cancel:
        try:
            res = calibrate_package_on_data(
                args.model, args.data, fmt=args.format, mpp=args.mpp, method=args.calibration or DEFAULT_METHOD,
                rule=args.threshold_rule or DEFAULT_RULE, target=args.threshold_target, device=args.device,
                batch_size=args.batch_size, out_path=args.out, progress=bar, cancel=cancel,
            )
        finally:
            bar.close()
    t, cal = res.threshold, res.calibration
    if args.json:
        print(json.dumps({"model": args.out or args.model, **res.extra()}, indent=2))
    else:
        print(
            f"operating threshold {t.threshold:.4f} ({t.rule} rule, target {t.target:g}): sensitivity "
            f"{t.sensitivity:.3f}, specificity {t.specificity:.3f} on {t.n_val} patches; calibration "
            f"{cal['method']} (T = {cal['temperature']:.3f}) -> {args.out or args.model}"
        )
    return 0
