"""``metascope mil ...`` and ``metascope train mil``: slide-level prediction with attention MIL.

Commands: ``mil validate`` (cohort report), ``mil features`` (per-slide HDF5 features),
``train mil`` (training run folder), ``mil evaluate`` (metrics of a run or a model package),
``mil export`` (aggregator -> model package), ``mil predict`` (one slide -> probabilities and
attention map). Heavy modules (torch, onnx, matplotlib) are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import add_device_option
from engine.cli.progress import TerminalProgress
from engine.cli.ray_options import add_ray_options, ray_settings


def _cols(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def register(sub: argparse._SubParsersAction, groups: dict[str, Any]) -> None:
    """Add the ``mil`` command group and ``train mil``."""
    mil = sub.add_parser(
        "mil",
        help="slide-level prediction: cohort, features, evaluate, export, predict",
        description="Slide-level lymph-node status with attention MIL (optionally fused with clinical data).",
    )
    msub = mil.add_subparsers(dest="mil_command", metavar="COMMAND")
    msub.required = True

    def labels_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--labels",
            default="binary",
            help="label scheme: binary (N0 vs N+), three_class (N0 / N+(1-2) / N+(>2)) or raw=Class,... (default binary)",
        )
        p.add_argument("--categorical", default="", help="clinical columns to treat as categorical, comma-separated")

    p = msub.add_parser(
        "validate",
        help="check a cohort manifest and report how it will be used",
        description="Validate a cohort manifest CSV.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="CSV: slide, label, patient[, split, roi, clinical columns...]")
    labels_opt(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_validate)

    p = msub.add_parser(
        "features",
        help="extract per-slide patch features (HDF5)",
        description="Embed the tissue tiles of every slide of a cohort.",
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument(
        "--extractor",
        default=None,
        metavar="MODEL.onnx",
        help="feature extractor package (or patch model exposing features); default: the shipped colour/texture "
             "statistics extractor (resources/models/colour-texture-stats.onnx; see mil extractor for others)",
    )
    p.add_argument("--out", required=True, metavar="FEATURES_DIR")
    p.add_argument("--mpp", type=float, default=None, help="analysis resolution in um/px (default: the extractor's)")
    p.add_argument(
        "--tile-size", type=int, default=None, help="tile side in model pixels (default: the extractor's input size)"
    )
    p.add_argument("--min-tissue", type=float, default=0.25, help="minimum tissue fraction of a tile (default 0.25)")
    p.add_argument("--max-tiles", type=int, default=None, help="at most this many tiles per slide (most tissue first)")
    p.add_argument("--slide-mpp", type=float, default=None, help="level-0 um/px for slides that do not record it")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_option(p)
    from engine.cli.qc import add_qc_options

    add_qc_options(p, stain=False)  # --max-unreadable, --no-qc, --keep-qc-failed
    labels_opt(p)
    add_ray_options(p)
    p.set_defaults(handler=_features)

    p = msub.add_parser(
        "evaluate",
        help="evaluate a MIL run or model on a cohort",
        description="Slide-level metrics with 95% CI, ROC, confusion matrix, subgroups.",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL.onnx")
    p.add_argument("--manifest", required=True)
    p.add_argument("--features", required=True, metavar="FEATURES_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--subgroup", default=None, help="clinical condition, e.g. 'age<50' or 'er=positive'")
    p.add_argument(
        "--split", choices=("all", "train", "val", "test"), default="all", help="only slides of this manifest split"
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC CI (default 1000)")
    labels_opt(p)
    p.set_defaults(handler=_evaluate)

    p = msub.add_parser(
        "export",
        help="export a MIL run as an ONNX model package",
        description="Export the aggregator (variable bag size).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="MODEL.onnx")
    p.add_argument("--fold", type=int, default=None, help="fold to export (default: the best one)")
    p.add_argument("--name", default=None, help="display name of the model")
    p.set_defaults(handler=_export)

    p = msub.add_parser(
        "predict",
        help="predict one slide (probabilities + attention map)",
        description="Slide-level prediction with onnxruntime.",
    )
    p.add_argument("slide", metavar="SLIDE")
    p.add_argument(
        "--extractor", default=None, metavar="E.onnx",
        help="the feature extractor the model was trained with (default: found in the model library by sha256)",
    )
    p.add_argument("--model", required=True, metavar="M.onnx")
    p.add_argument("--clinical", default="", help="clinical values, e.g. age=45,er=positive (missing ones are imputed)")
    p.add_argument("--roi", default=None, help="GeoJSON region of interest")
    p.add_argument("--slide-mpp", type=float, default=None, help="level-0 um/px if the slide does not record it")
    p.add_argument("--out", required=True, metavar="DIR")
    add_device_option(p)
    p.set_defaults(handler=_predict)

    from engine.cli import mil_extras

    mil_extras.register(msub)  # import-balnmp, extractor, protocol

    t = groups["train"].add_parser(
        "mil",
        help="train an attention MIL model on slide features",
        description="Train gated attention MIL (+ clinical fusion).",
    )
    t.add_argument("--manifest", default=None, help="cohort manifest CSV")
    t.add_argument("--features", default=None, metavar="FEATURES_DIR")
    t.add_argument("--out", required=True, metavar="RUN_DIR")
    t.add_argument("--clinical", default="", help="clinical columns to fuse, comma-separated (default: image only)")
    t.add_argument(
        "--folds", type=int, default=0, help="K-fold cross-validation by patient (default: one train/val/test split)"
    )
    t.add_argument(
        "--recipe", choices=("balnmp",), default=None,
        help="balnmp: BALNMP's protocol (tanh attention, random bags of 10 tiles, slide = mean over bags, 6:2:2 split); "
             "options given here override it",
    )
    t.add_argument("--attention", choices=("gated", "tanh"), default=None, help="attention pooling (default gated)")
    t.add_argument("--bag-size", type=int, default=None, help="tiles per random bag, 0 = whole slide (default 0; balnmp 10)")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    add_device_option(t)
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in RUN_DIR")
    t.add_argument("--config", default=None, help="JSON file with the full training configuration")
    labels_opt(t)
    t.set_defaults(handler=_train)


def _validate(args: argparse.Namespace) -> int:
    from engine.mil.cohort import load_cohort

    cohort = load_cohort(args.manifest, args.labels, _cols(args.categorical))
    if args.json:
        print(json.dumps(cohort.to_dict(), indent=2))
    else:
        print("\n".join(cohort.report_lines()))
    return 0


def _features(args: argparse.Namespace) -> int:
    from engine.mil.cohort import load_cohort
    from engine.mil.features import FeatureConfig, extract_cohort

    ray = ray_settings(args)  # bad --ray values or a missing Ray fail first
    cohort = load_cohort(args.manifest, args.labels, _cols(args.categorical))
    for prob in cohort.problems:
        print(f"warning: row {prob.row} {prob.slide}: {prob.message}", file=sys.stderr)
    cfg = FeatureConfig(
        tile_size=args.tile_size,
        mpp=args.mpp,
        min_tissue_fraction=args.min_tissue,
        max_tiles=args.max_tiles,
        batch_size=args.batch_size,
        device=args.device,
        slide_mpp=args.slide_mpp,
        max_unreadable=args.max_unreadable,
        qc=not args.no_qc,
        keep_qc_failed=args.keep_qc_failed,
    )
    extractor = args.extractor
    if extractor is None:
        from engine.paths import resources_dir

        extractor = str(resources_dir() / "models" / "colour-texture-stats.onnx")
        print(f"note: no --extractor given: using the built-in colour/texture statistics extractor {extractor}", file=sys.stderr)
    bar = TerminalProgress()
    unexpected = 0
    try:
        if ray is None:
            rep = extract_cohort(cohort, extractor, args.out, cfg, progress=bar)
        else:  # one Ray task per slide; bags with the same fingerprint are skipped
            from engine.cohort.drivers import extract_cohort_on_ray

            rep, unexpected = extract_cohort_on_ray(cohort, extractor, args.out, cfg, ray, progress=bar)
    finally:
        bar.close()
    print("\n".join(rep.lines()))
    print(f"features: {Path(args.out)}")
    return 1 if unexpected else 0  # a slide whose worker died on every attempt is a failure of the run


def _train(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.mil.train import MILTrainConfig, train_mil

    if args.resume:
        cfg = None
    elif args.config:
        try:
            raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read --config {args.config}: {exc}") from exc
        cfg = MILTrainConfig.from_dict(raw.get("config", raw) if isinstance(raw, dict) else {})
    else:
        if not args.manifest or not args.features:
            raise ConfigError("train mil needs --manifest and --features (or --resume / --config)")
        extra: dict[str, Any] = {k: v for k, v in (("attention", args.attention), ("bag_size", args.bag_size)) if v is not None}
        if args.recipe == "balnmp":
            from engine.mil.protocol import balnmp_config

            base = balnmp_config(str(Path(args.manifest).resolve()), str(Path(args.features).resolve()))
            extra = {"attention": base.attention, "bag_size": base.bag_size, "val_fraction": base.val_fraction,
                     "test_fraction": base.test_fraction, "recipe": "balnmp", **extra}
        cfg = MILTrainConfig(
            **extra,
            manifest=str(Path(args.manifest).resolve()),
            features_dir=str(Path(args.features).resolve()),
            labels=args.labels,
            clinical=_cols(args.clinical),
            categorical=_cols(args.categorical),
            folds=args.folds,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
        )
    bar = TerminalProgress()
    try:
        result = train_mil(cfg, args.out, resume=args.resume, progress=bar)  # type: ignore[arg-type]
    finally:
        bar.close()
    from engine.mil.evaluate import summary_lines

    print(f"{result.metrics.get('evaluated_on', 'test')}: " + "\n".join(summary_lines(result.metrics)))
    print(f"run folder: {result.run_dir} (export with: metascope mil export {result.run_dir} --out MODEL.onnx)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from engine.mil.clinical import Subgroup
    from engine.mil.evaluate import summary_lines
    from engine.mil.scoring import evaluate_cohort

    subgroup = Subgroup.parse(args.subgroup) if args.subgroup else None
    metrics = evaluate_cohort(
        args.model,
        args.manifest,
        args.features,
        args.out,
        labels=args.labels,
        categorical=_cols(args.categorical),
        subgroup=subgroup,
        split=None if args.split == "all" else args.split,
        n_boot=args.bootstrap,
    )
    print("\n".join(summary_lines(metrics)))
    for note in metrics.get("excluded_slides", []):
        print(f"note: {note}", file=sys.stderr)
    print(f"results: {Path(args.out)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from engine.mil.export import export_run

    out = export_run(args.run_dir, args.out, fold=args.fold, name=args.name)
    print(f"model: {out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from engine.mil.clinical import parse_clinical_arg
    from engine.mil.package import extractor_for
    from engine.mil.predict import predict_slide, write_prediction_for_slide

    clinical = parse_clinical_arg(args.clinical)
    extractor = args.extractor or extractor_for(args.model)
    bar = TerminalProgress()
    try:
        pred = predict_slide(
            args.slide,
            extractor,
            args.model,
            clinical,
            roi=args.roi,
            slide_mpp=args.slide_mpp,
            device=args.device,
            progress=bar,
        )
    finally:
        bar.close()
    out = write_prediction_for_slide(pred, args.out, slide_mpp=args.slide_mpp)
    probs = ", ".join(f"{c} {p:.3f}" for c, p in zip(pred.class_names, pred.probabilities, strict=True))
    print(f"{Path(args.slide).name}: {pred.predicted_class} ({probs}); {pred.attention.size} tiles")
    for note in pred.clinical_notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"results: {out}")
    return 0
