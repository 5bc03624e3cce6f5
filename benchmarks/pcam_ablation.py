"""One-at-a-time ablations of the PCam starter recipe on real PatchCamelyon patches (issue 14).

Each row changes one ingredient of the starter recipe (``benchmarks/train_starter.py``:
``pcam_resnet_s``, 96 px at 0.972 um/px, all 8 flips / rotations, HED jitter 0.05, AdamW 2e-3 with
cosine decay, batch 64, seed 0) and trains it on ``pcam/train`` with the SAME short schedule and
the same grouped validation split (10 %, byte-identical duplicates kept together); the best epoch
by validation AUC is exported and tested on ``pcam/valid`` (3,000 patches, never used for
training or selection): AUC with a bootstrap 95 % CI, and the AUC difference to the baseline
with a paired bootstrap 95 % CI (the same resampled patches for both models)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/pcam_ablation.py \\
        --out /work/scratch/ablation [--epochs 3] [--rows baseline,hard_negatives] [--write-results]

Rows are run in the order of ``ROWS`` and saved to ``OUT/rows.json`` as each finishes (with
``--write-results`` the RESULTS.md section is rewritten after every row), so an interrupted run
keeps its finished rows; running it again skips finished rows and resumes an interrupted
training. The ``tta8`` row trains nothing: it re-scores the baseline's package with the mean over
the 8 rotations / flips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SECTION = "## PCam starter: one-at-a-time ablations (issue 14)"
PCAM = ROOT.parent / "shared" / "data" / "pcam"
#: EMA decay of the ``ema`` row: a ~200-step window, scaled to the short schedule (0.999 would
#: average over more steps than a 3-epoch run has)
EMA_DECAY = 0.995
#: hard-negative mining strength of the ``hard_negatives`` row (the CLI's default)
HNM_ALPHA = 3.0


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    changes: dict[str, Any] = field(default_factory=dict)
    tta: bool = False
    base: str | None = None  # score this row's package instead of training one
    ref: str = "baseline"  # the row the delta is measured against


ROWS = (
    Row("baseline", "recipe baseline: pcam_resnet_s, 96 px at 0.972 um/px, HED jitter 0.05"),
    Row("tta8", "baseline scored with 8-fold TTA (no extra training)", tta=True, base="baseline"),
    Row("hard_negatives", f"+ hard-negative mining (alpha {HNM_ALPHA:g}, after 1 warm-up epoch)", {"hard_negatives": HNM_ALPHA}),
    Row("no_hed", "without HED jitter", {"hed": 0.0}),
    Row("px64", "64 px at 1.458 um/px, same network", {"resize": 64}),
    Row("ema", f"+ EMA of the weights (decay {EMA_DECAY:g})", {"ema": EMA_DECAY}),
    Row("reinhard", "+ Reinhard stain normalisation", {"stain_norm": "reinhard"}),
    Row("macenko", "+ Macenko stain normalisation", {"stain_norm": "macenko"}),
    # not an ingredient: the run-to-run noise of one training (another seed also draws another
    # grouped validation split; the test set is the same)
    Row("seed1", "baseline again with seed 1 (run-to-run noise, not an ingredient)", {"seed": 1}),
    Row("hard_negatives_seed1", f"seed 1: + hard-negative mining (alpha {HNM_ALPHA:g}); delta vs the seed-1 baseline",
        {"seed": 1, "hard_negatives": HNM_ALPHA}, ref="seed1"),
    Row("hard_negatives_a1", "+ hard-negative mining, milder (alpha 1)", {"hard_negatives": 1.0}),
)


def row_config(row: Row, epochs: int) -> Any:
    """The starter recipe (``train_starter._config``, so the split is the same) with ``row``'s change."""
    from train_starter import _config

    ch = dict(row.changes)
    args = argparse.Namespace(
        data=str(PCAM), resize=ch.pop("resize", 96), arch="pcam_resnet_s", epochs=epochs, batch_size=64, lr=2e-3,
        weight_decay=0.01, hed=ch.pop("hed", 0.05), hard_negatives=ch.pop("hard_negatives", 0.0),
    )
    cfg = _config(args)
    return cfg.replace(**ch) if ch else cfg


def _epoch_printer(name: str) -> Any:
    def on(ev: Any) -> None:
        if ev.stage == "epoch":
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {ev.message}", flush=True)

    return on


