"""Train, export and evaluate the PCam starter model shipped in resources/models/.

Reproduces ``resources/models/pcam-starter.onnx`` and its model card from the real PatchCamelyon
patches in ``../shared/data/pcam`` (train: 20,000 JPEG patches; valid: 3,000):

    .venv/bin/python benchmarks/train_starter.py [--arch seed_cnn] [--epochs 4] [--run-dir DIR]

Steps: train on pcam/train (validation split grouped by byte-identical duplicates, so no repeat
straddles it), export the best epoch to ONNX (verified against torch), evaluate the ONNX model on
pcam/valid (with and without 8-fold TTA), write the model card. Re-running with the same run folder
resumes an interrupted training run.
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

from engine.cli.progress import TerminalProgress  # noqa: E402
from engine.data.base import PCAM_MPP  # noqa: E402
from engine.train.config import TrainConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "pcam"
OUT_MODEL = ROOT / "resources" / "models" / "pcam-starter.onnx"
OUT_CARD = ROOT / "resources" / "models" / "pcam-starter.md"


def machine() -> str:
    import torch
    from machine import cpu_name  # benchmarks/machine.py

    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores available (shared), {gpu}, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="seed_cnn")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--resize", type=int, default=64, help="patch side for training (96 = native; 64 is 2.2x cheaper)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--run-dir", default=str(Path.home() / "metascope-runs" / "pcam-starter"))
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--skip-train", action="store_true", help="export/evaluate an existing run only")
    args = ap.parse_args()

    from engine.export import export_onnx
    from engine.train.evaluate import evaluate
    from engine.train.runfolder import CONFIG_NAME, read_state
    from engine.train.trainer import train

    data = Path(args.data)
    run_dir = Path(args.run_dir)
    cfg = TrainConfig(
        data=str(data / "train"), fmt="folders", mpp=PCAM_MPP, resize=None if args.resize == 96 else args.resize,
        arch=args.arch, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, split="grouped", val_fraction=0.1, patience=0, seed=0,
        cache="memory", log_every=20,
    )
    bar = TerminalProgress()
    t0 = time.time()
    if not args.skip_train:
        st = read_state(run_dir) or {}
        resume = (run_dir / CONFIG_NAME).is_file() and st.get("status") != "finished"
        if st.get("status") != "finished":
            train(cfg, run_dir, progress=bar, resume=resume)
    train_s = time.time() - t0
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    finished = [e for e in events if e["event"] == "finished"]
    epochs = [e for e in events if e["event"] == "epoch_ended"]
    exp = export_onnx(run_dir, OUT_MODEL, progress=bar, name="PCam starter (seed CNN)")
    ev_dir = run_dir / "eval-valid"
    # the model package resizes 96 px patches to its input size itself (engine.infer.preprocess)
    plain = evaluate(OUT_MODEL, data / "valid", ev_dir, fmt="folders", mpp=PCAM_MPP, progress=bar, device="cpu").metrics
    tta = evaluate(OUT_MODEL, data / "valid", run_dir / "eval-valid-tta", fmt="folders", mpp=PCAM_MPP, tta=True,
                   progress=bar, device="cpu").metrics
    bar.close()
    summary = {
        "arch": args.arch, "epochs": len(epochs), "train_wall_s": finished[-1].get("duration_s") if finished else train_s,
        "train_patches_per_s": finished[-1].get("train_patches_per_s") if finished else None,
        "best_epoch": finished[-1].get("best_epoch") if finished else None,
        "val_split": epochs[-1] if epochs else None,
        "valid": {k: plain[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "f1", "ci95", "n")},
        "valid_tta": {k: tta[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "f1", "ci95", "n")},
        "export": exp.to_dict(), "machine": machine(),
    }
    (run_dir / "starter-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_card(summary, cfg, exp)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _fmt(m: dict, k: str) -> str:
    lo, hi = m["ci95"][k]
    return f"{m[k]:.3f} (95% CI {lo:.3f}-{hi:.3f})"


def write_card(s: dict, cfg: TrainConfig, exp) -> None:
    v, t = s["valid"], s["valid_tta"]
    hours = (s["train_wall_s"] or 0) / 3600
    card = f"""# PCam starter model (`pcam-starter.onnx`)

A small patch classifier for lymph-node metastasis, shipped so that MetaScope shows a heatmap out
of the box. Reproduce it with `benchmarks/train_starter.py` (needs `../shared/data/pcam`).

| | |
|---|---|
| task | patch classification: `1` = metastatic tissue in the centre 32x32 px of a 96x96 PCam patch (centre 32x32 um) |
| architecture | `{s['arch']}` (3 conv 32/64/128 + dense 256/128/64; {exp.size_bytes / 1e6:.1f} MB ONNX) |
| input | {exp.metadata.input_size}x{exp.metadata.input_size} RGB at {exp.metadata.input_mpp:.3f} um/px (PCam's 96 px patches at {cfg.mpp} um/px, resized), scaled to [0, 1], ImageNet mean/std, NCHW, logits out |
| training data | PatchCamelyon (Veeling et al. 2018, CC0), 20,000 JPEG re-encoded patches (10,000 per class) from `pcam/train`; 10 % held out for model selection, split grouped by byte-identical duplicates |
| training | {s['epochs']} epochs, AdamW lr {cfg.lr}, cosine schedule with warmup, batch {cfg.batch_size}, balanced class weights, flips/90-degree rotations/brightness/contrast/saturation/HED stain jitter; best epoch {s['best_epoch']} by validation AUC |
| time and machine | {hours:.2f} h of training ({s['train_patches_per_s']} patches/s) on {s['machine']} |
| export | ONNX (opset 18, dynamic batch), verified against torch: max abs diff {exp.max_abs_diff:.2g} |

## Test results on `pcam/valid` (3,000 patches, 1,500 per class, never seen in training)

| | AUC | accuracy | sensitivity | specificity | F1 |
|---|---|---|---|---|---|
| plain | {_fmt(v, 'auc')} | {_fmt(v, 'accuracy')} | {_fmt(v, 'sensitivity')} | {_fmt(v, 'specificity')} | {v['f1']:.3f} |
| 8-fold TTA | {_fmt(t, 'auc')} | {_fmt(t, 'accuracy')} | {_fmt(t, 'sensitivity')} | {_fmt(t, 'specificity')} | {t['f1']:.3f} |

Threshold 0.5 on the probability of class `1`; 95 % CIs by 1,000 bootstrap resamples of patches.

## Limitations

- Trained for a short time on two heavily shared CPU cores, at reduced resolution
  ({exp.metadata.input_size} px patches, {exp.metadata.input_mpp:.2f} um/px) to make that affordable: a baseline, not a diagnostic tool. PCam's
  published P4M-DenseNet reaches AUC 0.963 on the original (lossless) test set; a ResNet-18 trained
  for 10-20 epochs on a GPU on the full 262,144-patch PCam training set is the obvious next step
  (`metascope train patches --arch resnet18 --device cuda`).
- Patches are JPEG re-encodings of PCam: slightly lower scores than on PCam's HDF5 files.
- Lymph-node sections of CAMELYON16 (two centres, H&E). Other tissues, stains, scanners or
  magnifications (read slides at ~0.97 um/px) are out of distribution; expect lower accuracy.
- Patch-level scores; the validation split is grouped by duplicates but not by patient (PCam does
  not publish patient ids for these patches), so the held-out score is slightly optimistic; the
  `pcam/valid` numbers above come from separate slides and are the ones to quote.
- Research use only. Not a medical device.
"""
    OUT_CARD.write_text(card, encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
