"""``metascope dataset validate|info``: check a patch dataset before training."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.cli.progress import TerminalProgress

FORMAT_CHOICES = ("auto", "kaggle", "folders", "pcam_h5", "annotated_slides", "images")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="dataset folder, label CSV, PCam *_x.h5 file or slide manifest")
    p.add_argument("--format", dest="fmt", choices=FORMAT_CHOICES, default="auto", help="dataset format (default: detect)")
    p.add_argument("--mpp", type=float, default=None, help="microns per pixel of the patches, when the format does not say")
    p.add_argument("--unlabelled", action="store_true", help="open without labels (images for prediction)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_slide_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("annotated slides")
    g.add_argument("--patch-size", type=int, default=None, help="patch side in pixels (default 96)")
    g.add_argument("--background", default=None, help="class name for unannotated tissue (default: none)")
    g.add_argument("--slide-mpp", type=float, default=None, help="resolution of slides that do not record one")


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``dataset validate`` and ``dataset info``."""
    ds = sub.add_parser("dataset", help="inspect and validate patch datasets", description="Inspect and validate patch datasets.")
    ds_sub = ds.add_subparsers(dest="dataset_cmd", metavar="COMMAND", parser_class=type(ds))
    ds_sub.required = True
    v = ds_sub.add_parser(
        "validate",
        help="check a dataset: counts, unreadable/missing files, sizes, duplicates",
        description="Check a patch dataset before training. Exit status 2 when it has errors.",
    )
    _add_common(v)
    v.add_argument("--no-images", action="store_true", help="do not read the images (counts, labels and files only)")
    v.add_argument("--min-classes", type=int, default=2, help="classes with patches a training set needs (default 2; 0 = no check)")
    _add_slide_options(v)
    v.set_defaults(handler=_validate)
    i = ds_sub.add_parser("info", help="format, size, classes and resolution of a dataset", description="Describe a patch dataset.")
    _add_common(i)
    _add_slide_options(i)
    i.set_defaults(handler=_info)


def _open(args: argparse.Namespace) -> Any:
    from engine.data import open_dataset

    opts: dict[str, Any] = {}
    for name, key in (("patch_size", "size"), ("background", "background"), ("slide_mpp", "slide_mpp")):
        if getattr(args, name, None) is not None:
            opts[key] = getattr(args, name)
    return open_dataset(args.path, fmt=args.fmt, mpp=args.mpp, labelled=not args.unlabelled, **opts)


def _print_counts(counts: dict[str, int], out: Any) -> None:
    total = sum(counts.values()) or 1
    for name, n in counts.items():
        print(f"  {name:<20} {n:>8}  ({n / total:6.1%})", file=out)


def _info(args: argparse.Namespace) -> int:
    ds = _open(args)
    d = ds.describe()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    out = sys.stdout
    h, w = ds.patch_size
    mpp = f"{ds.mpp:g} um/px ({ds.mpp_source})" if ds.mpp is not None else "unknown (give --mpp)"
    print(f"{ds.source}", file=out)
    print(f"  format: {ds.fmt}   patches: {len(ds)}   size: {w}x{h} px   mpp: {mpp}", file=out)
    if ds.class_names:
        pos = ds.class_names[ds.positive_class] if ds.positive_class >= 0 else "-"
        print(f"  classes: {', '.join(ds.class_names)}   positive: {pos}", file=out)
    if d.get("groups") is not None:
        print(f"  groups (slides/patients): {d['groups']}", file=out)
    _print_counts(d["counts"], out)
    for warning in d["warnings"]:
        print(f"  warning: {warning}", file=out)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from engine.data import validate_dataset
    from engine.jobs import CancelToken

    ds = _open(args)
    bar = TerminalProgress()
    try:
        rep = validate_dataset(
            ds, progress=bar, cancel=CancelToken(), check_images=not args.no_images, require_classes=max(0, args.min_classes)
        )
    finally:
        bar.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0 if rep.ok else 2
    out = sys.stdout
    h, w = rep.patch_size
    mpp = f"{rep.mpp:g} um/px" if rep.mpp is not None else "unknown"
    print(f"{rep.source}", file=out)
    print(f"  format: {rep.fmt}   patches: {rep.n_items}   size: {w}x{h} px   mpp: {mpp}", file=out)
    _print_counts(rep.counts, out)
    if rep.checked_images:
        sizes = ", ".join(f"{k} ({v})" for k, v in rep.sizes.items()) or "-"
        print(f"  stored sizes: {sizes}", file=out)
        dup = rep.to_dict()["duplicates"]
        line = f"  exact duplicates: {dup['groups']} groups, {dup['files']} files"
        if dup["by_class"]:
            line += " (" + ", ".join(f"{k}: {v['groups']} groups / {v['files']} files" for k, v in dup["by_class"].items()) + ")"
        print(line, file=out)
    print(f"  checked in {rep.elapsed_s:.1f} s", file=out)
    for e in rep.errors:
        print(f"  ERROR: {e}", file=out)
    for warning in rep.warnings:
        print(f"  warning: {warning}", file=out)
    if not rep.ok:
        print(f"error: {len(rep.errors)} problem(s) make this dataset unusable for training as it is", file=sys.stderr)
        return 2
    print("  ok", file=out)
    return 0
