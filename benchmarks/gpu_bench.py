"""GPU benchmark and proof of the GPU path, in one run under a hard time budget.

Run by ``benchmarks/gpu_device.sh`` on a (lent, offline) GPU machine; every step runs in its
own process with its own time limit, and the results so far are written after each step, so a
step that hangs or runs out of time still leaves the others' numbers:

- ``env``: GPU, driver, PyTorch, onnxruntime and whether its CUDA execution provider really
  runs (and with which pinned host memory).
- ``tests``: ``pytest -m gpu tests/gpu`` (AMP training step, CUDA heatmap equal to the CPU one,
  I/O binding equal to the plain run, 2-GPU NCCL step where there are two GPUs).
- ``heatmap``: a generated slide of about 20,000 tissue tiles; heatmap tiles/s with the CUDA
  execution provider vs the CPU one on the same slide; inference-only tiles/s (I/O binding vs
  plain ``run`` vs CPU); end-to-end wall time of ``metascope heatmap`` on the whole slide
  (process start to result files; goal: under 30 s).
- ``train_amp``: training patches/s of the starter architecture with AMP off (float32) and on
  (float16 autocast + GradScaler, as the trainer does; bfloat16 for comparison), channels_last.
- ``train_starter``: a short real training run (the trainer, AMP) of the starter architecture on
  ``../shared/data/pcam`` when present, else on generated patches, stopped at its time limit.

    python benchmarks/gpu_bench.py --out DIR [--budget 450]
    python benchmarks/gpu_bench.py --cpu-dry-run --out DIR     # every step, tiny, on the CPU

Writes ``DIR/gpu_results.json``, ``DIR/gpu_results.md`` (the RESULTS.md snippet) and
``DIR/gpu_bench.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

PCAM = ROOT.parent / "shared" / "data" / "pcam"
STARTER = ROOT / "resources" / "models" / "pcam-starter.onnx"
STEPS = ("env", "tests", "heatmap", "train_amp", "train_starter")
#: per-step limits (s) on the GPU; each is also cut to what is left of the budget
LIMITS = {"env": 60, "tests": 110, "heatmap": 150, "train_amp": 75, "train_starter": 200}
SLIDE_MPP = 0.5
MODEL_TILE_L0 = 187  # level-0 px of a 96 px tile at 0.972 um/px on a 0.5 um/px slide


# ------------------------------------------------------------------------------------ helpers


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def _device(dry: bool) -> str:
    return "cpu" if dry else "cuda"


def _model(work: Path) -> Path:
    """The shipped starter model (what users run), else the demo model."""
    if STARTER.is_file():
        return STARTER
    from engine.demo import demo_model

    return demo_model(work / "demo.onnx")


def _sync(torch: Any, dev: Any) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------------ steps


def step_env(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    from machine import cpu_name

    out: dict[str, Any] = {
        "python": platform.python_version(), "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
        "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(), "load_1min": _load(),
    }  # fmt: skip
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_mem_gib=round(p.total_memory / 2**30, 1))
            out["cuda"] = torch.version.cuda
    except ImportError:
        out["torch"] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        out["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out["nvidia_smi"] = None
    from engine.errors import ConfigError
    from engine.infer.session import load_model

    try:
        s = load_model(_model(work), device=_device(args.cpu_dry_run))
        out["session_provider"] = s.provider
        out["io_binding"] = s.io_binding is not None
        out["pinned_host_buffers"] = None
        out["gpu_batch_size"] = s.batch_size_for(64)
        buf = s.input_buffer(2)
        x = np.zeros((2, 3, s.input.size, s.input.size) if s.input.layout == "NCHW" else (2, s.input.size, s.input.size, 3),
                     np.float32) if buf is None else buf  # fmt: skip
        out["smoke_output"] = list(np.asarray(s.run(x)).shape)
        out["pinned_host_buffers"] = s.io_binding.pinned if s.io_binding is not None and buf is not None else None
    except ConfigError as exc:
        out["session_error"] = str(exc)
    return out


def step_tests(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10, args.limit - 10))
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    summary = next(
        (ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "skipped" in ln or "failed" in ln)), ""
    )
    return {"returncode": proc.returncode, "summary": summary.strip("= "), "seconds": round(time.perf_counter() - t0, 1),
            "tail": "\n".join(lines[-25:])}  # fmt: skip


def _slide(work: Path, tiles: int) -> tuple[Path, float, str]:
    """An SVS at 0.5 um/px that is tissue wall to wall, about ``tiles`` model tiles (JPEG where
    imagecodecs can write it, else zlib)."""
    import importlib.util

    from engine.slides.synthetic import Ellipse, write_synthetic_slide

    compression = "jpeg" if importlib.util.find_spec("imagecodecs") else "zlib"

    cols = max(4, int(round((tiles * 1.12) ** 0.5)))
    rows = max(4, -(-tiles // cols))
    w, h = cols * MODEL_TILE_L0, rows * MODEL_TILE_L0
    path = work / f"slide-{w}x{h}-{compression}.svs"
    if path.is_file():
        return path, 0.0, compression
    t0 = time.perf_counter()
    # an ellipse reaching past the corners: every tile is tissue; one tumour in the middle
    tissue = (Ellipse(w / 2, h / 2, 0.75 * w, 0.75 * h, 0.0),)
    tumour = (Ellipse(w * 0.4, h * 0.45, w * 0.12, h * 0.1, 20.0),)
    write_synthetic_slide(path, w, h, mpp=SLIDE_MPP, seed=7, tissue_regions=tissue, tumour_regions=tumour,
                          with_label=False, workers=min(32, os.cpu_count() or 1), compression=compression)  # fmt: skip
    return path, time.perf_counter() - t0, compression


def _inference_only(session: Any, batch: Any, reps: int) -> float:
    """Tiles/s of ``session.run`` on one preprocessed batch (best of 3 rounds after a warm-up)."""
    session.run(batch)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            session.run(batch)
        best = max(best, reps * batch.shape[0] / (time.perf_counter() - t0))
    return round(best, 1)


class _Plain:
    """A session's plain ``run`` (no I/O binding), for the inference-only comparison."""

    def __init__(self, s: Any) -> None:
        self.s = s

    def run(self, batch: Any) -> Any:
        return self.s.session.run([self.s.output_name], {self.s.input_name: batch})[0]


