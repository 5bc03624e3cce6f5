"""Cohorts on Ray (issue 15): slides per hour of a heatmap cohort, the plain loop vs 1 and 2 Ray workers.

Run by hand (not part of the tests; needs the distributed extra)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/ray_cohort.py                  # prints the report
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/ray_cohort.py --write-results  # ... and RESULTS.md

A cohort of ``--slides`` generated slides (``--size`` px at 0.5 um/px, written once into
``--cache``) is analysed with the benchmark seed CNN (benchmarks/heatmap.py, 96 px at
0.972 um/px), after one warm-up slide, ``--repeats`` times, the configurations interleaved so that the shared machine's
load hits them alike; medians are reported, with the load average (1 min) beside each:

- plain loop, 1 thread: :func:`engine.cohort.tasks.heatmap_slide` for each slide in this process,
  one onnxruntime thread and one tile reader: exactly what one Ray worker does per slide;
- plain loop, all cores: the same loop with the CLI's defaults (every core of the process);
- Ray, 1 worker / 2 workers: a new local cluster (``num_cpus`` 1 or 2), one task per slide with
  1 CPU each (``--ray auto --ray-cpus 1``), through :func:`engine.cohort.ray_runner.run_on_ray`.
  The cohort time starts after ``ray.init`` returned (starting the cluster is reported apart)
  and includes starting the worker processes and loading the model in each.

The per-slide overhead Ray adds = (Ray 1 worker - plain loop 1 thread) / slides.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.heatmap import MPP, seed_cnn_onnx  # noqa: E402
from benchmarks.machine import cpu_name, publish  # noqa: E402

SECTION = "## Cohorts on Ray (issue 15)"
READERS: set[str] = set()  # the slide reader backends the heatmaps record
CONFIGS = ("plain loop, 1 thread", "plain loop, all cores", "Ray, 1 worker", "Ray, 2 workers")


def cohort_slides(cache: Path, n: int, width: int, height: int) -> list[Path]:
    """``n`` generated slides (different seeds), written once."""
    from engine.slides.synthetic import write_synthetic_slide

    out = []
    for i in range(n):
        p = cache / f"cohort-{width}x{height}-{i}.svs"
        if not p.is_file():
            print(f"generating {p.name} (once) ...", file=sys.stderr, flush=True)
            write_synthetic_slide(p, width, height, mpp=MPP, seed=100 + i, with_label=False)
        out.append(p)
    return out


def _job(model: Path, out: Path, threads: int | None) -> Any:
    from engine.cohort.tasks import HeatmapJob
    from engine.infer.pipeline import InferenceConfig

    cfg = InferenceConfig(device="cpu", read_workers=threads or 0)
    return HeatmapJob(str(model), "cpu", cfg, out, skip_existing=True, threads=threads)


def run_plain(slides: list[Path], model: Path, out: Path, threads: int | None) -> float:
    """Seconds for the cohort in this process (model loaded inside, as a CLI run does)."""
    import engine.cohort.tasks as tasks

    tasks._SESSIONS.clear()  # noqa: SLF001 - a fresh process would load the model too
    t0 = time.perf_counter()
    for item in tasks.named_slides([str(s) for s in slides]):
        outcome = tasks.heatmap_slide(_job(model, out, threads), item)
        assert outcome.status == "done", outcome
    return time.perf_counter() - t0


def run_ray(slides: list[Path], model: Path, out: Path, workers: int) -> tuple[float, float]:
    """(seconds to start a local cluster of ``workers`` CPUs, seconds for the cohort on it)."""
    import ray

    from engine.cohort.ray_runner import RaySettings, run_on_ray
    from engine.cohort.tasks import heatmap_slide, named_slides

    t0 = time.perf_counter()
    # the workers import this checkout's engine, as the driver does (not whatever the venv points at)
    env = {"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}}
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, runtime_env=env)
    t1 = time.perf_counter()
    try:
        done: list[str] = []
        items = named_slides([str(s) for s in slides])
        run_on_ray(heatmap_slide, _job(model, out, 1), items, [s.name for s in slides], RaySettings(cpus=1.0),
                   lambda _i, o: done.append(o.status))
        t2 = time.perf_counter()
        assert done == ["done"] * len(slides), done
    finally:
        ray.shutdown()
    return t1 - t0, t2 - t1


def _computed(out: Path) -> tuple[int, float]:
    """Tiles and seconds of heatmap computation (``timing.total_s``) of a cohort's result folders."""
    import json

    tiles, seconds = 0, 0.0
    for folder in out.iterdir():
        meta = json.loads((folder / "heatmap.json").read_text())
        READERS.add(str(meta["slide"].get("reader", "?")))
        tiles += int(meta["summary"]["tiles_analysed"])
        seconds += float(meta["timing"]["total_s"])
    return tiles, seconds


