"""``metascope qc`` and the slide-QC options shared by the commands that analyse slides.

Heavy modules are imported inside the handler so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, MetaScopeError


def _fraction(text: str) -> float:
    from engine.slides.damage import validate_max_unreadable

    try:
        return validate_max_unreadable(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_qc_options(p: argparse.ArgumentParser, stain: bool = True) -> None:
    """``--max-unreadable``, ``--no-qc``, ``--keep-qc-failed`` and (``stain``) ``--ignore-stain``."""
    p.add_argument(
        "--max-unreadable",
        type=_fraction,
        default=0.05,
        metavar="FRACTION",
        help="share of tiles that may be undecodable (left out and reported) before the slide fails (default 0.05)",
    )
    p.add_argument("--no-qc", action="store_true", help="skip the artefact checks (pen, fold, bubble, blur)")
    p.add_argument(
        "--keep-qc-failed",
        action="store_true",
        help="analyse tiles slide QC flagged (pen, fold, bubble, blur) instead of leaving them out; still reported",
    )
    if not stain:
        return
    p.add_argument(
        "--ignore-stain",
        action="store_true",
        help="analyse slides that do not look like H&E even when the model says it needs H&E",
    )


def qc_config(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~engine.infer.pipeline.InferenceConfig` fields of :func:`add_qc_options`."""
    return {
        "max_unreadable": args.max_unreadable,
        "qc": not args.no_qc,
        "keep_qc_failed": bool(args.keep_qc_failed),
        "ignore_stain": bool(args.ignore_stain),
    }


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``qc``."""
    qc = sub.add_parser(
        "qc",
        help="slide quality control: stain, pen, folds, blur, bubbles, damaged tiles",
        description=(
            "Check slides before analysis and write OUT/<slide>/qc.json, thumbnail.png, qc_mask.png "
            "(artefact tiles hatched, unreadable tiles solid) and OUT/qc_results.csv (one row per slide). "
            "A slide that cannot be checked is reported and the others continue (exit status 2 if any failed)."
        ),
    )
    qc.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
    qc.add_argument("--out", required=True, metavar="DIR", help="output folder")
    qc.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="judge tiles at this model's input size and resolution (default 96 px at 0.97 um/px)",
    )
    qc.add_argument("--tile-size", type=int, default=None, help="tile side in pixels (default 96)")
    qc.add_argument("--analysis-mpp", type=float, default=None, help="analysis resolution in um/px (default 0.97)")
    qc.add_argument(
        "--slide-mpp",
        "--mpp",
        dest="slide_mpp",
        type=float,
        default=None,
        help="the slide's microns per pixel, for slides that do not record one",
    )
    qc.add_argument(
        "--blur-sample",
        type=int,
        default=256,
        help="tissue tiles read at the analysis resolution to measure blur (default 256)",
    )
    qc.add_argument("--json", action="store_true", help="print the reports as JSON")
    qc.set_defaults(handler=_qc)


def _tiling(args: argparse.Namespace) -> tuple[int, float]:
    from engine.slides.qc_report import DEFAULT_MPP, DEFAULT_TILE_SIZE

    size, mpp = DEFAULT_TILE_SIZE, DEFAULT_MPP
    if args.model:
        from engine.modelpkg import read_metadata

        meta = read_metadata(args.model)
        size = int(meta.input_size or size)
        mpp = float(meta.input_mpp or mpp)
    if args.tile_size is not None:
        size = args.tile_size
    if args.analysis_mpp is not None:
        mpp = args.analysis_mpp
    if not 8 <= size <= 4096:
        raise ConfigError(f"--tile-size must be within 8-4096, got {size}")
    if not 0.01 <= mpp <= 100:
        raise ConfigError(f"--analysis-mpp must be within 0.01-100 um/px, got {mpp}")
    if args.blur_sample < 0:
        raise ConfigError(f"--blur-sample must be 0 or more, got {args.blur_sample}")
    return size, mpp


def _qc(args: argparse.Namespace) -> int:
    from engine.fileio import ensure_writable_dir
    from engine.infer.outputs import safe_name
    from engine.slides.open import open_slide, validate_mpp
    from engine.slides.qc_report import (
        COHORT_FILE,
        failed_report,
        slide_qc_report,
        write_cohort_csv,
        write_slide_report,
    )

    size, mpp = _tiling(args)
    slide_mpp = validate_mpp(args.slide_mpp)
    out = ensure_writable_dir(args.out)
    err = sys.stderr
    reports = []
    failed = 0
    used: set[str] = set()
    for slide in args.slides:
        try:
            with open_slide(slide, mpp=slide_mpp) as reader:
                rep = slide_qc_report(reader, size, mpp, blur_sample=args.blur_sample)
            name = safe_name(rep.name)
            n = 2
            while name in used:
                name = f"{safe_name(rep.name)}-{n}"
                n += 1
            used.add(name)
            folder = write_slide_report(rep, out / name)
        except MetaScopeError as exc:
            msg = " ".join(str(exc).split())
            if str(slide) not in msg and Path(slide).name not in msg and Path(slide).stem not in msg:
                msg = f"{slide}: {msg}"
            print(f"error: {msg}", file=err)
            reports.append(failed_report(slide, exc))
            failed += 1
            continue
        reports.append(rep)
        if not args.json:
            print(_line(rep.data, folder))
    cohort = write_cohort_csv(reports, out / COHORT_FILE)
    if args.json:
        print(json.dumps({"slides": [r.data for r in reports], "cohort": str(cohort)}, indent=2))
    else:
        print(f"{len(reports) - failed} of {len(args.slides)} slide(s) checked -> {cohort}")
    return 2 if failed else 0


def _line(d: dict[str, Any], folder: Path) -> str:
    stain = d.get("stain") or {}
    if d.get("status") != "ok":
        return f"{d['slide']}: {d.get('error') or d.get('status')} -> {folder}"
    fr = d.get("tile_fractions") or {}
    blur = d.get("blur") or {}
    unread = (d.get("unreadable") or {}).get("count", 0)
    kind = stain.get("kind", "?")
    warn = f" (warning: {stain.get('message')})" if stain.get("message") else ""
    return (
        f"{d['slide']}: stain {kind}{warn}; {d.get('tissue_tiles', 0)} tissue tiles: pen {fr.get('pen', 0):.1%}, "
        f"fold {fr.get('fold', 0):.1%}, bubble {fr.get('bubble', 0):.1%}, blur {blur.get('blurred_fraction', 0):.1%} "
        f"of {blur.get('sampled', 0)} sampled, {unread} unreadable; usable {d.get('usable_fraction', 0):.1%} -> {folder}"
    )
