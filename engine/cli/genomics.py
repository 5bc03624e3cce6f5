"""``metascope genomics ...`` and ``metascope train genomics``: primary vs metastasis from a
sample's mutations and clinical data (cBioPortal studies).

Commands: ``genomics report`` (study report + EDA), ``genomics validate`` (study report only),
``train genomics`` (run folder), ``genomics evaluate`` / ``genomics predict`` (model package,
onnxruntime only). Heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.cli.progress import TerminalProgress


def _cols(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def _study_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-column", default="SAMPLE_TYPE", help="label column (default SAMPLE_TYPE: Primary vs Metastasis)")
    p.add_argument("--positive", default=None, help="positive class value for label columns other than Primary/Metastasis")
    p.add_argument("--drop-columns", default="", help="more columns never to use as features, comma-separated")


def register(sub: argparse._SubParsersAction, groups: dict[str, Any]) -> None:
    """Add the ``genomics`` command group and ``train genomics``."""
    g = sub.add_parser("genomics", help="cBioPortal studies: report, evaluate, predict",
                       description="Primary vs metastasis from a sample's mutations and clinical data.")
    gsub = g.add_subparsers(dest="genomics_command", metavar="COMMAND")
    gsub.required = True

    p = gsub.add_parser("report", help="study report and EDA (HTML + PNG)",
                        description="Study report (report.json) and exploratory analysis (report.html + PNGs).")
    p.add_argument("study", metavar="STUDY", help="cBioPortal study folder (datahub) or folder of downloaded tables")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--tsne-samples", type=int, default=2000, help="samples in the t-SNE plot (default 2000)")
    p.add_argument("--json", action="store_true", help="print report.json")
    _study_opts(p)
    p.set_defaults(handler=_report)

    p = gsub.add_parser("validate", help="check a study and print its report",
                        description="Read a study and report samples, labels, leaks and features (no files written).")
    p.add_argument("study", metavar="STUDY")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _study_opts(p)
    p.set_defaults(handler=_validate)

    p = gsub.add_parser("evaluate", help="metrics of a genomics model on a study",
                        description="AUC with a 95% CI (by patient), accuracy, ROC, confusion, calibration, per-type AUC.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--study", required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--json", action="store_true", help="print metrics.json")
    p.set_defaults(handler=_evaluate)

    p = gsub.add_parser("predict", help="predict every sample of a study",
                        description="Per-sample probability of metastasis with onnxruntime.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--study", required=True)
    p.add_argument("--out", required=True, metavar="PREDICTIONS.csv")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=_predict)

    t = groups["train"].add_parser("genomics", help="train a primary-vs-metastasis classifier on a study",
                                   description="Train dense, dense_embed or gbm on a cBioPortal study (patient-grouped splits).")
    t.add_argument("--study", default=None, help="study folder (not needed with --resume)")
    t.add_argument("--out", required=True, metavar="RUN_DIR")
    t.add_argument("--model", choices=("dense", "dense_embed", "gbm"), default="gbm",
                   help="gbm (boosted trees, default: best in 5-fold CV on msk_met_2021), dense or dense_embed")
    t.add_argument("--folds", type=int, default=0, help="K >= 2: K-fold CV with pooled out-of-fold results (default: one split)")
    t.add_argument("--epochs", type=int, default=0, help="epochs (default dense 40; gbm 12 x 25 boosting iterations)")
    t.add_argument("--gbm-members", type=int, default=5,
                   help="gbm: boosted-tree members averaged, each on its own 85%% of the training patients (default 5; 1: one model)")
    t.add_argument("--features", choices=("clinical", "mutations", "all"), default="all")
    t.add_argument("--max-samples", type=int, default=0, help="use a random subset of this many samples (0: all)")
    t.add_argument("--no-final-fit", action="store_true", help="export the best fold instead of a final model on all patients")
    t.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC CI (default 1000)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in RUN_DIR")
    t.add_argument("--json", action="store_true", help="print metrics.json at the end")
    _study_opts(t)
    t.set_defaults(handler=_train)


def _print_json(obj: Any) -> None:
    from engine.fileio import json_default

    print(json.dumps(obj, indent=2, default=json_default))


def _report(args: argparse.Namespace) -> int:
    from engine.genomics.report import write_report

    rep = write_report(args.study, args.out, label_column=args.label_column, positive=args.positive,
                       drop_columns=_cols(args.drop_columns), tsne_samples=args.tsne_samples)
    if args.json:
        _print_json(rep)
    else:
        c = rep["label_counts"]
        print(f"{rep['study_name']}: {rep['samples']} samples, {rep['patients']} patients, "
              + ", ".join(f"{k} {v}" for k, v in c.items())
              + f"; {len(rep['dropped_columns'])} columns dropped; report: {args.out}/report.html")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from engine.genomics.report import study_report

    rep = study_report(args.study, label_column=args.label_column, positive=args.positive,
                       drop_columns=_cols(args.drop_columns))
    if args.json:
        _print_json(rep)
    else:
        print(f"{rep['study_name']} ({rep['layout']}): {rep['samples']} samples, {rep['patients']} patients, "
              + ", ".join(f"{k} {v}" for k, v in rep["label_counts"].items())
              + f"; {rep['features']['n_features']} features; dropped: "
              + ", ".join(d["column"] for d in rep["dropped_columns"]))
    return 0


def _train(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.genomics.metrics import summary_line
    from engine.genomics.train import GenomicsTrainConfig, train_genomics

    if not args.study and not args.resume:
        raise ConfigError("train genomics needs --study STUDY (or --resume to continue a run)")
    cfg = GenomicsTrainConfig(
        study=args.study or "(from the run folder)", model=args.model, features=args.features, label_column=args.label_column,
        positive=args.positive, drop_columns=_cols(args.drop_columns), folds=args.folds, epochs=args.epochs,
        max_samples=args.max_samples, final_fit=not args.no_final_fit, seed=args.seed, cpu_threads=args.threads,
        n_boot=args.bootstrap, gbm_members=args.gbm_members,
    )
    bar = TerminalProgress()
    try:
        res = train_genomics(cfg, args.out, resume=args.resume, progress=bar)
    finally:
        bar.close()
    if args.json:
        _print_json(res.metrics)
    else:
        print(f"{res.metrics['evaluated_on']} {summary_line(res.metrics)}")
        print(f"run: {res.run_dir}; model: {res.model_path}")
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from engine.genomics.metrics import summary_line
    from engine.genomics.predict import evaluate_study

    m = evaluate_study(args.model, args.study, args.out, n_boot=args.bootstrap)
    if args.json:
        _print_json(m)
    else:
        print(summary_line(m))
        print(f"results: {args.out}")
    for note in m.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from engine.genomics.predict import predict_study

    r = predict_study(args.model, args.study, args.out)
    if args.json:
        _print_json(r)
    else:
        print(f"{r['samples']} samples: " + ", ".join(f"{k} {v}" for k, v in r["predicted"].items()) + f"; predictions: {r['out']}")
    for note in r["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0
