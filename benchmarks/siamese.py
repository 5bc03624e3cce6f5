"""CancerSiamese benchmarks (issue 12) for benchmarks/RESULTS.md.

``oneshot``: on the shared TCGA 11-type set, train on 6 types and test N-way one-shot on the other
5 (several splits), Siamese vs 1-NN (Pearson, Euclidean) on the same trials, N = 3, 4, 5.

``timing``: CPU training time of the default configuration on synthetic data of ~10,000 samples
x ~1,000 genes (with the machine load, since the CPU may be shared).

    .venv/bin/python benchmarks/siamese.py oneshot --out /tmp/bench_siamese [--splits 3] [--trials 2000]
    .venv/bin/python benchmarks/siamese.py timing --out /tmp/bench_siamese_timing [--samples 10000]

Each writes ``results.json`` in ``--out`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_name  # noqa: E402

from engine.expression.siamese_train import SiameseTrainConfig, train_siamese  # noqa: E402

TCGA = ROOT.parent / "shared" / "data" / "expression" / "tcga_mrna_11types"
TYPES = ["BRCA", "COAD", "HNSC", "KIRC", "KIRP", "LIHC", "LUAD", "LUSC", "PRAD", "STAD", "THCA"]


def _splits(n: int, seed: int = 0) -> list[list[str]]:
    """``n`` seeded random choices of 5 test types out of the 11 (the first is a fixed mixed split)."""
    rng = np.random.default_rng(seed)
    out = [["COAD", "KIRP", "LUSC", "STAD", "THCA"], ["BRCA", "KIRC", "LIHC", "LUAD", "PRAD"]]
    while len(out) < n:
        s = sorted(rng.choice(TYPES, 5, replace=False).tolist())
        if s not in out:
            out.append(s)
    return out


def bench_oneshot(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, runs = [], []
    for k, test in enumerate(_splits(args.splits)):
        run = out / f"split{k + 1}"
        if (run / "metrics.json").is_file() and (run / "state.json").is_file() and json.loads(
                (run / "state.json").read_text()).get("status") == "finished":
            metrics = json.loads((run / "metrics.json").read_text())
            seconds = None
        else:
            cfg = SiameseTrainConfig(matrix=str(TCGA / "expression.tsv.gz"), samples=str(TCGA / "samples.tsv"),
                                     label_column="cancer_type", test_types=tuple(test), eval_ways=(3, 4, 5),
                                     eval_trials=args.trials, markers=False, seed=0, cpu_threads=args.threads)
            t0 = time.perf_counter()
            metrics = train_siamese(cfg, run, resume=(run / "config.json").is_file()).metrics
            seconds = time.perf_counter() - t0
        runs.append({"split": k + 1, "test_types": test, "train_types": metrics["train_types"],
                     "best_epoch": metrics["best_epoch"], "seconds": seconds, "ways": metrics["ways"]})
        for n, e in metrics["ways"].items():
            rows.append({"split": k + 1, "N": int(n), **{m: e[m] for m in ("siamese", "nn1", "nn1_euclidean")},
                         "siamese_ci": e["ci"]["siamese"], "nn1_ci": e["ci"]["nn1"],
                         "diff": e.get("diff_vs_nn1"), "diff_ci": e.get("diff_vs_nn1_ci"), "trials": e["trials"]})
    df = pd.DataFrame(rows)
    mean = df.groupby("N")[["siamese", "nn1", "nn1_euclidean", "diff"]].mean().round(4).reset_index()
    res = {"machine": _machine(), "splits": runs, "table": rows, "mean_over_splits": mean.to_dict(orient="records")}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print("| split | test types | N | Siamese (95% CI) | 1-NN Pearson (95% CI) | 1-NN Euclidean | Siamese - 1-NN (95% CI) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        test = ", ".join(runs[r["split"] - 1]["test_types"])
        print(f"| {r['split']} | {test} | {r['N']} | {r['siamese']:.3f} ({r['siamese_ci'][0]:.3f}-{r['siamese_ci'][1]:.3f}) "
              f"| {r['nn1']:.3f} ({r['nn1_ci'][0]:.3f}-{r['nn1_ci'][1]:.3f}) | {r['nn1_euclidean']:.3f} "
              f"| {r['diff']:+.3f} ({r['diff_ci'][0]:+.3f} to {r['diff_ci'][1]:+.3f}) |")
    print(mean.to_string(index=False))
    return res


def bench_oneshot22(args: argparse.Namespace) -> dict:
    """A many-type variant closer to the hidden check: cancer type x tumour/normal = 22 classes;
    hold out both classes of 4 cancer types (8 unseen classes, 6- and 8-way), train on the other 14
    (20% of them held out as validation types, which also choose the CNN blend)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tab = pd.read_csv(TCGA / "samples.tsv", sep="\t")
    tab["type22"] = tab["cancer_type"] + "_" + tab["sample_type"].map({"primary_tumour": "T", "normal": "N"})
    tab.to_csv(out / "samples22.tsv", sep="\t", index=False)
    rng = np.random.default_rng(7)
    rows = []
    for k in range(args.splits):
        held = sorted(rng.choice(TYPES, 4, replace=False).tolist())
        test = [f"{t}_{s}" for t in held for s in ("T", "N")]
        run = out / f"split{k + 1}"
        cfg = SiameseTrainConfig(matrix=str(TCGA / "expression.tsv.gz"), samples=str(out / "samples22.tsv"),
                                 label_column="type22", test_types=tuple(test), eval_ways=(4, 6, 8),
                                 eval_trials=args.trials, markers=False, seed=k, cpu_threads=args.threads)
        t0 = time.perf_counter()
        m = train_siamese(cfg, run).metrics
        rows.append({"split": k + 1, "held_out_cancer_types": held, "train_types": m["train_types"],
                     "val_types": m["val_types"], "seconds": round(time.perf_counter() - t0, 1),
                     "ways": m["ways"]})
        for n, e in m["ways"].items():
            print(f"| {k + 1} | {', '.join(held)} | {n} | {e['siamese']:.3f} ({e['ci']['siamese'][0]:.3f}-"
                  f"{e['ci']['siamese'][1]:.3f}) | {e['nn1']:.3f} ({e['ci']['nn1'][0]:.3f}-{e['ci']['nn1'][1]:.3f}) "
                  f"| {e['nn1_euclidean']:.3f} | {e['diff_vs_nn1']:+.3f} ({e['diff_vs_nn1_ci'][0]:+.3f} to "
                  f"{e['diff_vs_nn1_ci'][1]:+.3f}) |", flush=True)
    res = {"machine": _machine(), "splits": rows}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    return res


