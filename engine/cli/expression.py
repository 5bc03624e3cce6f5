"""``metascope expression info|oneshot|classify|markers`` and ``metascope train siamese``:
expression matrices and one-shot tumour type (CancerSiamese).

``oneshot`` and ``classify`` need onnxruntime only (no torch); ``train siamese`` and ``markers``
need torch. Heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import add_device_option
from engine.cli.progress import TerminalProgress


def _cols(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def _ints(text: str, what: str) -> tuple[int, ...]:
    from engine.errors import ConfigError

    try:
        vals = tuple(int(v) for v in _cols(text))
    except ValueError as exc:
        raise ConfigError(f"{what} must be comma-separated integers, got '{text}'") from exc
    if not vals:
        raise ConfigError(f"{what} is empty")
    return vals


def _matrix_opts(p: argparse.ArgumentParser, samples_required: bool = False) -> None:
    p.add_argument("--samples", required=samples_required, default=None, metavar="SAMPLES.tsv",
                   help="sample table: sample id (first column or --sample-id-column) + annotations")
    p.add_argument("--sample-id-column", default=None, help="id column of the sample table (default: the first)")
    p.add_argument("--orientation", choices=("auto", "samples_x_genes", "genes_x_samples"), default="auto",
                   help="matrix layout (default: detect)")
    p.add_argument("--log", choices=("auto", "yes", "no"), default="auto",
                   help="apply log2(x+1): auto detects raw counts / linear values (default auto)")


def _read(args: argparse.Namespace, path: str, samples: str | None):
    from engine.expression.matrix import read_matrix

    return read_matrix(path, samples, args.orientation, args.log, args.sample_id_column)


def register(sub: argparse._SubParsersAction, groups: dict[str, Any]) -> None:
    """Add ``expression info/oneshot/classify/markers`` and ``train siamese``."""
    ex = groups["expression"]
    p = ex.add_parser("info", help="read an expression matrix and report what was detected",
                      description="Orientation, scale (counts -> log2), gene ids, missing values, label columns.")
    p.add_argument("matrix", metavar="MATRIX", help="TSV/CSV (.gz) expression matrix")
    _matrix_opts(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_info)

    p = ex.add_parser("oneshot", help="N-way one-shot test of a Siamese model vs 1-NN",
                      description="Seeded random N-way one-shot trials (query + one support sample per type); "
                                  "accuracy with 95% CI for the Siamese model and 1-NN (Pearson, Euclidean).")
    p.add_argument("model", metavar="RUN_DIR|MODEL.onnx")
    p.add_argument("--matrix", required=True)
    _matrix_opts(p, samples_required=False)
    p.add_argument("--label-column", required=True, help="sample-table column holding the type")
    p.add_argument("--types", default="", help="types to test, comma-separated (default: those unseen in training)")
    p.add_argument("--ways", default="6,8,10", help="N values, comma-separated (default 6,8,10)")
    p.add_argument("--trials", type=int, default=2000, help="random trials per N (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print metrics.json")
    p.set_defaults(handler=_oneshot)

    p = ex.add_parser("classify", help="which type is a sample? similarity to a support set",
                      description="Similarity of one query sample to each support sample (SUPPORT.tsv: sample id "
                                  "+ type per row); the predicted type is that of the most similar one.")
    p.add_argument("model", metavar="MODEL.onnx", help="Siamese package (or a run folder with model.onnx)")
    p.add_argument("--matrix", required=True, help="matrix holding the query sample")
    _matrix_opts(p)
    p.add_argument("--query", required=True, metavar="SAMPLE_ID")
    p.add_argument("--support", required=True, metavar="SUPPORT.tsv")
    p.add_argument("--support-matrix", default=None, help="matrix holding the support samples (default: --matrix)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print classification.json")
    p.set_defaults(handler=_classify)

    p = ex.add_parser("markers", help="marker genes of a Siamese run (saliency + greedy selection)",
                      description="Integrated-gradients saliency per gene and greedy forward selection of a "
                                  "marker set with its 1-NN accuracy curve.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--max-markers", type=int, default=15)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_markers)

    t = groups["train"].add_parser("siamese", help="train a Siamese one-shot tumour-type model (CancerSiamese)",
                                   description="Pre-train a 1D-CNN type classifier, then a Siamese network; "
                                               "evaluate N-way one-shot on held-out types vs 1-NN.")
    t.add_argument("--matrix", default=None)
    _matrix_opts(t)
    t.add_argument("--label-column", default=None, help="sample-table column holding the type")
    t.add_argument("--out", required=True, metavar="RUN_DIR")
    t.add_argument("--test-types", default="", help="types held out for the one-shot test, comma-separated")
    t.add_argument("--test-fraction", type=float, default=0.3,
                   help="share of types held out when --test-types is not given (default 0.3)")
    t.add_argument("--val-types", type=int, default=-1,
                   help="training types held out for early stopping and the CNN blend (default -1: 20%% of "
                        "them when there are >= 8, else validation samples of the training types)")
    t.add_argument("--genes", type=int, default=1000, help="top-k genes by variance (default 1000)")
    t.add_argument("--epochs", type=int, default=None, help="Siamese epochs (default 20)")
    t.add_argument("--pretrain-epochs", type=int, default=None, help="classifier pre-training epochs (default 8)")
    t.add_argument("--ways", default="6,8,10", help="N values of the final one-shot test (default 6,8,10)")
    t.add_argument("--trials", type=int, default=2000, help="trials per N of the final test (default 2000)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-markers", action="store_true", help="skip the marker genes at the end")
    add_device_option(t)
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in RUN_DIR")
    t.add_argument("--config", default=None, help="JSON file with the full training configuration")
    t.set_defaults(handler=_train)


def _info(args: argparse.Namespace) -> int:
    from engine.expression.matrix import matrix_summary

    m = _read(args, args.matrix, args.samples)
    rep = matrix_summary(m)
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
        return 0
    print(f"{Path(args.matrix).name}: {rep['n_samples']} samples x {rep['n_genes']} genes "
          f"({rep['orientation']['value']}, {rep['orientation']['why']}); scale: {rep['scale']}; "
          f"gene ids: {rep['gene_id_type']}; missing values: {rep['missing_values']['count']}")
    print(f"missing values: {rep['missing_values']['handling']}")
    if rep.get("duplicate_genes_averaged"):
        print(f"duplicated genes averaged: {rep['duplicate_genes_averaged']}")
    if rep.get("sample_table_match"):
        st = rep["sample_table_match"]
        print(f"sample table: {st['matched']} matched ({st['how']}), {st['matrix_samples_without_annotation']} "
              f"matrix samples without annotation dropped, {st['table_rows_not_in_matrix']} table rows unused")
    for col, e in rep["label_columns"].items():
        counts = e.get("counts")
        shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:12]) if counts else ""
        print(f"  column {col}: {e['distinct']} distinct" + (f" ({shown})" if shown else ""))
    return 0


def _train(args: argparse.Namespace) -> int:
    from engine.cli.options import read_config_file
    from engine.errors import ConfigError
    from engine.expression.siamese_train import SiameseTrainConfig, train_siamese

    cfg = None
    if not args.resume:
        if args.config:
            cfg = SiameseTrainConfig.from_dict(read_config_file(args.config))
        else:
            if not args.matrix or not args.label_column:
                raise ConfigError("train siamese needs --matrix and --label-column (or --resume / --config)")
            kw: dict[str, Any] = {}
            if args.epochs is not None:
                kw["epochs"] = args.epochs
            if args.pretrain_epochs is not None:
                kw["pretrain_epochs"] = args.pretrain_epochs
            cfg = SiameseTrainConfig(
                matrix=str(Path(args.matrix).resolve()), label_column=args.label_column,
                samples=str(Path(args.samples).resolve()) if args.samples else None,
                sample_id_column=args.sample_id_column, orientation=args.orientation, log=args.log,
                test_types=_cols(args.test_types), test_fraction=args.test_fraction, val_types=args.val_types,
                genes=args.genes, eval_ways=_ints(args.ways, "--ways"), eval_trials=args.trials, seed=args.seed,
                markers=not args.no_markers, device=args.device, **kw)
    bar = TerminalProgress()
    try:
        result = train_siamese(cfg, args.out, resume=args.resume, progress=bar)
    finally:
        bar.close()
    from engine.expression.oneshot import summary_line

    m = result.metrics
    print(summary_line(m) if m.get("ways") else "no held-out test types: one-shot test skipped")
    print(f"run folder: {result.run_dir} (model: {result.run_dir / 'model.onnx'})")
    return 0


def _oneshot(args: argparse.Namespace) -> int:
    from engine.expression.apply import oneshot_test
    from engine.expression.oneshot import summary_line

    m = _read(args, args.matrix, args.samples)
    metrics = oneshot_test(args.model, m, args.label_column, list(_cols(args.types)) or None,
                           list(_ints(args.ways, "--ways")), args.trials, args.seed, args.out)
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
    else:
        print(summary_line(metrics))
        print(f"results: {Path(args.out)}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from engine.expression.apply import classify_query, read_support, write_classification

    m = _read(args, args.matrix, args.samples)
    sm = _read(args, args.support_matrix, None) if args.support_matrix else None
    res = classify_query(args.model, m, args.query, read_support(args.support), sm)
    out = write_classification(res, args.out)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        top = ", ".join(f"{t} {s:.3f}" for t, s in list(res["per_type"].items())[:5])
        print(f"{res['query']}: {res['predicted']} (similarity {res['score']:.3f}; {top}); 1-NN: {res['nn1_predicted']}")
        print(f"results: {out}")
    return 0


def _markers(args: argparse.Namespace) -> int:
    from engine.expression.markers import compute_markers

    summary = compute_markers(args.run_dir, args.out, max_markers=args.max_markers)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        curve = summary["curve"]
        print(f"{len(summary['markers'])} markers: {', '.join(summary['markers'])}; "
              f"1-NN accuracy {curve[-1]:.3f} with them" + (f" vs {summary['nn1_accuracy_all_genes']:.3f} with all "
                                                             f"{summary['n_genes']} genes"
                                                             if summary.get("nn1_accuracy_all_genes") else ""))
        print(f"results: {Path(args.out)}", file=sys.stdout)
    return 0
