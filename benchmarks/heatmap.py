"""Heatmap pipeline benchmark (issue 2): throughput of reading, inference and the full pipeline,
and peak memory against slide size.

Run by hand (not part of the tests)::

    .venv/bin/python benchmarks/heatmap.py                 # everything, prints a report
    .venv/bin/python benchmarks/heatmap.py --write-results # ... and updates benchmarks/RESULTS.md

Measured in one run, on the same block of tissue tiles of a synthetic 40,000 x 40,000 px slide at
0.5 um/px, with the seed CNN (3 conv 32/64/128 + dense 256/128/64, ~3.4 M parameters, random
weights: speed does not depend on them) at 96 px / 0.972 um/px:

(a) read-only tiles/s: the pipeline's read pool (read, resample, preprocess) with a no-op model;
    also with the per-tile read path (``read_tile`` for every tile) to show what the batch reads
    (:func:`engine.slides.tiling.read_tiles`) save;
(b) inference-only tiles/s: onnxruntime on ready preprocessed batches;
(c) full pipeline tiles/s: :func:`engine.infer.pipeline.iter_tile_outputs`.

On a CPU-only machine reads and inference share the cores, so the limit is
``L = 1 / (1/a + 1/b)``; the target is ``c >= 0.85 L``. The three are measured side by side,
``--repeats`` times, each time with a freshly opened slide (OpenSlide's tile cache empty), and
medians are reported, because other processes share the machine. Besides the backend
:func:`engine.slides.open.open_slide` picks (for this SVS: OpenSlide's view with tifffile +
imagecodecs decoding the levels verified identical, :mod:`engine.slides.fast_reader`), the same
numbers are taken with other backends (``--backends auto,openslide,tifffile``).

Peak RSS: ``metascope heatmap``'s engine path (tissue detection, tiling, pipeline, result files)
on a 100,000 x 100,000 px slide and on a 10,000 x 10,000 px slide, each in its own subprocess,
with the same number of tiles analysed (``--rss-tiles``); target ratio <= 1.3. The large slide has
a sparse tissue layout so it can be generated in minutes.

Slides and the model are generated once into ``--cache`` (default
``/tmp/metascope-bench``), outside the repository. torch is used only to build the seed CNN.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.infer.pipeline import InferenceConfig, iter_tile_outputs  # noqa: E402
from engine.infer.preprocess import Preprocessor  # noqa: E402
from engine.infer.session import ModelSession, available_cores, load_model  # noqa: E402
from engine.slides.synthetic import Ellipse, write_synthetic_slide  # noqa: E402

SECTION = "## Heatmap pipeline (issue 2)"
BIG = 40_000
MPP = 0.5
MODEL_MPP = 0.972
INPUT = 96


# ------------------------------------------------------------------------------------ assets


def seed_cnn_onnx(path: Path) -> Path:
    """Export the classic PCam CNN (random weights) as a MetaScope model package."""
    if path.is_file():
        return path
    import torch
    from torch import nn

    from engine.modelpkg import ModelMetadata, write_metadata

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # N x 32 x 47 x 47
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # N x 64 x 22 x 22
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2),  # N x 128 x 10 x 10
        nn.Flatten(),
        nn.Linear(128 * 10 * 10, 256), nn.ReLU(),
        nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, 2),  # N x 2 logits
    ).eval()
    n_params = sum(p.numel() for p in net.parameters())
    tmp = path.with_suffix(".raw.onnx")
    x = torch.zeros(1, 3, INPUT, INPUT)
    torch.onnx.export(
        net, (x,), str(tmp), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    meta = ModelMetadata(
        name="Seed CNN (benchmark, random weights)", task="patch_classification", class_names=("normal", "tumour"),
        input_size=INPUT, input_mpp=MODEL_MPP, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), arch="pcam-cnn",
        extra={"parameters": n_params},
    )
    write_metadata(tmp, meta, out_path=path)
    tmp.unlink()
    return path


def big_slide(cache: Path) -> Path:
    p = cache / f"bench-{BIG}.svs"
    if not p.is_file():
        print(f"generating {p.name} (once) ...", file=sys.stderr, flush=True)
        write_synthetic_slide(p, BIG, BIG, mpp=MPP, seed=11, with_label=False)
    return p


def sparse_slide(cache: Path, size: int) -> Path:
    """A slide of ``size`` x ``size`` px with the same small tissue layout in the middle."""
    p = cache / f"bench-sparse-{size}.svs"
    if not p.is_file():
        print(f"generating {p.name} (once) ...", file=sys.stderr, flush=True)
        c = size / 2
        tissue = (Ellipse(c - 2200, c, 1800, 2600, 10), Ellipse(c + 2300, c, 1700, 2400, -15))
        tumour = (Ellipse(c - 2000, c - 300, 700, 900, 0),)
        write_synthetic_slide(p, size, size, mpp=MPP, seed=5, tissue_regions=tissue, tumour_regions=tumour,
                              with_label=False)
    return p


# ------------------------------------------------------------------------------------ throughput


class _NoModel:
    """Stands in for a session in the read-only measurement: same preprocessing, no inference."""

    def __init__(self, session: ModelSession) -> None:
        self.metadata = session.metadata

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0], 2), dtype=np.float32)

    def input_buffer(self, n: int) -> None:
        """No pinned device buffer: the pipeline allocates a plain one."""
        return None


def _plan(slide: Path, session: ModelSession) -> tuple[Any, float]:
    from engine.slides.open import open_slide
    from engine.slides.tiling import plan_slide

    t0 = time.perf_counter()
    with open_slide(slide) as reader:
        plan = plan_slide(reader, INPUT, MODEL_MPP)
    return plan, time.perf_counter() - t0


def open_backend(slide: Path, backend: str) -> Any:
    """Open ``slide`` the way ``metascope heatmap`` does (``"auto"``) or with one named backend."""
    if backend == "auto":
        from engine.slides.open import open_slide

        return open_slide(slide)
    if backend == "openslide":
        from engine.slides.openslide_reader import OpenSlideReader

        return OpenSlideReader(slide)
    from engine.slides.tifffile_reader import TiffFileReader

    return TiffFileReader(slide)


def _run_pipeline(slide: Path, plan: Any, model: Any, idx: np.ndarray, cfg: InferenceConfig, backend: str = "auto",
                  per_tile: bool = False) -> tuple[float, float]:
    """Returns (tiles/s, CPU ms per tile of this process)."""
    from engine.slides.tiling import read_tile

    with open_backend(slide, backend) as reader:  # fresh reader: empty tile cache
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for i, _ in iter_tile_outputs(reader, plan, model, batch_size=cfg.batch_size,
                                      read_workers=cfg.resolved_read_workers, indices=idx,
                                      read_tile=read_tile if per_tile else None):
            n += len(i)
        return n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n


def _inference_only(session: ModelSession, batches: list[np.ndarray]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for b in batches:
        session.run(b)
        n += b.shape[0]
    return n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n


def _inference_parallel(session: ModelSession, batches: list[np.ndarray]) -> tuple[float, float]:
    """Inference only the way the pipeline runs it on the CPU: one batch per core at once, each on a
    one-thread copy of the session (:meth:`ModelSession.worker_copy`); as :func:`_inference_only`
    where the session has no such copy."""
    from concurrent.futures import ThreadPoolExecutor

    copy = session.worker_copy()
    if copy is None:
        return _inference_only(session, batches)
    with ThreadPoolExecutor(session.intra_op_threads // copy.intra_op_threads) as pool:
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(out.shape[0] for out in pool.map(copy.run, batches))
        return n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n


def _ready_batches(slide: Path, plan: Any, session: ModelSession, idx: np.ndarray, batch_size: int) -> list[np.ndarray]:
    from engine.slides.open import open_slide
    from engine.slides.tiling import read_tile

    pre = Preprocessor(session.metadata)
    out = []
    with open_slide(slide) as reader:
        for s in range(0, len(idx), batch_size):
            tiles = np.stack([read_tile(reader, plan, plan.level0_xy[i]) for i in idx[s : s + batch_size]])
            out.append(pre(tiles))
    return out


def measure_throughput(slide: Path, model_path: Path, tiles: int, repeats: int, cfg: InferenceConfig,
                       device: str = "cpu", backends: tuple[str, ...] = ("auto",)) -> dict[str, Any]:
    session_pipe = load_model(model_path, device=device)  # no spinning: readers share the cores
    session_spin = load_model(model_path, device=device, allow_spinning=True)
    plan, plan_s = _plan(slide, session_pipe)
    n = min(tiles, plan.n_tiles)
    start = (plan.n_tiles - n) // 2  # a contiguous block from the middle of the tissue
    idx = np.arange(start, start + n, dtype=np.int64)
    # inference-only input: the real preprocessed tiles of (part of) the block, reused
    batches = _ready_batches(slide, plan, session_pipe, idx[: min(n, 1024)], cfg.batch_size)
    batches = (batches * (n // (len(batches) * cfg.batch_size) + 1))[: max(1, n // cfg.batch_size)]
    _run_pipeline(slide, plan, _NoModel(session_pipe), idx[: min(n, 512)], cfg)  # warm the page cache
    _inference_only(session_spin, batches[:4])
    per_backend: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
    loads = [os.getloadavg()[0]]
    for r in range(repeats):
        for name in backends:
            # a, a with per-tile reads, b (both spinning settings) and c back to back
            a, a_cpu = _run_pipeline(slide, plan, _NoModel(session_pipe), idx, cfg, name)
            a_tile, a_tile_cpu = _run_pipeline(slide, plan, _NoModel(session_pipe), idx, cfg, name, per_tile=True)
            b_nospin, b_cpu = _inference_only(session_pipe, batches)
            b_spin, _ = _inference_only(session_spin, batches)
            b_par, _ = _inference_parallel(session_pipe, batches)
            c, c_cpu = _run_pipeline(slide, plan, session_pipe, idx, cfg, name)
            b = max(b_spin, b_nospin, b_par)  # the fastest inference setting makes L (and the target) stricter
            lim = 1.0 / (1.0 / a + 1.0 / b)
            per_backend[name].append({
                "a": a, "a_tile": a_tile, "b": b, "b_nospin": b_nospin, "b_spin": b_spin, "b_par": b_par, "c": c, "L": lim,
                "ratio": c / lim, "a_cpu_ms": a_cpu, "a_tile_cpu_ms": a_tile_cpu, "b_cpu_ms": b_cpu,
                "c_cpu_ms": c_cpu, "cpu_overhead": c_cpu / (a_cpu + b_cpu),
            })
            loads.append(os.getloadavg()[0])
            print(f"  repeat {r + 1}/{repeats} {name:9s}: a {a:6.0f} (per tile {a_tile:4.0f})  b {b:6.0f}  "
                  f"c {c:6.0f}  L {lim:6.0f}  c/L {c / lim:.2f}  load {loads[-1]:.2f}", file=sys.stderr, flush=True)
    rows = per_backend[backends[0]]
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    others = {name: {k: statistics.median(row[k] for row in per_backend[name]) for k in rows[0]}
              for name in backends[1:]}
    return {
        "backend": backends[0],
        "others": others,
        "loads": loads,
        "device": session_pipe.provider,
        "slide_tiles": plan.n_tiles,
        "grid": list(plan.grid_shape),
        "tiles_per_measurement": n,
        "plan_s": plan_s,
        "level": plan.level,
        "read_size": plan.read_size,
        "repeats": rows,
        "median": med,
    }


# ------------------------------------------------------------------------------------ memory


def rss_child(slide: str, model: str, max_tiles: int) -> None:
    """Run the engine path of ``metascope heatmap`` and print peak RSS (in a fresh process)."""
    import tempfile

    from engine.infer.outputs import write_heatmap_outputs
    from engine.infer.pipeline import compute_heatmap
    from engine.slides.open import open_slide

    t0 = time.perf_counter()
    with open_slide(slide) as reader, tempfile.TemporaryDirectory() as tmp:
        result = compute_heatmap(reader, model, InferenceConfig(device="cpu", max_tiles=max_tiles))
        write_heatmap_outputs(result, tmp, reader=reader)
    peak_kib = _peak_rss_kib()
    print(json.dumps({
        "peak_rss_mib": peak_kib / 1024, "tiles": len(result.level0_xy), "grid": list(result.grid.shape),
        "seconds": time.perf_counter() - t0, "dimensions": result.slide["dimensions"],
    }))


def _peak_rss_kib() -> float:
    """Peak resident memory of this process in KiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, because ``ru_maxrss`` survives ``execve`` and would
    report the parent's peak for a freshly spawned child.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass  # no /proc (not Linux): ru_maxrss below
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measure_memory(cache: Path, model: Path, tiles: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in (10_000, 100_000):
        slide = sparse_slide(cache, size)
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(slide), "--model", str(model), "--rss-tiles", str(tiles)],
            capture_output=True, text=True, check=True,
        )
        out[str(size)] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {size} px: {out[str(size)]}", file=sys.stderr, flush=True)
    out["ratio"] = out["100000"]["peak_rss_mib"] / out["10000"]["peak_rss_mib"]
    return out


