"""CPU training and inference speed of candidate starter architectures at 96 px (issue 14).

How the starter model's architecture was sized: forward + backward + AdamW step on batches of 64
random 96x96 patches, and batched inference (256 patches), on ONE torch thread, side by side in
one run. Writes the "PCam starter architectures: CPU speed" section of benchmarks/RESULTS.md::

    .venv/bin/python benchmarks/starter_arch_speed.py [--write-results]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name, publish  # noqa: E402

SECTION = "## PCam starter architectures: CPU speed (issue 14)"
# (name, registry arch, input side): the old starter at its 64 px and the candidates at 96 px
CANDIDATES = [
    ("seed_cnn 64 px (old starter)", "seed_cnn", 64),
    ("pcam_resnet_s 96 px", "pcam_resnet_s", 96),
    ("pcam_resnet_m 96 px", "pcam_resnet_m", 96),
    ("vgg_small 96 px", "vgg_small", 96),
]


def measure(arch: str, size: int, steps: int = 6) -> dict[str, float]:
    import statistics

    import torch

    from engine.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(arch, 2, size)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.rand(64, 3, size, size), torch.randint(0, 2, (64,))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up the kernels
            times.append(time.perf_counter() - t0)
    model.eval()
    xi = torch.rand(256, 3, size, size)
    with torch.no_grad():
        model(xi[:16])
        t0 = time.perf_counter()
        model(xi)
        ti = time.perf_counter() - t0
    return {"params": sum(p.numel() for p in model.parameters()), "train": 64 / statistics.median(times), "infer": 256 / ti}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for name, arch, size in CANDIDATES:
        m = measure(arch, size)
        rows.append(f"| {name} | {m['params'] / 1e6:.2f} M | {m['train']:.0f} | {m['infer']:.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        SECTION, "",
        f"`benchmarks/starter_arch_speed.py`: one torch thread on {cpu_name()}, load average "
        f"{os.getloadavg()[0]:.1f} (2 cores shared by up to 8 sessions, so absolute numbers are noisy; the "
        "columns are measured side by side in one run). Training = forward + backward + AdamW step on batches "
        "of 64 (median of 6 steps, augmentation not included); inference = one batch of 256.",
        "",
        "| architecture | parameters | train patches/s | inference patches/s |",
        "|---|---|---|---|",
        *rows, "",
        "The starter model uses `pcam_resnet_s`: full 96 px resolution at about the training cost of the old "
        "64 px seed CNN. No AUC pilots per architecture were run (not affordable on this CPU budget).",
    ]) + "\n"
    return publish(SECTION, text, args.write_results)


if __name__ == "__main__":
    raise SystemExit(main())
