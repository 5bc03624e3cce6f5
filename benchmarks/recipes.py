"""Both patch-training recipes side by side on PCam: ``pcam-seed`` (the published run) and ``metascope``.

    .venv/bin/python benchmarks/recipes.py [--per-class N] [--resize PX] [--seed-epochs 20] [--metascope-epochs 10]

Each recipe trains on the same patches of ``../shared/data/pcam/train`` (all 20,000, or the first
``--per-class`` of each class in a fixed random order), is exported to ONNX and evaluated on
``pcam/valid`` (3,000 patches from other slides). The results, the exact settings, the time and the
machine go into ``benchmarks/RESULTS.md`` between the ``recipes`` markers (and
``RUN_ROOT/recipes-summary.json``). Re-running resumes unfinished training runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine.cli.progress import TerminalProgress  # noqa: E402
from engine.data.base import PCAM_MPP  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "pcam"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- recipes:start -->", "<!-- recipes:end -->"


def machine() -> str:
    import torch
    from machine import cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores available (shared), {gpu}, torch {torch.__version__}"


def subset(train: Path, per_class: int, out: Path) -> Path:
    """Class folders of symlinks to the first ``per_class`` patches per class (fixed random order)."""
    import numpy as np

    if per_class <= 0:
        return train
    for cls in ("0", "1"):
        files = sorted((train / cls).glob("*.jpg"))
        pick = np.random.default_rng(0).permutation(len(files))[:per_class]
        d = out / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in sorted(pick):
            link = d / files[i].name
            if not link.exists():
                link.symlink_to(files[i])
    return out


def run_recipe(name: str, data: Path, valid: Path, run_root: Path, args: argparse.Namespace, bar: TerminalProgress) -> dict:
    from engine.export import export_onnx
    from engine.train.evaluate import evaluate
    from engine.train.recipes import recipe_config
    from engine.train.runfolder import CONFIG_NAME, read_state
    from engine.train.trainer import train

    epochs = args.seed_epochs if name == "pcam-seed" else args.metascope_epochs
    cfg = recipe_config(name, str(data), fmt="folders", mpp=PCAM_MPP, resize=None if args.resize == 96 else args.resize,
                        epochs=epochs, cache="memory", device=args.device)
    run_dir = run_root / name
    st = read_state(run_dir) or {}
    t0 = time.time()
    if st.get("status") != "finished":
        train(cfg, run_dir, progress=bar, resume=(run_dir / CONFIG_NAME).is_file())
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
    fin = [e for e in events if e["event"] == "finished"][-1]
    model = run_root / f"{name}.onnx"
    export_onnx(run_dir, model, progress=bar, name=f"PCam {name}")
    m = evaluate(model, valid, run_dir / "eval-valid", fmt="folders", mpp=PCAM_MPP, progress=bar, device="cpu").metrics
    return {
        "recipe": name, "config": cfg.to_dict(), "epochs_run": fin.get("epochs_completed"), "status": fin.get("status"),
        "best_epoch": fin.get("best_epoch"),
        "split": json.loads((run_dir / CONFIG_NAME).read_text(encoding="utf-8"))["data"].get("split"), "train_s": fin.get("duration_s"), "wall_s": round(time.time() - t0, 1),
        "train_patches_per_s": fin.get("train_patches_per_s"),
        "val_auc_by_epoch": [round(e["val_auc"], 4) for e in events if e["event"] == "epoch_ended"],
        "valid": {k: m[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "f1", "ci95", "n")},
    }


def _ci(m: dict, k: str) -> str:
    lo, hi = m["ci95"][k]
    return f"{m[k]:.3f} ({lo:.3f}-{hi:.3f})"


def write_results(summary: dict, results: Path) -> None:
    rows = []
    for r in summary["runs"]:
        v, c = r["valid"], r["config"]
        rows.append(
            f"| `{r['recipe']}` | {c['arch']} | {c['optimizer']} lr {c['lr']:g}, batch {c['batch_size']}, "
            f"{'augmented' if any(v_ for v_ in c['augment'].values()) else 'no augmentation'}, "
            f"{'ImageNet mean/std' if c['mean'][0] else 'pixels / 255'} | {r['epochs_run']} of {c['epochs']} "
            f"({r['status']}, best {r['best_epoch']}) | {_ci(v, 'auc')} | {_ci(v, 'accuracy')} | "
            f"{v['sensitivity']:.3f} | {v['specificity']:.3f} | {(r['train_s'] or 0) / 60:.1f} min |"
        )
    a = summary["args"]
    subset_text = (f"{a['per_class']:,} patches per class of pcam/train (fixed random subset, seed 0)"
                   if a["per_class"] > 0 else "all 20,000 patches of pcam/train")
    block = f"""{START}
## Patch-training recipes side by side (issue 17)

`benchmarks/recipes.py --per-class {a['per_class']} --resize {a['resize']} --seed-epochs {a['seed_epochs']} --metascope-epochs {a['metascope_epochs']}`,
run {summary['started']} to {summary['ended']} on {summary['machine']}; 1-minute load average
{summary['load_before']:.1f} before and {summary['load_after']:.1f} after (other helpers' work shared the two cores).
Training data: {subset_text}, {a['resize']} px patches ({PCAM_MPP * 96 / a['resize']:.3f} um/px), each recipe's own
validation split ({'; '.join(f"{r['recipe']}: {r['split']} 80:20" for r in summary['runs'])}).
Scored with the exported ONNX model on pcam/valid (3,000 patches from other slides, never seen); 95 % CIs by
bootstrap; threshold 0.5.

| recipe | network | optimisation | epochs | AUC (95% CI) | accuracy (95% CI) | sensitivity | specificity | training |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Validation AUC by epoch: {'; '.join(f"{r['recipe']}: {', '.join(str(x) for x in r['val_auc_by_epoch'])}" for r in summary['runs'])}.
{summary['note']}
{END}"""
    text = results.read_text(encoding="utf-8") if results.is_file() else ""  # re-read right before writing: others edit this file
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    from engine.fileio import atomic_write_text

    atomic_write_text(results, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=0, help="patches per class from pcam/train (0 = all 10,000)")
    ap.add_argument("--resize", type=int, default=96, help="patch side for training (96 = native)")
    ap.add_argument("--seed-epochs", type=int, default=20)
    ap.add_argument("--metascope-epochs", type=int, default=10)
    ap.add_argument("--recipes", default="pcam-seed,metascope")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--run-root", default=str(Path.home() / "metascope-runs" / "recipes"))
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--results", default=str(RESULTS), help="markdown file to write the table into")
    ap.add_argument("--note", default="", help="a sentence added under the table (what was shortened, and why)")
    args = ap.parse_args()

    data, run_root = Path(args.data), Path(args.run_root)
    run_root.mkdir(parents=True, exist_ok=True)
    train_dir = subset(data / "train", args.per_class, run_root / f"train-{args.per_class}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    bar = TerminalProgress()
    runs = [run_recipe(n, train_dir, data / "valid", run_root, args, bar) for n in args.recipes.split(",")]
    bar.close()
    summary = {
        "args": vars(args), "started": started, "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(), "load_before": load_before, "load_after": os.getloadavg()[0], "runs": runs,
        "note": args.note,
    }
    (run_root / "recipes-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_results(summary, Path(args.results))
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
