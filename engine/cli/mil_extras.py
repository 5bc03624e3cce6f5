"""``metascope mil import-balnmp``, ``mil extractor`` and ``mil protocol`` (BALNMP reproduction).

Registered by :func:`engine.cli.mil.register` into the ``mil`` group. Heavy modules load inside
the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import add_device_option
from engine.cli.progress import TerminalProgress


def register(msub: Any) -> None:
    """Add the commands to the ``mil`` sub-parsers."""
    p = msub.add_parser(
        "import-balnmp",
        help="write a cohort manifest from a BALNMP / BCNB download",
        description=(
            "Read a BALNMP folder (WSIs/<id>.jpg, WSIs/<id>.json tumour annotations, the clinical Excel or CSV "
            "table, optional train/val/test id files) and write a manifest CSV for mil features / train mil. "
            "Prints which table column became which manifest column."
        ),
    )
    p.add_argument("root", metavar="ROOT", help="the BALNMP dataset folder")
    p.add_argument("--out", required=True, metavar="MANIFEST.csv", help="manifest to write")
    p.add_argument("--table", default=None, help="the clinical table (default: the .xlsx/.csv with Patient ID and ALN status)")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.set_defaults(handler=_import)

    from engine.mil.extractors import BACKBONES, BUILTINS

    e = msub.add_parser(
        "extractor",
        help="write a feature extractor package (built-in, or from local ImageNet weights)",
        description=(
            "Write a feature extractor for mil features: --builtin "
            + ", ".join(f"{k} ({v})" for k, v in BUILTINS.items())
            + "; or --backbone vgg16_bn|resnet18|resnet34 with --weights, a torchvision-compatible ImageNet "
            "checkpoint you have locally (BALNMP used VGG16-BN). Nothing is downloaded."
        ),
    )
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--builtin", choices=tuple(BUILTINS), help="built-in extractor")
    src.add_argument("--backbone", choices=BACKBONES, help="backbone of a local weights file")
    e.add_argument("--weights", default=None, metavar="FILE.pth", help="with --backbone: the local checkpoint")
    e.add_argument("--out", required=True, metavar="E.onnx")
    e.add_argument("--input-size", type=int, default=None, help="tile side in pixels (stats: 64; backbones: 224)")
    e.add_argument("--mpp", type=float, default=None, help="analysis resolution in um/px (stats: 1.0; backbones: 0.5)")
    e.add_argument("--json", action="store_true", help="print the package summary as JSON")
    e.set_defaults(handler=_extractor)

    r = msub.add_parser(
        "protocol",
        help="BALNMP's experiment: 3 tasks x (image, image+clinical), Youden cut-off, CIs, age<50, DeLong",
        description=(
            "Train the BALNMP recipe (tanh attention, random bags of 10 tiles, slide = mean over bags, clinical "
            "fused after pooling, 6:2:2 patient split) for N0 vs N+, N0 vs N+(1-2) and N0 vs N+(>2), each image "
            "only and image + clinical, and write OUT/report.md and report.json: Youden cut-off from validation, "
            "test AUC and accuracy with 95% CIs, sensitivity, specificity, the age<50 subgroup and a paired "
            "DeLong test of the AUC difference."
        ),
    )
    r.add_argument("manifest", metavar="MANIFEST")
    r.add_argument("--features", required=True, metavar="FEATURES_DIR")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--clinical", required=True, help="clinical columns of the image + clinical runs, comma-separated")
    r.add_argument("--tasks", default="", help="subset of tasks, comma-separated (default all three)")
    r.add_argument("--age-column", default="age")
    r.add_argument("--epochs", type=int, default=None, help="epochs per run (default 40)")
    r.add_argument("--bag-size", type=int, default=None, help="tiles per bag (default 10)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    add_device_option(r)
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(handler=_protocol)


def _cols(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def _import(args: argparse.Namespace) -> int:
    from engine.mil.balnmp import import_balnmp

    rep = import_balnmp(args.root, args.out, table=args.table)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2, ensure_ascii=False))
    else:
        print("\n".join(rep.lines()))
    return 0


def _extractor(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.mil.features import load_extractor

    if args.builtin:
        if args.weights:
            raise ConfigError("--weights goes with --backbone, not --builtin")
        from engine.mil.extractors import write_builtin

        path = write_builtin(args.builtin, args.out, input_size=args.input_size, mpp=args.mpp)
    else:
        if not args.weights:
            raise ConfigError(f"--backbone {args.backbone} needs --weights FILE (a local ImageNet checkpoint; nothing is downloaded)")
        from engine.mil.extractors import BACKBONE_INPUT, BACKBONE_MPP, export_backbone

        path = export_backbone(args.backbone, args.weights, args.out, input_size=args.input_size or BACKBONE_INPUT,
                               mpp=args.mpp if args.mpp is not None else BACKBONE_MPP)
    ext = load_extractor(path, device="cpu")
    md = ext.metadata
    summary = {**ext.describe(), "path": str(path), "input_size": md.input_size, "input_mpp": md.input_mpp}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"extractor {path}: {ext.feature_dim} features per {md.input_size} px tile at {md.input_mpp} um/px")
    return 0


def _protocol(args: argparse.Namespace) -> int:
    from engine.mil.protocol import TASKS, report_markdown, run_protocol

    overrides: dict[str, Any] = {"seed": args.seed, "device": args.device, "n_boot": 200}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.bag_size is not None:
        overrides["bag_size"] = args.bag_size
    bar = TerminalProgress()
    try:
        rep = run_protocol(args.manifest, args.features, args.out, _cols(args.clinical),
                           tasks=_cols(args.tasks) or tuple(TASKS), age_column=args.age_column,
                           bootstrap=args.bootstrap, progress=bar, **overrides)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(report_markdown(rep), end="")
        print(f"report: {Path(args.out) / 'report.md'}", file=sys.stderr)
    return 0
