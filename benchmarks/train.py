"""Training and inference throughput of the patch-classifier stack.

1. ``metascope train`` (engine.train.train) vs a bare PyTorch loop over the same model, the same
   decoded patches, the same batch size and the same number of steps, run alternately so both
   see the same machine load. Reported: training patches/s of each and the ratio (target >= 0.9).
2. ONNX Runtime vs torch inference patches/s per architecture (batch 64, eval mode).

    .venv/bin/python benchmarks/train.py [--n 1024] [--size 96] [--repeats 2] [--device cpu]

Uses ../shared/data/pcam/train when present, else synthetic patches. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PCAM = ROOT.parent / "shared" / "data" / "pcam" / "train"


class InMemory:
    """A PatchDataset over decoded patches (both contenders read exactly these arrays)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels.astype(np.int64)
        self.class_names = ("0", "1")
        self.positive_class = 1
        self.ids = [str(i) for i in range(len(labels))]
        self.groups = None
        self.mpp = 0.972
        self.patch_size = images.shape[1:3]
        self.fmt = "memory"

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> np.ndarray:
        return self.images[i]

    def read_many(self, idx: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(idx)]

    def describe(self) -> dict:
        return {"format": "memory", "patches": len(self)}


def load_patches(n: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    if PCAM.is_dir():
        from engine.data import open_dataset

        opts = {} if size == 96 else {"resize": (size, size)}
        ds = open_dataset(PCAM, fmt="folders", mpp=0.972, **opts)
        idx = np.random.default_rng(0).choice(len(ds), n, replace=False)
        return ds.read_many(idx), ds.labels[idx], f"PCam train ({n} patches, {size} px)"
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    imgs = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    return imgs, labels, f"synthetic ({n} patches, {size} px)"


def bare_loop(arch: str, ds: InMemory, train_idx: np.ndarray, batch: int, device: str) -> float:
    """The minimal loop: shuffle, slice, normalise, forward, backward, AdamW step."""
    import torch

    from engine.models import build_model

    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(arch, 2, ds.patch_size[0]).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    images = ds.images[train_idx]
    labels = torch.from_numpy(ds.labels[train_idx])
    order = np.random.default_rng(0).permutation(len(train_idx))
    t0 = time.perf_counter()
    for s in range(0, len(order), batch):
        pos = order[s : s + batch]
        x = torch.from_numpy(images[pos]).to(dev).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean) / std
        loss = torch.nn.functional.cross_entropy(model(x), labels[pos].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return len(order) / (time.perf_counter() - t0)


def metascope_train(arch: str, ds: InMemory, batch: int, device: str, augment: bool) -> float:
    from engine.train import AugmentConfig, TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            data="memory", arch=arch, epochs=1, batch_size=batch, device=device, validate_data=False,
            augment=AugmentConfig() if augment else AugmentConfig.none(), val_fraction=0.2, split="stratified",
            warmup_epochs=0.0, log_every=10,
        )
        res = train(cfg, Path(tmp) / "run", dataset=ds)
        # training-phase throughput of the epoch (validation excluded, as in the bare loop)
        return float(res.history[-1]["train_patches_per_s"])


def inference(arch: str, size: int, batch: int, iters: int) -> tuple[float, float]:
    import onnxruntime as ort
    import torch

    from engine.infer.session import available_cores
    from engine.models import build_model

    model = build_model(arch, 2, size).eval()
    x = torch.rand(batch, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}}, dynamo=False, opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = available_cores()
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        sess.run(None, {"input": xn})
        t0 = time.perf_counter()
        for _ in range(iters):
            sess.run(None, {"input": xn})
        ort_rate = batch * iters / (time.perf_counter() - t0)
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        torch_rate = batch * iters / (time.perf_counter() - t0)
    return torch_rate, ort_rate


def main() -> int:
    ap = argparse.ArgumentParser(description="patch training/inference throughput")
    ap.add_argument("--n", type=int, default=1024, help="patches (80 %% are trained on)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--arch", default="seed_cnn")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--infer-archs", default="seed_cnn,vgg_small,resnet18,resnet34")
    ap.add_argument("--infer-iters", type=int, default=5)
    args = ap.parse_args()
    import torch

    imgs, labels, what = load_patches(args.n, args.size)
    ds = InMemory(imgs, labels)
    from engine.data import split_dataset

    train_idx, _ = split_dataset(ds, 0.2, strategy="stratified", seed=0)
    print(f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores (load {os.getloadavg()[0]:.1f}), "
          f"torch {torch.__version__}, device {args.device}; data: {what}; batch {args.batch_size}\n")
    bare, ms, ms_aug = [], [], []
    for _ in range(args.repeats):  # alternate so both see the same load
        bare.append(bare_loop(args.arch, ds, train_idx, args.batch_size, args.device))
        ms.append(metascope_train(args.arch, ds, args.batch_size, args.device, augment=False))
        ms_aug.append(metascope_train(args.arch, ds, args.batch_size, args.device, augment=True))
    b, m, a = float(np.median(bare)), float(np.median(ms)), float(np.median(ms_aug))
    print(f"| {args.arch} training, {args.size} px | patches/s (median of {args.repeats}) | ratio to bare loop |")
    print("|---|---|---|")
    print(f"| bare PyTorch loop | {b:.1f} | 1.00 |")
    print(f"| metascope train, no augmentation | {m:.1f} | {m / b:.2f} |")
    print(f"| metascope train, default augmentation (flips, rot90, colour, HED) | {a:.1f} | {a / b:.2f} |")
    print(f"\n| inference, batch 64, {args.size} px | torch eval patches/s | ONNX Runtime patches/s | ORT / torch |")
    print("|---|---|---|---|")
    for arch in args.infer_archs.split(","):
        t, o = inference(arch, args.size, args.batch_size, args.infer_iters)
        print(f"| {arch} | {t:.1f} | {o:.1f} | {o / t:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
