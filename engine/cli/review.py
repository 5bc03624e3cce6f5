"""``metascope review``: an evaluation's patches, the model's most confident mistakes first.

Reads the folder ``metascope evaluate --out`` wrote (:mod:`engine.infer.review`); prints the
counts per kind and the top errors, and writes the filtered rows as CSV. No heavy imports.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.infer.review import KINDS


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``review``."""
    p = sub.add_parser(
        "review",
        help="review an evaluation's patches: false positives / negatives first, as text or CSV",
        description=(
            "Read the folder `metascope evaluate MODEL DATA --out DIR` wrote and list its patches as true / false "
            "positives / negatives at the evaluation's threshold (positive class vs rest), errors first, the most "
            "confident first. The Patch review view in the app shows the same with the images."
        ),
    )
    p.add_argument("evaluation", metavar="EVAL_DIR", help="evaluation folder (or its predictions.csv)")
    p.add_argument("--errors", type=int, default=20, metavar="N",
                   help="print the first N rows (default 20; 0 prints only the counts)")
    p.add_argument("--kind", default="FP,FN", metavar="KINDS",
                   help=f"comma-separated kinds to list and export, of {', '.join(KINDS)}, or 'all' (default FP,FN)")
    p.add_argument("--threshold", type=float, default=None,
                   help="call positive at this probability (default: the evaluation's threshold)")
    p.add_argument("--min-p", type=float, default=0.0, help="only patches with probability >= this")
    p.add_argument("--max-p", type=float, default=1.0, help="only patches with probability <= this")
    p.add_argument("--search", default="", metavar="TEXT", help="only patches whose id, file or truth contains TEXT")
    p.add_argument("--csv", metavar="OUT", help="write the selected rows (all of them, in order) to this CSV")
    p.set_defaults(handler=_review)


def _kinds(text: str) -> set[str]:
    from engine.errors import ConfigError

    if text.strip().lower() == "all":
        return set(KINDS)
    kinds = {k.strip().upper() for k in text.split(",") if k.strip()}
    bad = sorted(kinds - set(KINDS))
    if bad or not kinds:
        raise ConfigError(f"--kind: unknown kind {', '.join(bad) or text!r} (choose from {', '.join(KINDS)} or all)")
    return kinds


def _review(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.infer.review import export_csv, filter_rows, load_review, summary_lines

    if args.errors < 0:
        raise ConfigError("--errors must be 0 or more")
    kinds = _kinds(args.kind)
    review = load_review(args.evaluation, threshold=args.threshold)
    rows = filter_rows(review.rows, kinds, args.min_p, args.max_p, args.search)
    lines = summary_lines(review, rows[: args.errors])
    print(lines[0])
    print(f"{len(rows):,} selected ({', '.join(k for k in KINDS if k in kinds)})" + (":" if args.errors and rows else ""))
    for line in lines[1:]:
        print("  " + line)
    if args.csv:
        n = export_csv(rows, args.csv, review.threshold)
        print(f"wrote {n:,} rows to {args.csv}")
    return 0