# ------------------------------------------------------------------------------------ report


def machine() -> str:
    from machine import cpu_name  # benchmarks/machine.py

    cpu = cpu_name()
    import onnxruntime

    return (f"{cpu}; {available_cores()} cores available to the process; Python {platform.python_version()}; "
            f"onnxruntime {onnxruntime.__version__}; numpy {np.__version__}")


BACKEND_LABEL = {
    "auto": "`open_slide`'s choice (tifffile where verified identical to OpenSlide)",
    "openslide": "OpenSlide",
    "tifffile": "tifffile",
}


def report_markdown(tp: dict[str, Any], mem: dict[str, Any] | None, cfg: InferenceConfig, note: str = "") -> str:
    cores = available_cores()
    cols = {tp["backend"]: tp["median"], **tp["others"]}
    names = list(cols)
    loads = tp["loads"]

    def row(label: str, fmt: Any) -> str:
        return f"| {label} | " + " | ".join(fmt(cols[n]) for n in names) + " |"

    lines = [
        SECTION,
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} with `benchmarks/heatmap.py` on: {machine()}.",
        f"1-minute load average during the throughput runs: {min(loads):.2f} to {max(loads):.2f} (sampled "
        f"after every repeat; the benchmark itself keeps about {cores} threads runnable, so ~{cores} means little "
        f"else ran). {note}".rstrip(),
        f"Every number is the **median of {len(tp['repeats'])} side-by-side repeats** (per backend: a, a with "
        "per-tile reads, b, c back to back in each repeat).",
        "",
        f"Slide: synthetic {BIG:,} x {BIG:,} px at {MPP} um/px (pyramidal JPEG TIFF, Aperio flavour, 256 px JPEG "
        f"tiles), {tp['slide_tiles']:,} tissue tiles in a {tp['grid'][0]} x {tp['grid'][1]} grid; seed CNN (3 conv "
        f"32/64/128 + dense 256/128/64, 3.4 M params, random weights) at {INPUT} px / {MODEL_MPP} um/px, read at "
        f"level {tp['level']} as {tp['read_size']} px and resized. Each measurement: the same contiguous block of "
        f"{tp['tiles_per_measurement']:,} tiles, freshly opened slide; batch {cfg.batch_size}, "
        f"{cfg.resolved_read_workers} read threads, onnxruntime {tp['device']} ({cores} intra-op threads).",
        "",
        "| measure (tiles/s, median) | " + " | ".join(BACKEND_LABEL.get(n, n) for n in names) + " |",
        "|---|" + "---|" * len(names),
        row("(a) read only: read + resample + preprocess, read pool, batch reads (`read_tiles`)",
            lambda m: f"{m['a']:.0f}"),
        row("(a') the same with per-tile reads (`read_tile` per tile, the previous read path)",
            lambda m: f"{m['a_tile']:.0f}"),
        row("(b) inference only, onnxruntime on ready batches (best of one batch on all cores with spinning on / off "
            "and one batch per core on one-thread sessions, as the pipeline runs it)",
            lambda m: f"{m['b']:.0f} ({m['b_spin']:.0f} / {m['b_nospin']:.0f} / {m['b_par']:.0f})" if "b_par" in m
            else f"{m['b']:.0f} ({m['b_spin']:.0f} / {m['b_nospin']:.0f})"),
        row("(c) full pipeline (`iter_tile_outputs`)", lambda m: f"**{m['c']:.0f}**"),
        row("L = 1 / (1/a + 1/b)", lambda m: f"{m['L']:.0f}"),
        row("**c / L** (target >= 0.85)", lambda m: f"**{m['ratio']:.2f}**"),
        # a ratio to TIAToolbox needs TIAToolbox run interleaved with MetaScope on this machine
        # (issue 15); dividing by throughputs measured elsewhere is not a measurement
        row("c / TIAToolbox (target >= 3x)", lambda m: "not measured side by side; see issue 15"),
        row("CPU ms per tile, all threads of this process: read (a) / read per tile (a') / inference (b, "
            "spinning off) / pipeline (c)",
            lambda m: f"{m['a_cpu_ms']:.2f} / {m['a_tile_cpu_ms']:.2f} / {m['b_cpu_ms']:.2f} / {m['c_cpu_ms']:.2f}"),
        row(f"c on {cores} otherwise idle cores at the measured CPU cost of c ({cores} x 1000 / c ms)",
            lambda m: f"{cores * 1000 / m['c_cpu_ms']:.0f}"),
        "",
        f"Per repeat, {BACKEND_LABEL.get(names[0], names[0])} (tiles/s): "
        + "; ".join(f"a {r['a']:.0f}, a' {r['a_tile']:.0f}, b {r['b']:.0f}, c {r['c']:.0f}, c/L {r['ratio']:.2f}"
                    for r in tp["repeats"]),
        "",
        f"Tissue detection + tiling of the whole 40k slide: {tp['plan_s']:.1f} s (not part of c).",
        "",
    ]
    if mem is not None:
        s, b = mem["10000"], mem["100000"]
        lines += [
            "Peak RSS of the engine path of `metascope heatmap` (tissue detection, tiling, pipeline, all result "
            "files), each in a fresh subprocess, same tissue layout and the same number of tiles analysed:",
            "",
            "| slide | grid | tiles | peak RSS |",
            "|---|---|---|---|",
            f"| 10,000 x 10,000 px | {s['grid'][0]} x {s['grid'][1]} | {s['tiles']} | {s['peak_rss_mib']:.0f} MiB |",
            f"| 100,000 x 100,000 px | {b['grid'][0]} x {b['grid'][1]} | {b['tiles']} | {b['peak_rss_mib']:.0f} MiB |",
            "",
            f"Ratio 100k / 10k: **{mem['ratio']:.2f}** (target <= 1.3).",
            "",
        ]
    if tp.get("cuda"):
        lines += [f"CUDA provider: {tp['cuda']}", ""]
    else:
        lines += ["CUDA: no GPU on this machine, not measured (`--device cuda` measures b and c with the CUDA "
                  "provider where one is available).", ""]
    return "\n".join(lines)



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/metascope-bench"))
    ap.add_argument("--tiles", type=int, default=3000, help="tiles per throughput measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rss-tiles", type=int, default=2000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--backends", default="auto,openslide",
                    help="comma-separated slide backends to measure: auto (open_slide's choice), openslide, tifffile")
    ap.add_argument("--note", default="", help="a sentence on the run conditions for RESULTS.md")
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--rss-child", metavar="SLIDE", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.model, args.rss_tiles)
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    model = seed_cnn_onnx(args.cache / "seed-cnn.onnx")
    slide = big_slide(args.cache)
    cfg = InferenceConfig()
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not backends or any(b not in BACKEND_LABEL for b in backends):
        ap.error(f"--backends: choose from {', '.join(BACKEND_LABEL)}")
    print("throughput ...", file=sys.stderr, flush=True)
    tp = measure_throughput(slide, model, args.tiles, args.repeats, cfg, device=args.device, backends=backends)
    mem = None
    if not args.skip_memory:
        print("peak memory ...", file=sys.stderr, flush=True)
        mem = measure_memory(args.cache, model, args.rss_tiles)
    text = report_markdown(tp, mem, cfg, args.note)
    from machine import publish  # benchmarks/machine.py

    return publish(SECTION, text, args.write_results)


if __name__ == "__main__":
    raise SystemExit(main())
