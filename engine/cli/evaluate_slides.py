"""``metascope evaluate-slides``: heatmaps scored against tumour annotations (tile AUC, FROC, slide AUC).

Heavy modules are imported inside the handler so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import add_device_option
from engine.cli.progress import TerminalProgress
from engine.cli.qc import add_qc_options, qc_config
from engine.cli.ray_options import add_ray_options, ray_settings


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``evaluate-slides``."""
    p = sub.add_parser(
        "evaluate-slides",
        help="score a patch model's heatmaps against tumour annotations: tile AUC, CAMELYON16 FROC, slide AUC",
        description=(
            "Compute (or reuse) the heatmap of each slide in OUT/heatmaps/ and score it against QuPath GeoJSON "
            "tumour annotations: tile AUC (tile centre in a tumour annotation), the CAMELYON16 FROC (local maxima "
            "as detections; mean lesion sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide; "
            "lesions under 275 um ignored) and slide AUC (score = highest tile probability). A slide without "
            "an annotation file is tumour-free. Writes metrics.json, slides.csv, detections.csv, froc.csv, "
            "froc.png, roc_tiles.png, roc_slides.png."
        ),
    )
    p.add_argument("--model", required=True, metavar="MODEL", help="patch classification model package (.onnx)")
    p.add_argument("--slides", nargs="+", default=[], metavar="SLIDE", help="slide files")
    p.add_argument(
        "--annotations", nargs="+", default=[], metavar="GEOJSON",
        help="a folder of <slide name>.geojson files, or one GeoJSON file per slide in the order of --slides",
    )
    p.add_argument("--manifest", metavar="CSV", help="CSV with columns slide,annotation (instead of --slides)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--tumour-class", default=None, metavar="REGEX",
        help="annotation classes counted as tumour (default: tumour/tumor/metastasis/carcinoma/cancer/positive/"
        "lesion; a file without classes counts every polygon)",
    )
    add_device_option(p)
    p.add_argument("--slide-mpp", "--mpp", dest="slide_mpp", type=float, default=None,
                   help="the slides' microns per pixel, for slides that do not record one")
    p.add_argument("--threshold", type=float, default=None,
                   help="operating threshold for the lesions (default: the model's, else 0.5)")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per inference batch (default 64)")
    p.add_argument("--workers", type=int, default=0, help="tile-reading threads (default 0: automatic)")
    add_qc_options(p)
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the summary")
    add_ray_options(p)
    p.set_defaults(handler=_evaluate_slides)


def _evaluate_slides(args: argparse.Namespace) -> int:
    from engine.cohort.tasks import model_session
    from engine.errors import ConfigError
    from engine.fileio import ensure_writable_dir
    from engine.infer.lesions import operating_threshold
    from engine.infer.pipeline import InferenceConfig
    from engine.infer.slide_eval import TUMOUR_CLASSES, evaluate_slides, resolve_cases
    from engine.slides.open import validate_mpp

    ray = ray_settings(args)  # bad --ray values or a missing Ray fail first
    if args.manifest and args.slides:
        raise ConfigError("give --slides or --manifest, not both")
    cases = resolve_cases(args.slides, args.annotations, args.manifest)
    pattern = args.tumour_class or TUMOUR_CLASSES
    try:
        import re

        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--tumour-class is not a valid regular expression: {exc}") from None
    out = ensure_writable_dir(args.out)
    session = model_session(args.model, args.device)
    cfg = InferenceConfig(
        batch_size=args.batch_size, read_workers=args.workers, device=args.device,
        threshold=operating_threshold(session.metadata, args.threshold), slide_mpp=validate_mpp(args.slide_mpp),
        **qc_config(args),
    )
    err = sys.stderr
    progress = TerminalProgress(err)
    unexpected = 0
    try:
        if ray is None:
            m = evaluate_slides(cases, session, cfg, Path(out), pattern, progress=progress)
        else:  # one Ray task per slide; finished heatmaps in OUT/heatmaps are reused
            from engine.cohort.drivers import evaluate_slides_on_ray

            m, unexpected = evaluate_slides_on_ray(
                cases, args.model, args.device, session, cfg, Path(out), pattern, ray, progress=progress
            )
    finally:
        progress.close()
    for f in m["failed"]:
        print(f"error: {f['slide']}: {f['error']}", file=err)
    for note in m["notes"]:
        print(f"note: {note}", file=err)
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        print(
            f"{m['slides']} slides ({m['positive_slides']} with tumour, {m['lesions']} lesions): tile AUC "
            f"{fmt(m['tile_auc'])}, FROC {fmt(m['froc_score'])}, slide AUC {fmt(m['slide_auc'])} -> {out}"
        )
    if unexpected:
        return 1  # a slide whose worker died (or hit a bug) on every attempt
    return 2 if m["failed"] else 0
