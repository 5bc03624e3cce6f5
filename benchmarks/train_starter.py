"""Train, export, calibrate, test and ship the PCam starter model in resources/models/.

Reproduces ``resources/models/pcam-starter.onnx`` and its model card from the real PatchCamelyon
patches in ``../shared/data/pcam`` (train: 20,000 JPEG patches; valid: 3,000, the test set):

    .venv/bin/python benchmarks/train_starter.py [--arch pcam_resnet_s] [--epochs 12] [--hard-negatives 3] [--run-dir DIR]

Steps: train on pcam/train at the native 96 px / 0.972 um/px (10 % validation split grouped by
byte-identical duplicates, so no repeat straddles it; a copy of the checkpoint after every epoch
for SWA); export the best epoch and the SWA average of the last epochs to ONNX (verified against
torch); calibrate each (temperature) and set its operating threshold on the validation split;
pick the candidate with the higher validation AUC; test it and the shipped model on pcam/valid
(plain and 8-fold TTA) and on a tumour-free slide of real negative patches (flagged fraction,
tiles/s); replace the shipped model and card only when the new plain pcam/valid AUC is higher and
it flags at most ``--max-flagged`` of the tumour-free tiles at its operating threshold; write the
issue-14 section of benchmarks/RESULTS.md (benchmarks/starter_report.py). Re-running with the
same run folder resumes an interrupted training run. ``--skip-train`` takes any finished
patch-training run folder and uses the training config stored in it (split, recipe), not the
options above.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine.cli.progress import TerminalProgress  # noqa: E402
from engine.data.base import PCAM_MPP  # noqa: E402
from engine.train.config import AugmentConfig, TrainConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "pcam"
OUT_MODEL = ROOT / "resources" / "models" / "pcam-starter.onnx"
OUT_CARD = ROOT / "resources" / "models" / "pcam-starter.md"


def machine() -> str:
    import torch
    from machine import cpu_name  # benchmarks/machine.py

    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores available (shared), {gpu}, torch {torch.__version__}"


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=str(Path(args.data) / "train"), fmt="folders", mpp=PCAM_MPP, resize=None if args.resize == 96 else args.resize,
        arch=args.arch, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        augment=AugmentConfig(hed=args.hed), split="grouped", val_fraction=0.1, patience=0, seed=0,
        cache="memory", log_every=20, hard_negatives=args.hard_negatives,
    )


def _run_config(run_dir: Path) -> TrainConfig:
    """The config an existing run was trained with (its split and recipe are what gets exported)."""
    from engine.train.runfolder import load_run_config

    return TrainConfig.from_dict(load_run_config(run_dir)["config"])


def _train(cfg: TrainConfig, run_dir: Path, bar: TerminalProgress) -> None:
    from engine.train.runfolder import CONFIG_NAME, read_state
    from engine.train.trainer import train

    st = read_state(run_dir) or {}
    resume = (run_dir / CONFIG_NAME).is_file() and st.get("status") != "finished"
    if st.get("status") != "finished":
        train(cfg, run_dir, progress=bar, resume=resume)


def _candidates(run_dir: Path, swa_k: int, bar: TerminalProgress, rule_target: float, cfg: TrainConfig) -> dict[str, dict]:
    """Export best.pt (and the SWA average) and calibrate each on the validation split."""
    from starter_swa import snapshots, swa_checkpoint

    from engine.export import export_onnx
    from engine.train.calibration import calibrate_package_on_data
    from engine.train.runfolder import BEST_NAME, load_checkpoint
    from engine.train.trainer import _open_dataset, training_split

    sources = {"best": (run_dir / BEST_NAME, None)}
    if swa_k >= 2 and len(snapshots(run_dir)) >= 2:
        info = swa_checkpoint(run_dir, swa_k, run_dir / "swa.pt")
        sources["swa"] = (run_dir / "swa.pt", info)
    ds = _open_dataset(cfg)
    _, val_idx, _ = training_split(cfg, ds)
    out = {}
    for key, (src, info) in sources.items():
        pkg = run_dir / f"package-{key}.onnx"
        exp = export_onnx(src, pkg, progress=bar, name=f"PCam starter ({cfg.arch})")
        cal = calibrate_package_on_data(pkg, dataset=ds, indices=val_idx, rule="specificity", target=rule_target)
        ck = load_checkpoint(src)
        out[key] = {"package": pkg, "export": exp, "calibration": cal, "val_auc": float(ck["metrics"]["val_auc"]),
                    "epoch": int(ck["epoch"]), "swa": info}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="pcam_resnet_s")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--resize", type=int, default=96, help="patch side for training (96 = native; 64 is 2.2x cheaper)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--hed", type=float, default=0.05, help="HED stain jitter strength")
    ap.add_argument("--hard-negatives", type=float, nargs="?", const=3.0, default=0.0, metavar="ALPHA",
                    help="hard-negative mining strength (3 without a value; 0 = off)")
    ap.add_argument("--swa", type=int, default=4, help="also try the average of the last K epoch snapshots (0 = off)")
    ap.add_argument("--specificity", type=float, default=0.97,
                    help="operating threshold: lowest one with this specificity on the validation split")
    ap.add_argument("--max-flagged", type=float, default=0.05,
                    help="ship only if at most this fraction of tumour-free slide tiles is flagged at the threshold")
    ap.add_argument("--run-dir", default=str(Path.home() / "metascope-runs" / "pcam-starter"))
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--train-only", action="store_true", help="train (or resume) and stop before export")
    ap.add_argument("--skip-train", action="store_true", help="export/evaluate an existing run only")
    ap.add_argument("--no-ship", action="store_true", help="evaluate, but never replace the shipped model")
    args = ap.parse_args()

    run_dir = Path(args.run_dir)
    cfg = _run_config(run_dir) if args.skip_train else _config(args)
    bar = TerminalProgress()
    if not args.skip_train:
        snap = _Snapshots(run_dir)
        _train(cfg, run_dir, bar)
        snap.stop()
    if args.train_only:
        bar.close()
        return 0
    from starter_report import compare_and_ship

    cands = _candidates(run_dir, args.swa, bar, args.specificity, cfg)
    bar.close()
    summary = compare_and_ship(run_dir, cands, cfg, args, machine(), ship=False)
    if not args.no_ship:
        _ship(run_dir, cands, cfg, summary, args.max_flagged)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _ship(run_dir: Path, cands: dict[str, dict], cfg: TrainConfig, summary: dict, max_flagged: float) -> None:
    """Replace the shipped model and card when the chosen one beats it on AUC and meets the flagged target."""
    import shutil

    from machine import write_results_section
    from starter_report import OUT_MODEL as model
    from starter_report import SECTION, results_text, write_card

    ch = summary["chosen"]
    better = summary["test"][ch]["plain"]["auc"] > summary["test"]["old"]["plain"]["auc"]
    summary["shipped"] = better and summary["slide"]["new"]["flagged_at_operating"] <= max_flagged
    if summary["shipped"]:
        shutil.copyfile(cands[ch]["package"], model)
        write_card(summary, cfg)
        write_results_section(SECTION, results_text(summary, cfg))
    (run_dir / "starter-summary.json").write_text(json.dumps(summary, indent=2, default=str))


class _Snapshots:
    """Copies ``checkpoint.pt`` to ``snap/ckpt-epochN.pt`` after every epoch (for SWA), in a thread."""

    def __init__(self, run_dir: Path) -> None:
        import threading

        self.run_dir = run_dir
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        import shutil

        events = self.run_dir / "events.jsonl"
        if not events.is_file():
            return
        n = sum(1 for line in events.read_text().splitlines() if '"event": "checkpoint"' in line)
        dst = self.run_dir / "snap" / f"ckpt-epoch{n}.pt"
        if n > 0 and not dst.is_file():
            dst.parent.mkdir(exist_ok=True)
            shutil.copyfile(self.run_dir / "checkpoint.pt", dst.with_suffix(".tmp"))
            dst.with_suffix(".tmp").replace(dst)

    def _loop(self) -> None:
        while not self.done.wait(10.0):
            self._copy()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self._copy()


if __name__ == "__main__":
    raise SystemExit(main())
