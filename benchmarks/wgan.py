"""Synthetic expression with the conditional WGAN-GP: realism on held-out real samples.

    .venv/bin/python benchmarks/wgan.py [--seeds 0,1,2] [--out DIR] [--only kirc|pan|counts] [--report] [--write]

On ``../shared/data/expression/tcga_mrna_11types``:

1. ``expression deg``: KIRC primary tumours vs their matched normals (Wilcoxon signed-rank,
   Bonferroni, |log2 FC| >= 1): the 100 most different genes (largest |log2 FC|).
2. ``train wgan`` on KIRC primary tumours (covariates age, sex, stage; default settings),
   once per seed (each seed holds out different patients): gamma and C2ST AUC of the
   generator, the Gaussian baseline and real-vs-real on the held-out tumours.
3. Pan-cancer: all 602 primary tumours of the 11 types, the same 100
   genes, covariates cancer_type, age, sex, stage: training time on ~480 samples x 100 genes and
   realism on ~120 held-out tumours (a second, bigger cohort with 11 conditions).
4. Another platform (simulated): the same 602 tumours as RNA-seq *counts* (not log-transformed):
   ``round(Poisson(2^x * 4 * library size))`` with a per-sample log-normal library size, so the
   matrix has zeros, whole numbers and sequencing-depth variation. The whole default command line
   path: ``train wgan`` (scale detected, log2(x+1)), ``expression generate`` (onnxruntime, written
   back as counts), ``expression realism --run`` (both sets on one scale).

Prints a Markdown block; ``--write`` puts it into benchmarks/RESULTS.md (machine.py's section
writer). Results go to ``results_*.json`` in ``--out`` (``--report`` prints the block from them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "expression" / "tcga_mrna_11types"


def machine() -> str:
    import torch
    from machine import cpu_name  # benchmarks/machine.py

    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores available (shared), torch {torch.__version__}, 1 thread"


def select_genes(out: Path) -> Path:
    import numpy as np

    from engine.expression.deg import DegConfig, differential_expression, write_deg
    from engine.expression.matrix import read_matrix

    m = read_matrix(DATA / "expression.tsv.gz", DATA / "samples.tsv")
    k = m.subset(samples=np.flatnonzero(m.labels("cancer_type") == "KIRC"))
    table, summary = differential_expression(
        k.values, k.genes, k.labels("sample_type"), "primary_tumour", "normal", DegConfig(top=100),
        pairs=k.labels("patient"),
    )
    write_deg(table, summary, out / "deg", top=100)
    print(f"DEG: {summary['n_selected']} of {summary['n_tested']} genes selected; top 100 kept", flush=True)
    return out / "deg" / "genes.txt"


def counts_matrix(out: Path) -> Path:
    """The shared matrix as simulated RNA-seq counts of another platform (see the docstring)."""
    import numpy as np

    from engine.expression.matrix import read_matrix, write_matrix

    path = out / "counts_platform.tsv.gz"
    if not path.is_file():
        m = read_matrix(DATA / "expression.tsv.gz")
        rng = np.random.default_rng(0)
        depth = np.exp(rng.normal(0.0, 0.3, size=(len(m.samples), 1)))
        counts = rng.poisson(np.exp2(m.values.astype(np.float64)) * 4.0 * depth)
        write_matrix(path, counts.T, m.genes, m.samples)  # genes x samples, as count tables often are
    return path


def train(run: Path, genes: Path, where: tuple[str, ...], covariates: tuple[str, ...], seed: int,
          matrix: Path | None = None) -> dict:
    import shutil

    from engine.expression.wgan_train import WganTrainConfig, train_wgan

    shutil.rmtree(run, ignore_errors=True)
    cfg = WganTrainConfig(
        matrix=str(matrix or DATA / "expression.tsv.gz"), samples=str(DATA / "samples.tsv"), genes=str(genes),
        covariates=covariates, where=where, seed=seed,
    )
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_wgan(cfg, run)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = result.metrics
    if matrix is not None:  # the command-line path: generate with onnxruntime, realism from the files
        m = cli_realism(run, matrix, m["train_samples"] * 5)
    row = {
        "seed": seed, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
        "train_cpu_seconds": result.metrics.get("train_cpu_seconds"), "epochs": result.metrics.get("epochs"),
        "load": round((load + os.getloadavg()[0]) / 2, 1),
        "train": result.metrics["train_samples"], "heldout": result.metrics["heldout_samples"],
        "gan": {k: m[k] for k in ("gamma", "c2st_auc", "mean_corr", "var_corr", "corr_agreement")},
        "gaussian": {k: m["baseline"][k] for k in ("gamma", "c2st_auc", "mean_corr", "var_corr", "corr_agreement")},
        "real_vs_real": {k: m["real_vs_real"][k] for k in ("gamma", "c2st_auc", "mean_corr", "var_corr", "corr_agreement")},
    }
    print(json.dumps(row), flush=True)
    return row


def cli_realism(run: Path, matrix: Path, n: int) -> dict:
    """``expression generate RUN --n N`` then ``expression realism --real MATRIX --run RUN``."""
    from engine.cli import main

    syn = run / "synthetic.tsv"
    if main(["expression", "generate", str(run), "--n", str(n), "--out", str(syn)]) != 0:
        raise SystemExit("expression generate failed")
    if main(["expression", "realism", "--real", str(matrix), "--samples", str(DATA / "samples.tsv"), "--synthetic",
             str(syn), "--run", str(run), "--out", str(run / "cli_realism")]) != 0:
        raise SystemExit("expression realism failed")
    return json.loads((run / "cli_realism" / "metrics.json").read_text())


def _mean(rows: list[dict], who: str, key: str) -> str:
    vals = [r[who][key] for r in rows if r[who][key] is not None]
    if len(vals) > 1:
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"
    return f"{vals[0]:.3f}" if vals else "n/a"


SCENARIOS = {
    "kirc": "KIRC primary tumours, 100 DEG genes (tumour vs matched normal)",
    "pan": "All 11 types' primary tumours, same 100 genes, + cancer_type covariate",
    "counts": "Another platform (simulated): the 11 types' primary tumours as RNA-seq counts, command-line path",
}


def markdown(results: dict[str, list[dict]], info: str) -> str:
    lines = [
        "## Synthetic expression, conditional WGAN-GP (issue 13)",
        "",
        f"Machine: {info}. `.venv/bin/python benchmarks/wgan.py --write` with the default training settings",
        "(`epochs 0`: 60 epochs x 50 generator steps under 200 training samples, 120 from 200 on; batch 64, n_critic 5,",
        "GP lambda 10, Adam 2e-4 (0.5, 0.9), MLPs 128-128, EMA generator, values clipped at the data floor,",
        "per-group standardisation when a categorical covariate explains the expression (`group_scale auto`: cancer type",
        "in the pan-cancer cohorts, none in KIRC), moment calibration after training).",
        "Realism on held-out real tumours (20 % of patients, never used in training); gamma: Pearson r of the",
        "gene-gene Euclidean distance matrices; C2ST: random-forest AUC real vs generated (0.5 = indistinguishable),",
        "averaged over 5 generated draws as large as the training set; real-vs-real compares the held-out tumours",
        "with the training tumours. Load average (1 min, mean of start and end of each run) beside each timing.",
        "",
    ]
    for key, title in SCENARIOS.items():
        rows = results.get(key) or []
        if not rows:
            continue
        r0 = rows[0]
        timing = ", ".join(
            f"{r['seconds']:.0f} s wall / {r['cpu_seconds']:.0f} s CPU at load {r.get('load', 'n/a')}" for r in rows
        )
        lines += [
            f"**{title}**: {r0['train']} training / {r0['heldout']} held-out samples, seeds "
            f"{', '.join(str(r['seed']) for r in rows)} (mean ± sd over held-out splits); one run (training, calibration, "
            f"realism report, export{', generate, realism from files' if key == 'counts' else ''}): {timing}; "
            "C2ST per seed: " + ", ".join(f"{r['gan']['c2st_auc']:.3f}" for r in rows) + ".",
            "",
            "| generator | gamma | C2ST AUC | per-gene mean r | per-gene variance r | correlation agreement |",
            "|---|---|---|---|---|---|",
        ]
        for who, name in (("gan", "WGAN-GP"), ("gaussian", "Gaussian (Ledoit-Wolf)"), ("real_vs_real", "real vs real")):
            lines.append(
                f"| {name} | {_mean(rows, who, 'gamma')} | {_mean(rows, who, 'c2st_auc')} | {_mean(rows, who, 'mean_corr')} "
                f"| {_mean(rows, who, 'var_corr')} | {_mean(rows, who, 'corr_agreement')} |"
            )
        gam = statistics.mean(r["gan"]["gamma"] for r in rows)
        auc = statistics.mean(r["gan"]["c2st_auc"] for r in rows)
        worst = max(r["gan"]["c2st_auc"] for r in rows)
        lines += [
            "",
            f"Target gamma >= 0.95: **{'met' if gam >= 0.95 else 'missed'}** ({gam:.3f}); "
            f"C2ST AUC <= 0.70: **{'met' if auc <= 0.70 else 'missed'}** ({auc:.3f}"
            + (f"; worst split {worst:.3f}: {'met' if worst <= 0.70 else 'missed'} there" if len(rows) > 1 else "")
            + ").",
            "",
        ]
    lines += NOTES
    return "\n".join(lines)


NOTES = [
    "Notes (ablations on pan-cancer seed 0 and KIRC, same split and genes, measured one at a time on the shared",
    "machine at load 9-16; C2ST of the generator averaged over 5 draws unless said otherwise):",
    "- Per-group standardisation (`group_scale auto`): the generator learns each gene's deviation from its cancer",
    "  type's mean / sd (shrunk by 2 pseudo-samples towards the pooled ones; the inverse is folded into the ONNX",
    "  graph). Pan-cancer, 60 epochs: C2ST 0.865 -> 0.782 (gamma 0.971 -> 0.975). `auto` picks the categorical",
    "  covariate with the largest mean adjusted R^2 over genes when it is >= 0.1: cancer type in the pan-cancer",
    "  cohort (not stage or sex in KIRC, so KIRC is unchanged by it).",
    "- Moment calibration after training (`calibrate`, default on): within each group (or over all samples) the",
    "  generated per-gene mean and sd are matched to the training samples' (affine, folded into the inverse",
    "  scaling, damped for groups under ~10 samples, the floor taken into account). On the 60-epoch pan checkpoint,",
    "  2 draws: 0.771 / 0.755 -> 0.705 / 0.699; on a 150-epoch one 0.727 / 0.685 -> 0.712 / 0.686. On KIRC it moved",
    "  the hard split (seed 1) from 0.772 to 0.634 and the mean from 0.660 to the value in the table.",
    "  Diagnosis that led to it: per-type generated means were off by 0.2-0.55 log2 units and per-type sds 3-26 %",
    "  too wide, while pooled per-gene KS distances were close to real-vs-real (0.099 vs 0.086).",
    "- Training length: pan-cancer with grouping, uncalibrated: 60 epochs 0.782, 150 epochs 0.705 (202 s CPU). The",
    "  held-out live gamma peaks near epoch 75 and the critic's Wasserstein estimate rises again after epoch ~45",
    "  (the critic starts to separate the 482 training profiles). Default now `epochs 0` = 60 under 200 training",
    "  samples, 120 from 200 on, with a 420 s CPU training budget (stops at the epoch boundary, then calibrates).",
    "- Other platforms: the reader detects counts / linear values (whole numbers or max > 30 or skewness > 3 of",
    "  the positive values) and trains on log2(x+1); `expression generate` writes profiles back on the input scale",
    "  (2^x - 1, whole counts for counts data); `expression realism` puts a linear synthetic set on the real set's",
    "  log scale (whichever scale matches the real per-gene medians). Gene lists match without Ensembl versions,",
    "  `SYMBOL|ENTREZ` parts or case, and up to 10 % of listed genes may be missing on the platform (left out,",
    "  noted). The counts table above runs this whole path on simulated counts (zeros, sequencing-depth variation).",
    "- Counts (the simulated platform): trained like log data (log2(count+1), floor clipping at 0, output",
    "  rounded) the generator reached C2ST 0.837 in the run's own report and 0.809 through generate + realism",
    "  (gamma 0.975-0.977): the low counts are discrete (0, 1, 2 ... reads) and a random forest finds the gaps",
    "  between them. Dequantised training (`dequantize`, default on for whole-number matrices): the generator",
    "  learns log2(count + U(0,1) + 1) with fresh uniform noise every batch and generation takes floor(2^y - 1):",
    "  0.666 in the run's report, 0.678 through the command line (table above).",
    "- Time: ~480 samples x 100 genes, 120 epochs: 112-136 s CPU of training; the whole run (calibration,",
    "  realism report with 11 random-forest C2STs, ONNX export) 143-169 s CPU and 201-207 s wall at load 3.5",
    "  (pan seeds 1, 2): the < 10 min target on 2 cores is **met** with a wide margin.",
    "- Tuning vs checking: pan-cancer seed 0 was used for the ablations above and counts seed 0 for the",
    "  dequantisation decision; pan seeds 1, 2 and counts seeds 1, 2 are held-out splits no setting was chosen",
    "  on. The real other-platform cohort of the acceptance check is not reproduced here (only simulated).",
    "- Kept from the first version: clipping generated values at the data's detection floor (-2 here, 0 for",
    "  log2(x+1) data with zeros) inside training too (straight-through gradient) moved KIRC from 0.699 to 0.660.",
    "- Without any covariate the 11-type mixture is much harder (pan-cancer, no covariates, calibrated, 60 epochs: gamma",
    "  0.962, C2ST 0.864 vs Gaussian 0.975 / 0.977 and real-vs-real 0.980 / 0.554; 150 epochs: 0.969 /",
    "  0.807): **missed**. A cohort made of strongly different subtypes should be trained with the subtype as",
    "  a covariate; discovering clusters as a latent group (k-means) was not tried.",
    "- The KIRC runs were made before dequantisation and `epochs 0` were committed; neither changes a KIRC run",
    "  (log-scale values, 58 training samples: 60 epochs), so they are the current defaults' numbers.",
    "- Protocol: the issue quotes a Gaussian at gamma 0.957 / C2ST 0.79 and real-vs-real 0.97 / 0.60 without",
    "  saying how; here C2ST is a random forest (100 trees, min leaf 2, balanced classes, 5-fold x 2 repeated",
    "  stratified CV); the gamma protocol reproduces the issue's scale (Gaussian 0.959, real-vs-real 0.966).",
    "- C2ST noise: with 14 held-out KIRC tumours, one 58-profile draw varies by about ±0.1 and the split decides",
    "  much (real-vs-real 0.36-0.60 over the 3 splits); pan-cancer has 120 held-out tumours (real-vs-real 0.554).",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="/tmp/metascope-wgan-bench")
    ap.add_argument("--only", choices=("all", *SCENARIOS), default="all", help="run one part (e.g. two processes)")
    ap.add_argument("--report", action="store_true", help="only print the Markdown of results already in --out")
    ap.add_argument("--write", action="store_true", help="write the Markdown into benchmarks/RESULTS.md")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"error: {DATA} not found", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        genes = select_genes(out) if not (out / "deg" / "genes.txt").is_file() else out / "deg" / "genes.txt"
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if args.only in ("all", "kirc"):
            kirc = [
                train(out / f"kirc_seed{s}", genes, ("cancer_type=KIRC", "sample_type=primary_tumour"),
                      ("age", "sex", "stage"), s)
                for s in seeds
            ]
            (out / "results_kirc.json").write_text(json.dumps(kirc, indent=2))
        if args.only in ("all", "pan"):
            pan = [train(out / f"pan_seed{s}", genes, ("sample_type=primary_tumour",),
                         ("cancer_type", "age", "sex", "stage"), s) for s in seeds]
            (out / "results_pan.json").write_text(json.dumps(pan, indent=2))
        if args.only in ("all", "counts"):
            counts = [train(out / f"counts_seed{s}", genes, ("sample_type=primary_tumour",),
                            ("cancer_type", "age", "sex", "stage"), s, matrix=counts_matrix(out)) for s in seeds]
            (out / "results_counts.json").write_text(json.dumps(counts, indent=2))

    def load(name: str) -> list[dict]:
        p = out / f"results_{name}.json"
        return json.loads(p.read_text()) if p.is_file() else []

    text = markdown({k: load(k) for k in SCENARIOS}, machine())
    print(text)
    if args.write:
        from machine import write_results_section  # benchmarks/machine.py

        write_results_section("## Synthetic expression, conditional WGAN-GP (issue 13)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
