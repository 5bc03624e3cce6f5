"""``metascope expression deg|generate|realism`` and ``metascope train wgan``: synthetic expression.

Heavy modules (torch, onnxruntime, scipy, statsmodels, sklearn, matplotlib) are imported inside
the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli.progress import TerminalProgress


def _cols(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def register(sub: argparse._SubParsersAction, groups: dict[str, Any]) -> None:
    """Add ``expression deg``, ``expression generate``, ``expression realism`` and ``train wgan``."""
    ex = groups["expression"]
    p = ex.add_parser(
        "deg",
        help="differential expression between two groups (volcano plot, gene list)",
        description="Welch t-test or Mann-Whitney / Wilcoxon signed-rank (paired), Bonferroni or "
        "Benjamini-Hochberg, log2 fold change; selected: corrected p <= alpha and |log2 FC| >= log2(fold).",
    )
    p.add_argument("--matrix", required=True, metavar="MATRIX", help="expression matrix (either orientation)")
    p.add_argument("--samples", default=None, metavar="SAMPLES.tsv", help="sample table with the group column")
    p.add_argument("--group", required=True, metavar="COL=A,B", help="column and the two groups; FC is A over B")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="only these samples (repeatable)")
    p.add_argument("--paired-by", default=None, metavar="COL", help="pair samples by this column (e.g. patient)")
    p.add_argument("--test", choices=("wilcoxon", "welch"), default="wilcoxon", help="default wilcoxon")
    p.add_argument("--correction", choices=("bonferroni", "bh"), default="bonferroni", help="default bonferroni")
    p.add_argument("--alpha", type=float, default=0.05, help="corrected p threshold (default 0.05)")
    p.add_argument("--fold", type=float, default=2.0, help="fold-change threshold T, linear scale (default 2)")
    p.add_argument("--top", type=int, default=0, help="write at most this many genes to genes.txt (default all)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_deg)

    p = ex.add_parser(
        "generate",
        help="synthetic expression profiles from a WGAN run or generator package",
        description="Generate profiles with onnxruntime; covariates from a table, fixed values or the training distribution.",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL.onnx")
    p.add_argument("--n", type=int, default=None, help="number of profiles (default: one per --covariates row)")
    p.add_argument("--covariates", default=None, metavar="FILE.tsv", help="covariate values, one row per profile")
    p.add_argument("--set", default="", metavar="NAME=VALUE,...", help="fixed covariate values, e.g. sex=female,age=60")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="SYNTHETIC.tsv")
    p.add_argument("--json", action="store_true", help="print a report as JSON")
    p.set_defaults(handler=_generate)

    p = ex.add_parser(
        "realism",
        help="how real synthetic profiles look (gamma, C2ST) beside a Gaussian baseline",
        description="gamma (correlation of gene-gene distance matrices), classifier two-sample test, moments, "
        "dendrograms, PCA; beside a multivariate Gaussian baseline and real-vs-real.",
    )
    p.add_argument("--real", required=True, metavar="MATRIX", help="real expression matrix")
    p.add_argument("--synthetic", required=True, metavar="SYNTHETIC.tsv")
    p.add_argument("--genes", default=None, metavar="GENES.txt", help="compare these genes (default: shared genes)")
    p.add_argument("--samples", default=None, metavar="SAMPLES.tsv", help="sample table of the real matrix")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="only these real samples")
    p.add_argument(
        "--run", default=None, metavar="RUN_DIR",
        help="the WGAN run that made the synthetic set: compare on its held-out samples, baseline on its training samples",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(handler=_realism)

    t = groups["train"].add_parser(
        "wgan",
        help="train a conditional WGAN-GP on expression profiles",
        description="Conditional WGAN-GP (generator and critic MLPs, covariates via embeddings); realism on held-out samples.",
    )
    t.add_argument("--matrix", default=None, metavar="MATRIX", help="expression matrix (either orientation)")
    t.add_argument("--samples", default=None, metavar="SAMPLES.tsv", help="sample table with the covariates")
    t.add_argument("--genes", default=None, metavar="GENES.txt", help="gene list (e.g. genes.txt of expression deg)")
    t.add_argument("--covariates", default="", help="covariate columns, comma-separated (e.g. age,sex,stage)")
    t.add_argument("--categorical", default="", help="covariates to treat as categorical")
    t.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="train on this subset (repeatable)")
    t.add_argument("--holdout", type=float, default=0.2, help="fraction held out for realism (default 0.2)")
    t.add_argument(
        "--epochs", type=int, default=None,
        help="epochs (default: 60, or 120 from 200 training samples on)",
    )
    t.add_argument(
        "--time-budget", type=float, default=None, metavar="SECONDS",
        help="stop training after this much optimisation CPU time, even before --epochs (default 420; 0: no limit)",
    )
    t.add_argument(
        "--steps-per-epoch", type=int, default=None,
        help="generator steps per epoch, each after 5 critic steps (default 50, whatever the sample count)",
    )
    t.add_argument("--batch-size", type=int, default=None, help="default 64")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate, betas (0.5, 0.9) (default 2e-4)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    t.add_argument("--out", required=True, metavar="RUN_DIR")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in RUN_DIR")
    t.add_argument("--config", default=None, help="JSON file with the full training configuration")
    t.add_argument("--json", action="store_true", help="print metrics as JSON")
    t.set_defaults(handler=_train)


def _deg(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.errors import ConfigError
    from engine.expression.deg import DegConfig, differential_expression, parse_group, write_deg
    from engine.expression.matrix import read_matrix
    from engine.expression.wgan_train import parse_where

    cfg = DegConfig(test=args.test, correction=args.correction, alpha=args.alpha, fold=args.fold, top=args.top)
    col, a, b = parse_group(args.group)
    m = read_matrix(args.matrix, args.samples)
    keep = np.ones(len(m.samples), dtype=bool)
    for w in args.where:
        wc, values = parse_where(w)
        keep &= np.isin(m.labels(wc), values)
    if not keep.all():
        m = m.subset(samples=np.flatnonzero(keep))
    if m.sample_table is None:
        raise ConfigError("--group needs a sample table (--samples) or annotation columns in the matrix")
    pairs = m.labels(args.paired_by) if args.paired_by else None
    table, summary = differential_expression(m.values, m.genes, m.labels(col), a, b, cfg, pairs=pairs)
    out = write_deg(table, summary, args.out, top=args.top)
    if args.json:
        print(json.dumps(summary, indent=2))
    print(
        f"{summary['test']} + {summary['correction']}: {summary['n_selected']} of {summary['n_tested']} genes selected "
        f"({summary['n_up']} up, {summary['n_down']} down in {a} vs {b}); results: {out}"
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from engine.expression.generate import generate, parse_set, read_covariate_table, write_synthetic

    table = read_covariate_table(args.covariates) if args.covariates else None
    result = generate(args.model, n=args.n, covariates=table, fixed=parse_set(args.set), seed=args.seed)
    out = write_synthetic(result, args.out)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"n": len(result.samples), "genes": len(result.genes), "out": str(out), "notes": result.notes}))
    print(f"{len(result.samples)} synthetic profiles x {len(result.genes)} genes: {out}")
    return 0


def _realism(args: argparse.Namespace) -> int:
    from engine.expression.realism import summary_line
    from engine.expression.realism_io import realism_from_files

    metrics = realism_from_files(
        args.real, args.synthetic, args.out, genes=args.genes, samples=args.samples,
        where=tuple(args.where), run=args.run, seed=args.seed,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    print(f"{summary_line(metrics)}; report: {Path(args.out) / 'report.html'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from engine.cli.options import read_config_file
    from engine.errors import ConfigError
    from engine.expression.realism import summary_line
    from engine.expression.wgan_train import WganTrainConfig, train_wgan

    cfg = None
    if not args.resume:
        if args.config:
            cfg = WganTrainConfig.from_dict(read_config_file(args.config))
        else:
            if not args.matrix:
                raise ConfigError("train wgan needs --matrix (or --resume / --config)")
            kw: dict[str, Any] = {}
            for name in ("epochs", "steps_per_epoch", "batch_size", "lr"):
                if getattr(args, name) is not None:
                    kw[name] = getattr(args, name)
            if args.time_budget is not None:
                kw["time_budget_s"] = args.time_budget
            cfg = WganTrainConfig(
                matrix=str(Path(args.matrix).resolve()),
                samples=str(Path(args.samples).resolve()) if args.samples else "",
                genes=str(Path(args.genes).resolve()) if args.genes else "",
                covariates=_cols(args.covariates),
                categorical=_cols(args.categorical),
                where=tuple(args.where),
                holdout=args.holdout,
                seed=args.seed,
                cpu_threads=args.threads,
                **kw,
            )
    bar = TerminalProgress()
    try:
        result = train_wgan(cfg, args.out, resume=args.resume, progress=bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps({k: v for k, v in result.metrics.items() if k != "history"}, indent=2))
    print(f"held-out realism: {summary_line(result.metrics)}")
    print(f"run folder: {result.run_dir}; generator: {result.model_path}")
    return 0