def step_heatmap(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np

    from engine.errors import ConfigError
    from engine.infer.pipeline import InferenceConfig, compute_heatmap, device_batching
    from engine.infer.preprocess import Preprocessor
    from engine.infer.session import load_model

    dry = args.cpu_dry_run
    tiles = args.tiles
    model = _model(work)
    out: dict[str, Any] = {"model": model.name}
    try:
        dev = load_model(model, device=_device(dry))
    except ConfigError as exc:  # onnxruntime without a usable CUDA provider: say so, measure nothing
        out["error"] = str(exc)
        return out
    slide, gen_s, compression = _slide(work, tiles)
    out.update(slide=slide.name, slide_generation_s=round(gen_s, 1), slide_compression=compression)
    cfg = InferenceConfig(device=_device(dry))
    out["batch_size"], out["read_workers"] = device_batching(dev, cfg)
    compute_heatmap(slide, dev, InferenceConfig(device=_device(dry), max_tiles=min(512, tiles)))  # warm-up
    r = compute_heatmap(slide, dev, cfg)
    out["device"] = {"provider": dev.provider, "tiles": r.summary["tiles_analysed"], **r.timing, "load_1min": _load()}
    cpu = load_model(model, device="cpu")
    n_cpu = min(tiles, 300 if dry else 6000)
    rc = compute_heatmap(slide, cpu, InferenceConfig(device="cpu", max_tiles=n_cpu))
    out["cpu_ep"] = {"tiles": rc.summary["tiles_analysed"], **rc.timing, "load_1min": _load()}
    out["speedup_tiles_per_s"] = round(r.timing["tiles_per_s"] / max(rc.timing["tiles_per_s"], 1e-9), 2)
    # the same tiles, CUDA vs CPU probabilities
    pos = {tuple(xy): i for i, xy in enumerate(r.level0_xy.tolist())}
    both = [(pos[tuple(xy)], j) for j, xy in enumerate(rc.level0_xy.tolist()) if tuple(xy) in pos]
    if both:
        a = r.probabilities[[i for i, _ in both]]
        b = rc.probabilities[[j for _, j in both]]
        ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
        out["max_abs_prob_diff_vs_cpu"] = float(np.abs(a[ok] - b[ok]).max()) if ok.any() else None
    bs = out["batch_size"]
    x = Preprocessor(dev.metadata)(np.random.default_rng(0).integers(0, 256, (bs, 96, 96, 3), dtype=np.uint8),
                                   out=dev.input_buffer(bs))  # fmt: skip
    reps = 2 if dry else 20
    out["inference_only_tiles_per_s"] = {
        "device_io_binding": _inference_only(dev, x, reps),
        "device_plain_run": _inference_only(_Plain(dev), np.array(x), reps),
        "cpu_ep": _inference_only(cpu, np.array(x), max(1, reps // 10)),
    }
    out["pinned_host_buffers"] = dev.io_binding.pinned if dev.io_binding is not None else None
    out["end_to_end"] = _cli_heatmap(slide, model, work, _device(dry), args)
    return out


def _cli_heatmap(slide: Path, model: Path, work: Path, device: str, args: argparse.Namespace) -> dict[str, Any]:
    """``metascope heatmap`` on the whole slide in a fresh process: start to result files written."""
    dest = work / "cli-heatmap"
    cmd = [sys.executable, str(ROOT / "main.py"), "heatmap", str(slide), "--model", str(model), "--out", str(dest),
           "--device", device]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10, args.limit // 2))
    wall = time.perf_counter() - t0
    res: dict[str, Any] = {"wall_s": round(wall, 2), "returncode": proc.returncode, "goal_s": 30}
    found = sorted(dest.rglob("heatmap.json"))
    if found:
        data = json.loads(found[0].read_text())
        res["tiles"] = data.get("summary", {}).get("tiles_analysed")
        res["timing"] = data.get("timing")
        res["provider"] = data.get("model", {}).get("provider")
    if proc.returncode:
        res["stderr"] = proc.stderr[-1500:]
    return res


def _starter() -> tuple[str, int]:
    """The shipped starter model's architecture and input size (seed_cnn at 96 px without one)."""
    from engine.models.registry import architecture_names

    arch, size = None, 96
    if STARTER.is_file():
        from engine.modelpkg import read_metadata

        meta = read_metadata(STARTER)
        arch, size = meta.arch, int(meta.input_size)
    return (arch, size) if arch in architecture_names() else ("seed_cnn", 96)


def step_train_amp(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from engine.models import build_model

    dry = args.cpu_dry_run
    dev = torch.device(_device(dry))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    arch, size = _starter()
    batch = 16 if dry else 256
    seconds = 0.5 if dry else 8.0
    g = torch.Generator().manual_seed(0)
    xb = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g).to(dev)
    yb = torch.randint(0, 2, (batch,), generator=g).to(dev)
    out: dict[str, Any] = {"arch": arch, "patch_px": size, "batch_size": batch, "channels_last": dev.type == "cuda"}
    modes = {"fp32 (AMP off)": None, "AMP float16 (trainer)": torch.float16, "AMP bfloat16": torch.bfloat16}
    for name, dtype in modes.items():
        if dry and dtype is torch.float16:
            dtype = torch.bfloat16  # CPU autocast runs bfloat16 only
        torch.manual_seed(0)
        model = build_model(arch, 2, size, weights=None)
        model = model.to(dev, memory_format=torch.channels_last) if dev.type == "cuda" else model.to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16 and dev.type == "cuda")

        def step() -> float:
            x = xb.permute(0, 3, 1, 2).float().div_(255.0)  # noqa: B023
            x = x.contiguous(memory_format=torch.channels_last) if dev.type == "cuda" else x  # noqa: B023
            with torch.autocast(device_type=dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):  # noqa: B023
                logits = model(x)  # noqa: B023
            loss = torch.nn.functional.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)  # noqa: B023
            scaler.scale(loss).backward()  # noqa: B023
            scaler.step(opt)  # noqa: B023
            scaler.update()  # noqa: B023
            return float(loss.detach())

        for _ in range(2 if dry else 15):
            step()
        _sync(torch, dev)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            step()
            n += 1
            if n % 10 == 0:
                _sync(torch, dev)
        _sync(torch, dev)
        dt = time.perf_counter() - t0
        out[name] = {"patches_per_s": round(n * batch / dt, 1), "steps": n, "last_loss": round(step(), 4),
                     "dtype": str(dtype or torch.float32).replace("torch.", "")}  # fmt: skip
        if dev.type == "cuda":
            out[name]["gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
            torch.cuda.reset_peak_memory_stats(dev)
    off = out["fp32 (AMP off)"]["patches_per_s"]
    out["amp_speedup"] = round(out["AMP float16 (trainer)"]["patches_per_s"] / max(off, 1e-9), 2)
    out["load_1min"] = _load()
    return out


def _train_data(work: Path, dry: bool) -> tuple[Path, str]:
    if PCAM.is_dir() and not dry:
        return PCAM / "train", "../shared/data/pcam/train (real PatchCamelyon patches)"
    from tests.fixtures.datasets import make_pcam_h5

    per_class = 100 if dry else 2500  # ~5 ms a patch to generate
    folder = work / f"patches-{per_class}"
    if not any(folder.glob("*_x.h5")):
        make_pcam_h5(folder, per_class=per_class, size=96, seed=3)
    return folder, f"generated toy H&E-like patches, {2 * per_class} (PCam HDF5 layout)"


def step_train_starter(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from engine.errors import Cancelled
    from engine.jobs import CancelToken
    from engine.train import TrainConfig, train
    from engine.train.runfolder import read_events

    dry = args.cpu_dry_run
    t0 = time.perf_counter()
    data, described = _train_data(work, dry)
    prep_s = time.perf_counter() - t0
    arch, size = _starter()
    budget = max(5.0, min(230.0, args.limit - prep_s - 25))  # the "< 4 min", inside this step's limit
    run_dir = work / "train-starter"
    cfg = TrainConfig(data=str(data), mpp=0.972, arch=arch, resize=size if size != 96 else None, epochs=2 if dry else 40, batch_size=32 if dry else 256,
                      lr=1e-3, schedule="cosine", device=_device(dry), log_every=5, seed=0, validate_data=False)  # fmt: skip
    cancel = CancelToken()
    timer = threading.Timer(budget, cancel.cancel)
    timer.start()
    status = "finished"
    t1 = time.perf_counter()
    try:
        train(cfg, run_dir)
    except Cancelled:
        status = f"stopped at its {budget:.0f} s limit"
    finally:
        timer.cancel()
    wall = time.perf_counter() - t1
    events = read_events(run_dir)[0]
    started = next((e for e in events if e["event"] == "run_started"), {})
    epochs = [e for e in events if e["event"] == "epoch_ended"]
    steps = [e for e in events if e["event"] == "step"]
    rates = sorted(e["patches_per_s"] for e in steps[1:]) or [0.0]
    return {
        "arch": arch, "data": described, "data_prep_s": round(prep_s, 1), "status": status, "wall_s": round(wall, 1),
        "amp": started.get("amp"), "device": started.get("device"), "n_train": started.get("n_train"),
        "epochs_done": len(epochs), "median_patches_per_s": rates[len(rates) // 2],
        "last_epoch": {k: epochs[-1].get(k) for k in ("epoch", "val_auc", "val_loss", "train_loss", "train_patches_per_s")} if epochs else None,
        "gpu_mem_mb": steps[-1].get("gpu_mem_mb") if steps else None, "load_1min": _load(),
    }  # fmt: skip


STEP_FUNCS = {"env": step_env, "tests": step_tests, "heatmap": step_heatmap, "train_amp": step_train_amp,
              "train_starter": step_train_starter}  # fmt: skip


# ------------------------------------------------------------------------------------ driver


def _write(out: Path, results: dict[str, Any]) -> None:
    from engine.fileio import atomic_write_json, atomic_write_text

    atomic_write_json(out / "gpu_results.json", results)
    atomic_write_text(out / "gpu_results.md", markdown(results))


def run_all(args: argparse.Namespace) -> int:
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict[str, Any] = {"started": _now(), "budget_s": args.budget, "cpu_dry_run": args.cpu_dry_run, "steps": {}}
    log = open(out / "gpu_bench.log", "a", encoding="utf-8")  # noqa: SIM115
    for name in args.steps.split(","):
        left = args.budget - (time.perf_counter() - t_start)
        limit = int(min(LIMITS[name] if not args.cpu_dry_run else 300, left - 3))
        if limit < 8:
            results["steps"][name] = {"status": "skipped: the time budget is spent"}
            _write(out, results)
            continue
        res_file = work / f"step-{name}.json"
        res_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "--step",
            name,
            "--limit",
            str(limit),
            "--work",
            str(work),
            "--tiles",
            str(args.tiles),
        ]
        if args.cpu_dry_run:
            cmd.append("--cpu-dry-run")
        print(f"[{_now()}] {name} (limit {limit} s)", flush=True)
        log.write(f"\n===== {name} (limit {limit} s) {_now()}\n")
        log.flush()
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode}; see gpu_bench.log)"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit} s"
        step = json.loads(res_file.read_text()) if res_file.is_file() else {}
        step["status"] = status
        step["step_s"] = round(time.perf_counter() - t0, 1)
        results["steps"][name] = step
        results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        _write(out, results)
        print(f"[{_now()}] {name}: {status} in {step['step_s']} s", flush=True)
    log.close()
    results["finished"] = _now()
    _write(out, results)
    print((out / "gpu_results.md").read_text())
    return 0


def run_step(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = STEP_FUNCS[args.step](args, work)
    from engine.fileio import atomic_write_json

    atomic_write_json(work / f"step-{args.step}.json", json.loads(json.dumps(res, default=str)))
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The RESULTS.md snippet of one run."""
    s = r.get("steps", {})
    env, hm, amp, st, te = (s.get(k, {}) for k in ("env", "heatmap", "train_amp", "train_starter", "tests"))
    gpu = env.get("gpu") or env.get("nvidia_smi") or "no GPU"
    head = "CPU dry run (tiny sizes: proves the script, not GPU numbers)" if r.get("cpu_dry_run") else "GPU run"
    lines = [f"{head}, {r.get('started')}: {gpu}; {env.get('cpu')}, {env.get('cores')} cores; torch {env.get('torch')}, "
             f"onnxruntime {env.get('onnxruntime')} ({env.get('session_provider')}, I/O binding {env.get('io_binding')}, "
             f"pinned host buffers: {env.get('pinned_host_buffers')}); load {env.get('load_1min')}.", ""]  # fmt: skip
    lines += ["| measurement | value |", "| --- | --- |"]

    def row(label: str, value: Any) -> None:
        lines.append(f"| {label} | {value if value not in (None, {}) else 'not measured'} |")

    row("gpu tests (`pytest -m gpu tests/gpu`)", f"{te.get('summary')} ({te.get('status')})" if te else None)
    if hm:
        d, c = hm.get("device", {}), hm.get("cpu_ep", {})
        row(f"heatmap tiles/s, {d.get('provider')} ({d.get('tiles')} tiles, batch {hm.get('batch_size')}, "
            f"{hm.get('read_workers')} reader threads)", d.get("tiles_per_s"))  # fmt: skip
        row(f"heatmap tiles/s, CPUExecutionProvider ({c.get('tiles')} tiles, same slide)", c.get("tiles_per_s"))
        row("speed-up, tiles/s", hm.get("speedup_tiles_per_s"))
        io = hm.get("inference_only_tiles_per_s", {})
        row(
            "inference only tiles/s: I/O binding / plain run / CPU EP",
            f"{io.get('device_io_binding')} / {io.get('device_plain_run')} / {io.get('cpu_ep')}" if io else None,
        )
        e2e = hm.get("end_to_end", {})
        goal = "met" if e2e.get("wall_s") and e2e.get("returncode") == 0 and e2e["wall_s"] < 30 else "missed"
        row(
            f"end to end, `metascope heatmap` on {e2e.get('tiles')} tiles (goal < 30 s)",
            f"{e2e.get('wall_s')} s ({goal})" if e2e else None,
        )
        row("largest probability difference, CUDA vs CPU EP, same tiles", hm.get("max_abs_prob_diff_vs_cpu"))
        row("heatmap step", f"{hm.get('status')} {hm.get('error', '')}".strip())
    if amp:
        for mode in ("fp32 (AMP off)", "AMP float16 (trainer)", "AMP bfloat16"):
            m = amp.get(mode, {})
            label = f"{mode} [{m.get('dtype')}]" if m.get("dtype") and m.get("dtype") not in mode else mode
            row(f"training patches/s, {amp.get('arch')} at {amp.get('patch_px')} px, batch {amp.get('batch_size')}, {label}",
                m.get("patches_per_s"))  # fmt: skip
        row("AMP speed-up (float16 vs float32)", amp.get("amp_speedup"))
    if st:
        row(f"short training, {st.get('arch')} on {st.get('data')}",
            f"{st.get('epochs_done')} epochs in {st.get('wall_s')} s ({st.get('status')}), median "
            f"{st.get('median_patches_per_s')} patches/s, val AUC {(st.get('last_epoch') or {}).get('val_auc')} "
            f"(toy data: shows the run works, not model quality)")  # fmt: skip
    lines.append(f"| time used of the {r.get('budget_s')} s budget | {r.get('elapsed_s')} s |")
    return "\n".join(lines) + "\n"


SECTION = "## GPU path (issue 15): heatmap tiles/s, training patches/s with and without AMP, 20,000-tile slide"
HOW_TO = """How to run it where a GPU is lent (the H200 machine is offline; its image has a CUDA PyTorch but
no onnxruntime with CUDA, no OpenSlide, no imagecodecs):

1. Here: `.venv/bin/python benchmarks/gpu_pack.py` -> `.gpuwheels/part-00`, `part-01` (git-ignored;
   onnxruntime-gpu 1.31.1 for CUDA 13 with only its sm_90 GPU code, openslide, imagecodecs; ~95 MiB,
   too much for one call's 64 MiB).
2. Device call 1: command `bash benchmarks/gpu_device.sh --stash`, carry `[".gpuwheels/part-00"]`.
3. At once (the machine stays warm for 30 s), device call 2: command `bash benchmarks/gpu_device.sh`,
   carry `[".gpuwheels/part-01"]`, timeout_s 540. It builds a virtual environment on the machine's
   CUDA PyTorch, installs MetaScope (editable) and the carried wheels, runs the steps under a
   470 s budget with a limit per step, and leaves `gpu_results.json`, `gpu_results.md`,
   `gpu_bench.log` and `setup.log` in `$OUT`.
4. Here: `.venv/bin/python benchmarks/gpu_bench.py --write-results <files_at>/gpu_results.json`.

On a GPU workstation with internet: `pip install -e '.[gpu]'` plus a CUDA build of PyTorch, then
`PYTHON=.venv/bin/python bash benchmarks/gpu_device.sh`. `--cpu-dry-run` runs every step tiny on
the CPU (what this section shows until a GPU run replaces it)."""


def write_results(path: Path) -> None:
    """Put a run's results (``gpu_results.json``) into benchmarks/RESULTS.md."""
    from machine import write_results_section

    r = json.loads(Path(path).read_text())
    if r.get("cpu_dry_run"):
        intro = ("**GPU numbers: not measured yet** -- no GPU was lent to the session that built this path "
                 f"({r.get('started', '')[:10]}). The table is the CPU dry run of the same script (every step, "
                 "tiny sizes, shared 2-core machine): it proves the script end to end, not GPU speed.")  # fmt: skip
    else:
        intro = "Measured with `benchmarks/gpu_device.sh` (one run, steps in this order, each in its own process)."
    write_results_section(SECTION, f"{SECTION}\n\n{intro}\n\n{markdown(r)}\n{HOW_TO}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--write-results", metavar="JSON", help="put a gpu_results.json into benchmarks/RESULTS.md and exit"
    )
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/metascope-gpu-out")
    ap.add_argument("--work", default="/tmp/metascope-gpu-work", help="scratch folder (slide, patches, runs)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--tiles", type=int, default=20_000, help="tiles of the generated slide")
    ap.add_argument("--cpu-dry-run", action="store_true", help="every step, tiny, on the CPU (proves the script)")
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=120, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_results:
        write_results(Path(args.write_results))
        return 0
    if args.cpu_dry_run and args.tiles == 20_000:
        args.tiles = 300
    unknown = set(args.steps.split(",")) - set(STEPS)
    if unknown:
        print(f"error: unknown step(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    return run_step(args) if args.step else run_all(args)


if __name__ == "__main__":
    raise SystemExit(main())
