"""``metascope pn-stage``: the patient-level pN category of a heatmap folder (one slide = one node).

Reads the folder ``metascope heatmap SLIDES --out DIR`` wrote (:mod:`engine.infer.pn_stage`),
prints one line per patient, writes the CSV and, with a reference, the quadratic weighted kappa.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``pn-stage``."""
    p = sub.add_parser(
        "pn-stage",
        help="patient-level pN category (CAMELYON17) from a heatmap folder, one slide per lymph node",
        description=(
            "Group the slides of a `metascope heatmap --out DIR` folder into patients (CAMELYON17 names "
            "patient_012_node_3, or a CSV with columns slide,patient) and give each patient the pN category from "
            "its nodes' lesion categories: pN0, pN0(i+) (only isolated tumour cells), pN1mi (micrometastases only), "
            "pN1 / pN2 / pN3 (metastases in 1-3 / 4-9 / 10+ nodes, at least one macrometastasis; nodes with only "
            "isolated tumour cells do not count), pNX when a node is unknown (no mpp, failed slide) and the known "
            "nodes do not already give pN1 or more. With --reference: quadratic weighted Cohen's kappa (the "
            "CAMELYON17 metric; pNX patients left out) and a confusion table."
        ),
    )
    p.add_argument("heatmaps", metavar="HEATMAP_DIR", help="folder written by `metascope heatmap --out`")
    p.add_argument(
        "--patients", metavar="CSV", help="CSV with columns slide,patient (slide: folder name, file name or stem)"
    )
    p.add_argument("--reference", metavar="CSV",
                   help="CSV with columns patient,stage (CAMELYON17's stage_labels.csv reads as it is)")
    p.add_argument("--out", metavar="CSV", help="output CSV (default: HEATMAP_DIR/pn_stages.csv)")
    p.set_defaults(handler=_pn_stage)


def _pn_stage(args: argparse.Namespace) -> int:
    from engine.infer.pn_stage import agreement, read_reference, stage_patients, write_stages_csv

    reference = read_reference(args.reference) if args.reference else None  # a bad reference fails first
    staging = stage_patients(args.heatmaps, args.patients)
    for note in staging.notes:
        print(f"warning: {note}", file=sys.stderr)
    for patient in staging.patients:
        print(patient.line())
    if reference is not None:
        for line in agreement(staging.patients, reference).lines():
            print(line)
    out = Path(args.out) if args.out else Path(args.heatmaps) / "pn_stages.csv"
    write_stages_csv(out, staging.patients, reference)
    print(f"wrote {len(staging.patients)} patient(s) to {out}", file=sys.stderr)
    return 0