def measure(slides: list[Path], model: Path, scratch: Path, repeats: int) -> dict[str, Any]:
    """Every configuration ``repeats`` times, interleaved."""
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    loads: dict[str, list[float]] = {c: [] for c in CONFIGS}
    compute: dict[str, list[float]] = {c: [] for c in CONFIGS}
    init: list[float] = []
    run_plain(slides[:1], model, scratch / "warm-up", 1)  # imports, page cache: paid by no configuration
    shutil.rmtree(scratch / "warm-up", ignore_errors=True)
    tiles = 0
    for r in range(repeats):
        for c in CONFIGS:
            out = scratch / f"out-{r}-{CONFIGS.index(c)}"
            shutil.rmtree(out, ignore_errors=True)
            load0 = os.getloadavg()[0]
            if c.startswith("plain"):
                t = run_plain(slides, model, out, 1 if "1 thread" in c else None)
            else:
                start, t = run_ray(slides, model, out, 1 if "1 worker" in c else 2)
                init.append(start)
            tiles, computed = _computed(out)
            times[c].append(t)
            compute[c].append(computed)
            loads[c].append((load0 + os.getloadavg()[0]) / 2)  # before and after
            shutil.rmtree(out, ignore_errors=True)
            print(f"repeat {r + 1}: {c}: {t:.1f} s (load {loads[c][-1]:.1f})", file=sys.stderr, flush=True)
    return {"times": times, "compute": compute, "loads": loads, "init": init, "tiles": tiles}


def report(m: dict[str, Any], n: int, size: str, repeats: int) -> str:
    med = {c: statistics.median(v) for c, v in m["times"].items()}
    rows = []
    for c in CONFIGS:
        rows.append(
            f"| {c} | {med[c]:.1f} | {n * 3600 / med[c]:.0f} | {med['plain loop, 1 thread'] / med[c]:.2f}x | "
            f"{', '.join(f'{t:.1f}' for t in m['times'][c])} | {statistics.median(m['compute'][c]):.1f} | "
            f"{statistics.median(m['loads'][c]):.1f} |"
        )
    overhead = (med["Ray, 1 worker"] - med["plain loop, 1 thread"]) / n
    # what is not heatmap computation (writing results, loading the model, starting workers, scheduling)
    outside = {c: statistics.median(t - s for t, s in zip(m["times"][c], m["compute"][c], strict=True))
               for c in ("plain loop, 1 thread", "Ray, 1 worker")}
    framework = (outside["Ray, 1 worker"] - outside["plain loop, 1 thread"]) / n
    scale = med["Ray, 1 worker"] / med["Ray, 2 workers"]
    return "\n".join([
        SECTION,
        "",
        f"`benchmarks/ray_cohort.py`: a {n}-slide heatmap cohort ({size} px generated slides at 0.5 um/px, "
        f"{m['tiles']} tissue tiles in all) with the seed CNN (96 px at 0.972 um/px), medians of {repeats} "
        f"interleaved runs on {cpu_name()} ({os.cpu_count()} cores, shared with other work: the load average "
        "(1 min) is beside each row). Ray tasks declare 1 CPU each and run with 1 onnxruntime thread and "
        f"1 tile reader, like the 1-thread plain loop. Slide reader: {', '.join(sorted(READERS))}.",
        "",
        "| configuration | cohort s | slides/hour | speed vs plain 1 thread | runs (s) | heatmap compute s (sum) | load avg |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- Starting a local Ray cluster (`ray.init`, not in the cohort times): median "
        f"{statistics.median(m['init']):.1f} s.",
        f"- Per-slide overhead Ray adds, wall clock (1 worker vs the 1-thread loop, worker start and model load "
        f"included): {overhead:+.2f} s per slide; the same without the heatmap computation itself "
        f"(cohort time - the slides' `timing.total_s`, which swings with the machine's load): "
        f"{framework:+.2f} s per slide (outside the computation: plain {outside['plain loop, 1 thread']:.1f} s, "
        f"Ray {outside['Ray, 1 worker']:.1f} s per cohort).",
        f"- 2 Ray workers vs 1: {scale:.2f}x (on 2 cores shared with other sessions; "
        f"the 2-core ideal is 2x).",
    ]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/metascope-bench"))
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--size", default="6144x4608", help="slide size WxH in px (default 6144x4608)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.lower().split("x"))
    model = seed_cnn_onnx(args.cache / "seed-cnn.onnx")
    slides = cohort_slides(args.cache, args.slides, w, h)
    scratch = args.cache / "ray-cohort-out"
    m = measure(slides, model, scratch, args.repeats)
    text = report(m, args.slides, args.size, args.repeats)
    return publish(SECTION, text, args.write_results)


if __name__ == "__main__":
    raise SystemExit(main())