def train_row(row: Row, epochs: int, out: Path) -> Path:
    """Train (or resume, or reuse) the row's run; returns its run folder."""
    from engine.train.runfolder import CONFIG_NAME, read_state
    from engine.train.trainer import train

    run = out / "runs" / row.name
    st = read_state(run) or {}
    if st.get("status") != "finished":
        cfg = row_config(row, epochs)
        train(cfg, run, progress=_epoch_printer(row.name), resume=(run / CONFIG_NAME).is_file())
    return run


def package(run: Path, out: Path, name: str) -> Path:
    from engine.export import export_onnx

    pkg = out / "packages" / f"{name}.onnx"
    if not pkg.is_file():
        pkg.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(run, pkg, name=f"PCam ablation {name}", exporter="torchscript")
    return pkg


def paired_delta_ci(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile CI of ``AUC(a) - AUC(b)`` over patch resamples shared by both models."""
    from engine.train.metrics import roc_auc

    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        v = roc_auc(y[i], a[i]) - roc_auc(y[i], b[i])
        if np.isfinite(v):
            d.append(v)
    lo, hi = np.quantile(d, [0.025, 0.975])
    return float(lo), float(hi)


def run_row(row: Row, epochs: int, out: Path) -> dict[str, Any]:
    from starter_eval import score_patches

    from engine.train.metrics import bootstrap_auc_ci, roc_auc
    from engine.train.runfolder import BEST_NAME, CHECKPOINT_NAME, load_checkpoint

    t0 = time.monotonic()
    run = train_row(row, epochs, out) if row.base is None else out / "runs" / row.base
    ck = load_checkpoint(run / CHECKPOINT_NAME)
    best = load_checkpoint(run / BEST_NAME)
    train_s = float(sum(h.get("epoch_s", 0.0) for h in ck.get("history", [])))
    pkg = package(run, out, row.base or row.name)
    t_eval = time.monotonic()
    y, score = score_patches(pkg, PCAM / "valid", tta=row.tta)
    np.savez_compressed(out / "scores" / f"{row.name}.npz", y=y, score=score)
    lo, hi = bootstrap_auc_ci(y, score, n_boot=1000, seed=0)
    rec = {
        "name": row.name, "label": row.label, "changes": row.changes, "tta": row.tta, "base": row.base,
        "epochs": len(ck.get("history", [])), "best_epoch": int(best["epoch"]),
        "val_auc": float(best["metrics"]["val_auc"]), "val_auc_by_epoch": [round(h["val_auc"], 4) for h in ck["history"]],
        "test_auc": roc_auc(y, score), "test_auc_ci95": [lo, hi], "n_test": int(y.size),
        "train_s": 0.0 if row.base else round(train_s, 1), "eval_s": round(time.monotonic() - t_eval, 1),
        "wall_s": round(time.monotonic() - t0, 1), "load_avg_1min": round(os.getloadavg()[0], 2),
        "patches_per_s": ck["history"][-1].get("train_patches_per_s"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    rec["ref"] = row.ref
    if row.name != row.ref and (out / "scores" / f"{row.ref}.npz").is_file():
        b = np.load(out / "scores" / f"{row.ref}.npz")
        rec["delta_ci95"] = list(paired_delta_ci(y, score, b["score"]))
    return rec


SHIPPED = ROOT / "resources" / "models" / "pcam-starter.onnx"


def long_check(out: Path, epochs: int) -> dict[str, Any]:
    """Hard-negative mining over the shipped model's full schedule (``OUT/long``), tested against the
    shipped model (``train_starter.py``'s run: the same recipe, seed and split without mining)."""
    from starter_eval import score_patches

    from engine.fileio import atomic_write_json
    from engine.train.metrics import bootstrap_auc_ci, roc_auc

    (out / "scores").mkdir(parents=True, exist_ok=True)
    y, score = score_patches(SHIPPED, PCAM / "valid")
    np.savez_compressed(out / "scores" / "shipped.npz", y=y, score=score)
    lo, hi = bootstrap_auc_ci(y, score, n_boot=1000, seed=0)
    row = next(r for r in ROWS if r.name == "hard_negatives")
    rec = run_row(Row(row.name, row.label, row.changes, ref="shipped"), epochs, out)
    rec["shipped"] = {"test_auc": roc_auc(y, score), "test_auc_ci95": [lo, hi]}
    atomic_write_json(out / "rows.json", [rec])
    return rec


def seed_rows(seed: int) -> tuple[Row, Row]:
    """The full-schedule pair at ``seed``: the recipe without mining (the reference) and with mining."""
    ref = Row(f"seed{seed}_ref", f"recipe without mining, seed {seed}", {"seed": seed})
    hnm = Row(f"seed{seed}_hard_negatives", f"+ hard-negative mining (alpha {HNM_ALPHA:g}), seed {seed}",
              {"seed": seed, "hard_negatives": HNM_ALPHA}, ref=ref.name)
    return ref, hnm


def long_seed_check(out: Path, epochs: int, seed: int, part: str) -> list[dict[str, Any]] | None:
    """Train the pair of ``seed_rows(seed)`` (``part``: ``ref``, ``mining`` or ``both``, so the two
    trainings can run as two processes) into ``out``; once both are trained, score them on pcam/valid
    (mining paired against the reference) and save ``OUT/rows.json``. Returns the rows, or None while
    the other part is still training."""
    from engine.fileio import atomic_write_json
    from engine.train.runfolder import read_state

    ref, hnm = seed_rows(seed)
    (out / "scores").mkdir(parents=True, exist_ok=True)
    for row in {"ref": (ref,), "mining": (hnm,), "both": (ref, hnm)}[part]:
        print(f"[{time.strftime('%H:%M:%S')}] long seed {seed}: {row.label}, {epochs} epochs", flush=True)
        train_row(row, epochs, out)
    if any((read_state(out / "runs" / r.name) or {}).get("status") != "finished" for r in (ref, hnm)):
        return None
    recs = [run_row(r, epochs, out) for r in (ref, hnm)]
    atomic_write_json(out / "rows.json", recs)
    return recs


def _seed_text(recs: list[dict[str, Any]] | None, seed0: dict[str, Any] | None) -> list[str]:
    if not recs:
        return []
    ref, hnm = recs
    d, (dl, dh) = hnm["test_auc"] - ref["test_auc"], hnm["delta_ci95"]
    seed = hnm["changes"]["seed"]
    ci = lambda r: (  # noqa: E731
        f"{r['test_auc']:.3f} (95% CI {r['test_auc_ci95'][0]:.3f}-{r['test_auc_ci95'][1]:.3f}, best epoch {r['best_epoch']})")
    s0 = ""
    verdict = ("held on a second seed" if dl > 0 else "reversed on the second seed" if dh < 0
               else "did not hold on a second seed")
    if seed0 is not None:
        d0 = seed0["test_auc"] - seed0["shipped"]["test_auc"]
        s0 = f"seed 0 gave {d0:+.4f} (paired CI {seed0['delta_ci95'][0]:+.4f} to {seed0['delta_ci95'][1]:+.4f}) and "
    why = "its paired CI excludes 0" if dl > 0 or dh < 0 else "its paired CI includes 0"
    reading = f"Reading: {s0}seed {seed} gives {d:+.4f} ({why}), so the gain of mining {verdict}."
    return [
        "",
        f"Full schedule, second seed ({hnm['finished'][:10]}): both trained for {hnm['epochs']} epochs with seed {seed} "
        f"(its own grouped 10 % validation split, as the seed drives the split; recipe otherwise as above), "
        f"side by side as two processes: without mining pcam/valid AUC {ci(ref)}, "
        f"with mining (alpha {HNM_ALPHA:g}) {ci(hnm)}: delta {d:+.4f} (paired 95% CI "
        f"{dl:+.4f} to {dh:+.4f}); train {ref['train_s'] / 60:.0f} and {hnm['train_s'] / 60:.0f} min, load average "
        f"{ref['load_avg_1min']:.1f} and {hnm['load_avg_1min']:.1f}. " + reading,
    ]


def _long_text(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    sh, (lo, hi), (dl, dh) = r["shipped"], r["test_auc_ci95"], r["delta_ci95"]
    return [
        "",
        f"Full schedule: hard-negative mining (alpha {HNM_ALPHA:g}) trained for {r['epochs']} epochs, everything else "
        "as the previous starter model's run (`train_starter.py`, same seed and split, no mining): pcam/valid AUC "
        f"{r['test_auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}, best epoch {r['best_epoch']}, validation AUC "
        f"{r['val_auc']:.4f}) vs the previous shipped model's {sh['test_auc']:.3f} (95% CI {sh['test_auc_ci95'][0]:.3f}-"
        f"{sh['test_auc_ci95'][1]:.3f}): delta {r['test_auc'] - sh['test_auc']:+.4f} (paired 95% CI {dl:+.4f} to "
        f"{dh:+.4f}); {r['train_s'] / 60:.0f} min, load average {r['load_avg_1min']:.1f}. Validation AUC by epoch: "
        f"{', '.join(f'{v:.3f}' for v in r['val_auc_by_epoch'])}. (The previous model was trained earlier by the same "
        "trainer; plain AUC, no TTA, both packages scored here. This run is now the shipped starter model, see "
        "'PCam starter model (issue 14)'. One seed each: the run-to-run noise was measured "
        "on the short schedule only, so this is one observation, not an established gain.)",
    ]


def _verdict(by: dict[str, dict[str, Any]]) -> str:
    """Which ingredients moved pcam/valid AUC by more than the measured run-to-run noise."""
    if "seed1" not in by or "baseline" not in by:
        return ""
    noise = abs(by["seed1"]["test_auc"] - by["baseline"]["test_auc"])
    up, down, none = [], [], []
    for row in ROWS:
        r = by.get(row.name)
        if r is None or row.name in ("baseline", "seed1") or "delta_ci95" not in r:
            continue
        d = r["test_auc"] - by[r.get("ref", "baseline")]["test_auc"]
        lo, hi = r["delta_ci95"]
        text = f"{row.label} ({d:+.4f})"
        if abs(d) > noise and (lo > 0 or hi < 0):
            (up if d > 0 else down).append(text)
        else:
            none.append(text)
    parts = [f"Against that noise ({noise:.4f}) and the paired CIs, on this short schedule:"]
    parts.append("better: " + ("; ".join(up) if up else "none") + ".")
    parts.append("worse: " + ("; ".join(down) if down else "none") + ".")
    parts.append("no difference shown: " + ("; ".join(none) if none else "none") + ".")
    return " ".join(parts)


def _noise(by: dict[str, dict[str, Any]]) -> str:
    """The sentence on run-to-run noise, from the ``seed1`` row when it ran."""
    if "seed1" not in by or "baseline" not in by:
        return "One seed per row; the run-to-run noise of a training (another seed) was not measured."
    d = by["seed1"]["test_auc"] - by["baseline"]["test_auc"]
    return (
        f"One seed per row; the baseline trained again with seed 1 (other initialisation, shuffling, augmentation "
        f"and validation split) moves the pcam/valid AUC by {d:+.3f}, so a one-seed difference smaller than about "
        f"{abs(d):.3f} is within run-to-run noise even where its paired CI excludes 0 (that CI covers the test "
        "patches, not the training)."
    )


def render(rows: list[dict[str, Any]], epochs: int, machine: str, threads: int, long: dict[str, Any] | None = None,
           seeds: list[dict[str, Any]] | None = None) -> str:
    """The RESULTS.md section (rows in ``ROWS`` order; rows not run yet are listed as such)."""
    by = {r["name"]: r for r in rows}
    lines = [
        SECTION, "",
        f"`benchmarks/pcam_ablation.py` on {machine}, {threads} torch thread (`OMP_NUM_THREADS=1`, `nice -n 5`), "
        "2 cores shared by up to 8 sessions; the load average (1 min) at the end of each row is in the table. "
        f"Every row: the starter recipe (`benchmarks/train_starter.py`: pcam_resnet_s, AdamW lr 0.002, weight decay "
        f"0.01, 0.5 epoch warmup then cosine decay to 0, batch 64, balanced class weights, all 8 flips / rotations, "
        f"brightness / contrast / saturation 0.1, HED jitter 0.05, seed 0) with ONE change, trained for the same "
        f"**{epochs} epochs** on pcam/train with the same grouped validation split (10 %, 2,000 patches; the best "
        "epoch by validation AUC is kept), then exported and tested on pcam/valid (3,000 patches, never used for "
        "training or selection). This is a short schedule, so the absolute AUCs are below the shipped 12-epoch "
        "model's (plain 0.910, TTA 0.920); read the deltas, not the levels. AUC CIs: 1,000 bootstrap resamples of "
        "the test patches; the delta's CI is a paired bootstrap (both models on the same resampled patches), so a "
        "CI that includes 0 means no difference measurable on 3,000 patches. " + _noise(by) + " Train minutes follow "
        "the machine's load at the time (the load column), so compare them only where the work differs by design "
        "(the 64 px row).",
        "",
        "| row | pcam/valid AUC (95% CI) | delta vs baseline (paired 95% CI) | validation AUC (best epoch) | "
        "validation AUC by epoch | train min (incl. per-epoch validation) | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        r = by.get(row.name)
        if r is None:
            lines.append(f"| {row.label} | not run (out of time in this session) | | | | | |")
            continue
        lo, hi = r["test_auc_ci95"]
        ref = by.get(r.get("ref", "baseline"))
        if ref is None or row.name == "baseline":
            delta = "(reference)" if row.name == "baseline" else "n/a"
        else:
            d = r["test_auc"] - ref["test_auc"]
            dl, dh = r.get("delta_ci95", [float("nan")] * 2)
            delta = f"{d:+.4f} ({dl:+.4f} to {dh:+.4f})"
        val = f"{r['val_auc']:.4f} (epoch {r['best_epoch']})" + (", plain" if r["tta"] else "")
        train_min = "0 (reuses baseline)" if r["base"] else f"{r['train_s'] / 60:.1f}"
        lines.append(
            f"| {row.label} | {r['test_auc']:.3f} ({lo:.3f}-{hi:.3f}) | {delta} | {val} | "
            f"{', '.join(f'{v:.3f}' for v in r['val_auc_by_epoch'])} | {train_min} | {r['load_avg_1min']:.1f} |"
        )
    verdict = _verdict(by)
    return "\n".join(lines + ([""] + [verdict] if verdict else []) + _long_text(long) + _seed_text(seeds, long)) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path.home() / "metascope-runs" / "pcam-ablation"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rows", default=",".join(r.name for r in ROWS), help="comma-separated row names (default all)")
    ap.add_argument("--write-results", action="store_true", help="write the section of benchmarks/RESULTS.md after every row")
    ap.add_argument("--report-only", action="store_true", help="rebuild the section from OUT/rows.json, train nothing")
    ap.add_argument("--long-epochs", type=int, default=0,
                    help="then train hard-negative mining for this many epochs into OUT/long and test it against the "
                         "shipped model (12 = its schedule; 0 = skip)")
    ap.add_argument("--long-seed", type=int, default=None,
                    help="instead: train the recipe without and with mining for --long-epochs epochs at this seed "
                         "into OUT/long-seedN and compare them (paired)")
    ap.add_argument("--long-part", choices=("both", "ref", "mining"), default="both",
                    help="with --long-seed: which of the two trainings this process runs (two processes in parallel)")
    args = ap.parse_args()

    import torch
    from machine import cpu_name, publish, write_results_section

    from engine.fileio import atomic_write_json

    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "scores").mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.json"
    rows: list[dict[str, Any]] = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    machine = f"{cpu_name()}, no GPU, torch {torch.__version__}"
    wanted = [r for r in ROWS if r.name in args.rows.split(",")]
    unknown = set(args.rows.split(",")) - {r.name for r in ROWS}
    if unknown:
        raise SystemExit(f"error: unknown rows: {', '.join(sorted(unknown))}")
    for row in [] if args.report_only else wanted:
        if any(r["name"] == row.name for r in rows):
            continue
        print(f"[{time.strftime('%H:%M:%S')}] row {row.name}: {row.label}", flush=True)
        rec = run_row(row, args.epochs, out)
        rows.append(rec)
        atomic_write_json(rows_path, rows)
        print(json.dumps(rec), flush=True)
        if args.write_results:
            write_results_section(SECTION, render(rows, args.epochs, machine, torch.get_num_threads()))
    long_path = out / "long" / "rows.json"
    if args.long_seed is not None:
        sdir = out / f"long-seed{args.long_seed}"
        if not args.long_epochs and not args.report_only:
            raise SystemExit("error: --long-seed needs --long-epochs")
        todo = not args.report_only and not (sdir / "rows.json").is_file()
        if todo and long_seed_check(sdir, args.long_epochs, args.long_seed, args.long_part) is None:
            return 0  # the other part is still training; its process scores both
    elif args.long_epochs and not args.report_only and not long_path.is_file():
        print(f"[{time.strftime('%H:%M:%S')}] long: hard negatives, {args.long_epochs} epochs", flush=True)
        long_check(out / "long", args.long_epochs)
    long = json.loads(long_path.read_text())[0] if long_path.is_file() else None
    seeds = [json.loads(p.read_text()) for p in sorted(out.glob("long-seed*/rows.json"))]
    text = render(rows, args.epochs, machine, torch.get_num_threads(), long, seeds[0] if seeds else None)
    return publish(SECTION, text, args.write_results)


if __name__ == "__main__":
    raise SystemExit(main())