def _synthetic(n: int, g: int, n_types: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Expression-like data: per-type programmes over gene modules, imbalanced types, noise."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(36, 1000, n_types).astype(float)
    sizes = np.maximum(2, np.round(sizes / sizes.sum() * n)).astype(int)
    modules = rng.integers(0, 40, g)
    base = rng.normal(7, 2, g)
    rows, labels = [], []
    for t, size in enumerate(sizes):
        effect = rng.normal(0, 1.2, 40)[modules] + rng.normal(0, 0.4, g)
        rows.append(base + effect + rng.normal(0, 0.8, (size, g)))
        labels += [f"TYPE{t:02d}"] * size
    x = np.vstack(rows).astype(np.float32)
    samples = [f"SYN{i:06d}" for i in range(len(x))]
    return (pd.DataFrame(x, index=pd.Index(samples, name="sample"), columns=[f"G{j:05d}" for j in range(g)]),
            pd.DataFrame({"sample": samples, "type": labels}))


def bench_timing(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mat, tab = _synthetic(args.samples, args.genes, args.types)
    mat.to_csv(out / "synthetic.tsv.gz", sep="\t", float_format="%.3f")
    tab.to_csv(out / "synthetic_samples.tsv", sep="\t", index=False)
    cfg = SiameseTrainConfig(matrix=str(out / "synthetic.tsv.gz"), samples=str(out / "synthetic_samples.tsv"),
                             label_column="type", genes=args.genes, markers=False, eval_trials=500,
                             cpu_threads=args.threads, device="cpu")
    import resource

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    run = out / "run"
    import threading

    from engine.errors import Cancelled

    timer = threading.Timer(args.budget_s, lambda: (run / "STOP").touch()) if args.budget_s else None
    if timer:
        timer.start()
    try:
        metrics, finished = train_siamese(cfg, run).metrics, True
    except Cancelled:  # time budget spent (a busy shared machine): extrapolate from the epochs done
        metrics, finished = {"ways": {}}, False
    finally:
        if timer:
            timer.cancel()
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    ended = [e for e in events if e["event"] == "epoch_ended"]
    epochs = len(ended)
    per_phase = {}
    prev = next(e["time"] for e in events if e["event"] == "run_started")
    for e in ended:  # wall seconds per epoch, by phase
        per_phase.setdefault(e["phase"], []).append(e["time"] - prev)
        prev = e["time"]
    res = {"machine": _machine(), "samples": len(mat), "genes": args.genes, "types": args.types,
           "threads": args.threads, "seconds": round(seconds, 1),
           "cpu_seconds": round(cpu_seconds, 1), "finished": finished,
           "epoch_wall_s": {k: [round(v, 1) for v in vs] for k, vs in per_phase.items()},
           "schedule": {"pretrain_epochs": cfg.pretrain_epochs, "epochs": cfg.epochs}, "epochs_run": epochs,
           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "ways": metrics["ways"]}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "ways"}, indent=1))
    return res


def _machine() -> dict:
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("oneshot")
    a.add_argument("--out", required=True)
    a.add_argument("--splits", type=int, default=3)
    a.add_argument("--trials", type=int, default=2000)
    a.add_argument("--threads", type=int, default=1)
    a.set_defaults(func=bench_oneshot)
    c = sub.add_parser("oneshot22")
    c.add_argument("--out", required=True)
    c.add_argument("--splits", type=int, default=2)
    c.add_argument("--trials", type=int, default=2000)
    c.add_argument("--threads", type=int, default=1)
    c.set_defaults(func=bench_oneshot22)
    b = sub.add_parser("timing")
    b.add_argument("--out", required=True)
    b.add_argument("--samples", type=int, default=10000)
    b.add_argument("--genes", type=int, default=1000)
    b.add_argument("--types", type=int, default=30)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--budget-s", type=float, default=0, help="stop cleanly after this many seconds (0: no limit)")
    b.set_defaults(func=bench_timing)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
