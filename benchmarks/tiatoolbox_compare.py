"""MetaScope vs TIAToolbox 2.1.3, side by side on one slide and one model (issue 15).

Run by hand (not part of the tests)::

    .venv/bin/python benchmarks/tiatoolbox_compare.py                  # prints the report
    .venv/bin/python benchmarks/tiatoolbox_compare.py --write-results  # ... and updates RESULTS.md

TIAToolbox pins an older torch than MetaScope, so it gets its own virtual environment
(``--tia-venv``, default ``/work/scratch/tiavenv``; never MetaScope's ``.venv``): torch 2.14.1 +
torchvision 0.29.1, then ``tiatoolbox==2.1.3`` with ``--no-deps`` and the rest of its
requirements (read from its own metadata), all from the package index pip is set up with.

Model: MetaScope's seed CNN (:class:`engine.models.seed_cnn.SeedCNN`, 3 conv 32/64/128 + dense
256/128/64, 96 px at 0.972 um/px, weights from ``torch.manual_seed(0)``: speed does not depend on
them). The same weights go to MetaScope as an ONNX package and to TIAToolbox as a ``state_dict``
loaded into the same class wrapped as a TIAToolbox ``ModelABC`` (same preprocessing,
``(x / 255 - 0.5) / 0.5``).

Slide: a real Aperio slide. ``../shared/data/slides/CMU-1-Small-Region.svs`` (OpenSlide test
data, 2220 x 2967 px at 0.499 um/px) is only ~150 tiles at 0.972 um/px, too few to time; its
pixels are mirrored out to the size of the slide in the issue (16,384 x 12,288 px, the same
0.499 um/px) and written as an Aperio SVS (240 px JPEG tiles, levels at 1/4 and 1/16) into
``--cache`` (outside the repository). Both tools read that file.

Measured in every repeat, interleaved (medians of ``--repeats``):

(the order of the three whole-slide runs rotates from repeat to repeat)

- TIAToolbox ``PatchPredictor.run(patch_mode=False)`` (WSI mode: its tissue mask, patch
  extraction at 0.972 um/px, inference, its output) with 0 and with 2 loader workers, each in a
  fresh process of the TIAToolbox venv; timed around ``run`` only;
- MetaScope full: ``compute_heatmap`` on the slide path (open, tissue detection, tiling, QC,
  inference), the engine of ``metascope heatmap`` without writing the result files;
- MetaScope read-only (a: the pipeline's read pool with a no-op model), inference-only (b:
  onnxruntime on ready batches, the faster of one batch on all cores and one batch per core on
  one-thread sessions as the pipeline runs it) and pipeline (c: ``iter_tile_outputs``) on the slide's tissue
  tiles, with ``open_slide``'s reader (tifffile where identical to OpenSlide) and with OpenSlide,
  as ``benchmarks/heatmap.py`` measures them; ``L = 1 / (1/a + 1/b)``;
- when ``openvino`` is importable (it is not a MetaScope dependency): OpenVINO's CPU runtime on
  the same ``.onnx`` and the same ready batches (f32 precision, no bf16; as many threads as
  onnxruntime), beside b, with its largest probability difference from onnxruntime. OpenVINO was
  tried as a second inference backend and was not faster here, so MetaScope has no such backend.

MetaScope full's fixed per-slide cost (everything but the heatmap stage: model load, open, tissue
detection, tiling, QC) is reported beside it, with the CPU seconds the whole run used.

Targets (issue 15): MetaScope full >= 3.5x TIAToolbox (the better of its two settings), and
c >= 0.9 L with the faster reader's a.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## MetaScope vs TIAToolbox side by side (issue 15)"
TIA_VERSION, TORCH_VERSION, TORCHVISION_VERSION = "2.1.3", "2.14.1", "0.29.1"
REAL_SLIDE = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
SLIDE_W, SLIDE_H, SLIDE_MPP, TILE = 16_384, 12_288, 0.499, 240
MODEL_MPP, INPUT, BATCH = 0.972, 96, 64


# ------------------------------------------------------------------------------------ TIAToolbox venv


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True)


def tia_versions(venv: Path) -> dict[str, str] | None:
    """Versions of tiatoolbox, torch, torchvision in ``venv``, or None when it is not usable."""
    py = venv / "bin" / "python"
    if not py.is_file():
        return None
    code = (
        "import json, tiatoolbox, torch, torchvision; from tiatoolbox.models import PatchPredictor; "
        "print(json.dumps({'tiatoolbox': tiatoolbox.__version__, 'torch': torch.__version__, "
        "'torchvision': torchvision.__version__}))"
    )
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_tia_venv(venv: Path) -> dict[str, str]:
    """Create ``venv`` with TIAToolbox 2.1.3 on torch 2.14.1 unless it already works."""
    have = tia_versions(venv)
    if have is not None and have["tiatoolbox"] == TIA_VERSION:
        return have
    print(f"installing TIAToolbox {TIA_VERSION} into {venv} (once) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _pip(venv, f"torch=={TORCH_VERSION}", f"torchvision=={TORCHVISION_VERSION}")
    _pip(venv, "--no-deps", f"tiatoolbox=={TIA_VERSION}")
    # its own requirements, less the torch pins it would downgrade
    code = (
        "import importlib.metadata as m; "
        "print('\\n'.join(r.split(';')[0] for r in m.requires('tiatoolbox') or [] "
        "if not r.lower().startswith(('torch ', 'torch<', 'torch>', 'torch=', 'torchvision'))))"
    )
    reqs = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(reqs.stdout)
    try:
        _pip(venv, "-r", fh.name)
    finally:
        os.unlink(fh.name)
    have = tia_versions(venv)
    if have is None:
        raise SystemExit(f"error: TIAToolbox does not import in {venv} after installing it")
    return have


# ------------------------------------------------------------------------------------ assets


def build_slide(cache: Path) -> Path:
    """The real CMU-1-Small-Region.svs mirrored out to 16,384 x 12,288 px, as an Aperio SVS."""
    out = cache / f"cmu1-mirrored-{SLIDE_W}x{SLIDE_H}.svs"
    if out.is_file():
        return out
    import tifffile
    from PIL import Image

    from engine.slides.openslide_reader import OpenSlideReader

    print(f"writing {out.name} (once) ...", file=sys.stderr, flush=True)
    with OpenSlideReader(REAL_SLIDE) as r:
        src = r.read_region((0, 0), 0, r.info.dimensions)
    sh, sw = src.shape[:2]

    def mirrored(n: int, size: int) -> np.ndarray:
        i = np.arange(n) % (2 * size)
        return np.where(i < size, i, 2 * size - 1 - i)

    rows, cols = mirrored(SLIDE_H, sh), mirrored(SLIDE_W, sw)
    level0 = src[rows[:, None], cols[None, :]]
    desc0 = (
        f"Aperio Image Library v12.0.15 \n{SLIDE_W}x{SLIDE_H} [0,0 {SLIDE_W}x{SLIDE_H}] ({TILE}x{TILE}) JPEG/RGB Q=80"
        f"|AppMag = 20|MPP = {SLIDE_MPP}|Source = mirrored CMU-1-Small-Region.svs (OpenSlide test data)"
    )
    tmp = out.with_suffix(".tmp")
    with tifffile.TiffWriter(tmp) as tw:
        level = level0
        for i, ds in enumerate((1, 4, 16)):
            if i:
                level = np.asarray(Image.fromarray(level0).reduce(ds))
            desc = desc0 if i == 0 else f"Aperio Image Library v12.0.15 \n{SLIDE_W}x{SLIDE_H} -> {level.shape[1]}x{level.shape[0]}"
            tw.write(level, tile=(TILE, TILE), photometric="rgb", compression="jpeg", compressionargs={"level": 80},
                     description=desc, metadata=None, subfiletype=1 if i else 0)
    tmp.replace(out)
    return out


def export_model(cache: Path) -> tuple[Path, Path]:
    """MetaScope's seed CNN (seeded random weights) as an ONNX package and as a torch state_dict."""
    onnx_path, weights = cache / "seed-cnn-96.onnx", cache / "seed-cnn-96.pt"
    if onnx_path.is_file() and weights.is_file():
        return onnx_path, weights
    import torch

    from engine.modelpkg import ModelMetadata, write_metadata
    from engine.models.seed_cnn import SeedCNN

    torch.manual_seed(0)
    net = SeedCNN(num_classes=2, input_size=INPUT).eval()
    torch.save(net.state_dict(), weights)
    raw = cache / "seed-cnn-96.raw.onnx"
    torch.onnx.export(
        net, (torch.zeros(1, 3, INPUT, INPUT),), str(raw), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    meta = ModelMetadata(
        name="Seed CNN (benchmark, seeded random weights)", task="patch_classification",
        class_names=("normal", "tumour"), input_size=INPUT, input_mpp=MODEL_MPP, mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5), arch="seed_cnn",
    )
    write_metadata(raw, meta, out_path=onnx_path)
    raw.unlink()
    return onnx_path, weights


# ------------------------------------------------------------------------------------ TIAToolbox side


def tia_child(slide: str, weights: str, workers: int, batch: int, save_dir: str) -> None:
    """Runs in the TIAToolbox venv: PatchPredictor in WSI mode; prints one JSON line."""
    import logging

    import torch
    from tiatoolbox.models import IOPatchPredictorConfig, PatchPredictor
    from tiatoolbox.models.models_abc import ModelABC

    logging.disable(logging.WARNING)
    sys.path.insert(0, str(ROOT))
    from engine.models.seed_cnn import SeedCNN  # torch only: importable in the TIAToolbox venv

    class TiaSeedCNN(ModelABC):
        def __init__(self) -> None:
            super().__init__()
            self.net = SeedCNN(num_classes=2, input_size=INPUT)

        def forward(self, imgs: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(imgs), -1)

        @staticmethod
        def preproc(image: np.ndarray) -> np.ndarray:
            return (image.astype(np.float32) / 255.0 - 0.5) / 0.5

        @staticmethod
        def postproc(image: np.ndarray) -> np.ndarray:
            return np.argmax(image, axis=-1)

        @staticmethod
        def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, device: str = "cpu") -> np.ndarray:
            x = batch_data.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()
            model.eval()
            with torch.inference_mode():
                return model(x).cpu().numpy()

    model = TiaSeedCNN()
    model.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    res = [{"units": "mpp", "resolution": MODEL_MPP}]
    io = IOPatchPredictorConfig(input_resolutions=res, output_resolutions=res, patch_input_shape=(INPUT, INPUT),
                                stride_shape=(INPUT, INPUT))
    predictor = PatchPredictor(model=model, batch_size=batch, num_workers=workers, device="cpu", verbose=False)
    t0 = time.perf_counter()
    out = predictor.run([Path(slide)], patch_mode=False, ioconfig=io, save_dir=Path(save_dir), overwrite=True,
                        device="cpu", output_type="zarr", return_probabilities=True)
    seconds = time.perf_counter() - t0
    path = next(iter(out.values())) if isinstance(out, dict) else out
    import zarr

    z = zarr.open(str(path), mode="r")
    probs = np.asarray(z["probabilities"])
    print(json.dumps({"seconds": seconds, "patches": int(probs.shape[0]), "torch_threads": torch.get_num_threads(),
                      "mean_p1": float(probs[:, 1].mean())}))


def run_tia(venv: Path, slide: Path, weights: Path, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=slide.parent) as tmp:
        cmd = [str(venv / "bin" / "python"), __file__, "--tia-child", str(slide), "--weights", str(weights),
               "--workers", str(workers), "--save-dir", str(Path(tmp) / "out")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the TIAToolbox run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["tiles_per_s"] = r["patches"] / r["seconds"]
    return r


# ------------------------------------------------------------------------------------ MetaScope side


def metascope_full(slide: Path, model: Path) -> dict[str, Any]:
    """``compute_heatmap`` on the slide path (the engine of ``metascope heatmap``, no result files)."""
    from engine.infer.pipeline import InferenceConfig, compute_heatmap

    t0, c0 = time.perf_counter(), time.process_time()
    res = compute_heatmap(slide, model, InferenceConfig(device="cpu", batch_size=BATCH))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = int(res.summary["tiles_analysed"])
    p = res.probabilities[:, 1]
    t = res.timing
    return {"seconds": seconds, "tiles": n, "tiles_per_s": n / seconds, "inference_tiles_per_s":
            t["tiles_per_s"], "reader": res.slide["reader"], "mean_p1": float(np.nanmean(p)), "cpu_s": cpu,
            "fixed_s": seconds - t["inference_s"], "tissue_s": t["tissue_s"], "plan_s": t["plan_s"]}


class _OpenVINO:
    """OpenVINO's CPU runtime on a MetaScope ``.onnx`` (f32), with a session's ``run``."""

    def __init__(self, model: Path, threads: int) -> None:
        import io

        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(io.BytesIO(model.read_bytes())), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False})
        self.version = ov.__version__.split("-")[0]
        self._request = compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch})
        return self._request.get_output_tensor(0).data.copy()


def openvino_runner(model: Path, session: Any, batches: list[np.ndarray]) -> tuple[_OpenVINO, float] | None:
    """OpenVINO on ``model`` and its largest probability difference from onnxruntime, or None
    when openvino is not installed."""
    try:
        runner = _OpenVINO(model, session.intra_op_threads)
    except ImportError:
        return None
    from engine.infer.preprocess import to_probabilities

    diff = max(float(np.abs(to_probabilities(runner.run(b), session.metadata)
                            - to_probabilities(session.run(b), session.metadata)).max()) for b in batches[:8])
    return runner, diff


def metascope_parts(slide: Path, model: Path, plan: Any, idx: np.ndarray, batches: list[np.ndarray],
                    sessions: tuple[Any, Any], ov: Any = None) -> dict[str, float]:
    """a (fast reader and OpenSlide), b, c (fast reader) as benchmarks/heatmap.py measures them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from heatmap import _inference_only, _inference_parallel, _NoModel, _run_pipeline  # benchmarks/heatmap.py

    from engine.infer.pipeline import InferenceConfig

    pipe, spin = sessions
    cfg = InferenceConfig(device="cpu", batch_size=BATCH)
    a, _ = _run_pipeline(slide, plan, _NoModel(pipe), idx, cfg, "auto")
    a_os, _ = _run_pipeline(slide, plan, _NoModel(pipe), idx, cfg, "openslide")
    # the fastest way onnxruntime runs the ready batches: one batch on all cores (spinning off / on)
    # or one batch per core on one-thread sessions (as the pipeline runs it on the CPU)
    b_seq = max(_inference_only(pipe, batches)[0], _inference_only(spin, batches)[0])
    b_par = _inference_parallel(pipe, batches)[0]
    b = max(b_seq, b_par)
    c, _ = _run_pipeline(slide, plan, pipe, idx, cfg, "auto")
    c_os, _ = _run_pipeline(slide, plan, pipe, idx, cfg, "openslide")
    lim, lim_os = 1.0 / (1.0 / a + 1.0 / b), 1.0 / (1.0 / a_os + 1.0 / b)
    out = {"a": a, "a_os": a_os, "b": b, "b_seq": b_seq, "b_par": b_par, "c": c, "c_os": c_os, "L": lim, "L_os": lim_os, "c_L": c / lim,
           "c_os_L_os": c_os / lim_os}
    if ov is not None:  # beside b, on the same batches
        out["b_ort"] = _inference_only(pipe, batches)[0]
        out["b_ov"] = _inference_only(ov, batches)[0]
    return out


def _prepare(slide: Path, model: Path) -> tuple[Any, np.ndarray, list[np.ndarray], tuple[Any, Any], Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from heatmap import _ready_batches  # benchmarks/heatmap.py

    from engine.infer.session import load_model
    from engine.slides.open import open_slide
    from engine.slides.tiling import plan_slide

    pipe = load_model(model, device="cpu")
    spin = load_model(model, device="cpu", allow_spinning=True)
    with open_slide(slide) as reader:
        plan = plan_slide(reader, INPUT, MODEL_MPP)
    idx = np.arange(plan.n_tiles, dtype=np.int64)
    batches = _ready_batches(slide, plan, pipe, idx[: min(plan.n_tiles, 1024)], BATCH)
    batches = (batches * (plan.n_tiles // (len(batches) * BATCH) + 1))[: max(1, plan.n_tiles // BATCH)]
    return plan, idx, batches, (pipe, spin), openvino_runner(model, pipe, batches)


# ------------------------------------------------------------------------------------ measurement


def measure(venv: Path, slide: Path, onnx_path: Path, weights: Path, repeats: int) -> dict[str, Any]:
    plan, idx, batches, sessions, ov = _prepare(slide, onnx_path)
    metascope_full(slide, onnx_path)  # warm: page cache, imports
    rows: list[dict[str, Any]] = []
    for r in range(repeats):
        load0 = os.getloadavg()[0]
        row: dict[str, Any] = {}
        # the order rotates with the repeat, so a load that drifts during a repeat favours no one
        runs = [
            ("tia0", lambda: run_tia(venv, slide, weights, 0)),
            ("ms", lambda: metascope_full(slide, onnx_path)),
            ("tia2", lambda: run_tia(venv, slide, weights, 2)),
        ]
        for key, fn in runs[r % 3 :] + runs[: r % 3]:
            row[key] = fn()
        row["parts"] = metascope_parts(slide, onnx_path, plan, idx, batches, sessions, ov[0] if ov else None)
        row["load"] = (load0, os.getloadavg()[0])
        best_tia = max(row["tia0"]["tiles_per_s"], row["tia2"]["tiles_per_s"])
        row["ratio"] = row["ms"]["tiles_per_s"] / best_tia
        rows.append(row)
        p = row["parts"]
        print(f"  repeat {r + 1}/{repeats}: MetaScope {row['ms']['tiles_per_s']:.0f} tiles/s, TIAToolbox "
              f"{row['tia0']['tiles_per_s']:.0f} (0 workers) / {row['tia2']['tiles_per_s']:.0f} (2 workers), "
              f"ratio {row['ratio']:.2f}; a {p['a']:.0f} (OpenSlide {p['a_os']:.0f}) b {p['b']:.0f} c {p['c']:.0f} "
              f"L {p['L']:.0f} c/L {p['c_L']:.2f}; load {row['load'][0]:.2f}-{row['load'][1]:.2f}",
              file=sys.stderr, flush=True)
    extra = {"openvino": {"version": ov[0].version, "max_prob_diff": ov[1]}} if ov else {}
    return {"run": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, "plan_tiles": int(plan.n_tiles), "grid": list(plan.grid_shape), "level": plan.level,
            "read_size": plan.read_size, **extra}


def _med(rows: list[dict[str, Any]], *keys: str) -> float:
    def get(row: dict[str, Any]) -> float:
        v: Any = row
        for k in keys:
            v = v[k]
        return float(v)

    return statistics.median(get(r) for r in rows)


def run_summary(m: dict[str, Any]) -> str:
    """One line on a whole run (for earlier runs listed under the latest one)."""
    rows = m["rows"]
    loads = [v for r in rows for v in r["load"]]
    ratio, c_l = _med(rows, "ratio"), _med(rows, "parts", "c_L")
    tia = max(_med(rows, "tia0", "tiles_per_s"), _med(rows, "tia2", "tiles_per_s"))
    return (
        f"run {m.get('run', '?')}, load {min(loads):.1f}-{max(loads):.1f}: MetaScope {_med(rows, 'ms', 'tiles_per_s'):.0f}, "
        f"TIAToolbox {tia:.0f} tiles/s, **{ratio:.2f}x** ({'met' if ratio >= 3.5 else 'missed'}), a {_med(rows, 'parts', 'a'):.0f} "
        f"(OpenSlide {_med(rows, 'parts', 'a_os'):.0f}), b {_med(rows, 'parts', 'b'):.0f}, c/L **{c_l:.2f}** "
        f"({'met' if c_l >= 0.9 else 'missed'})"
        + (f"; MetaScope full {_med(rows, 'ms', 'fixed_s'):.2f} s per slide outside the heatmap stage"
           if "fixed_s" in rows[0]["ms"] else "")
    )


def _openvino_rows(m: dict[str, Any]) -> list[str]:
    """The OpenVINO inference-only row (runs that measured it)."""
    rows = m["rows"]
    if "openvino" not in m or "b_ov" not in rows[0]["parts"]:
        return []
    ov, ort_ = _med(rows, "parts", "b_ov"), _med(rows, "parts", "b_ort")
    info = m["openvino"]
    return [f"| (b') OpenVINO {info['version']} CPU on the same `.onnx` (f32, same threads) / onnxruntime beside it, "
            f"same ready batches (probabilities within {info['max_prob_diff']:.1e}) | {ov:.0f} / {ort_:.0f} "
            f"({ov / ort_:.2f}x) |"]


def _b_parts(rows: list[dict[str, Any]]) -> str:
    """The two inference-only settings behind b (runs that measured both)."""
    if "b_par" not in rows[0]["parts"]:
        return ""
    return (f"; the faster of one batch on all cores / one batch per core on one-thread sessions, as the pipeline "
            f"runs it: {_med(rows, 'parts', 'b_seq'):.0f} / {_med(rows, 'parts', 'b_par'):.0f}")


def _fixed_cost_lines(rows: list[dict[str, Any]]) -> list[str]:
    """MetaScope full's per-slide cost outside the heatmap stage (runs that recorded it)."""
    if "fixed_s" not in rows[0]["ms"]:
        return []
    return [
        f"MetaScope full, per slide (medians): {_med(rows, 'ms', 'seconds'):.2f} s wall, of which "
        f"{_med(rows, 'ms', 'fixed_s'):.2f} s outside the heatmap stage (model load, open, tissue detection "
        f"{_med(rows, 'ms', 'tissue_s'):.2f} s, tiling + QC {_med(rows, 'ms', 'plan_s'):.2f} s); "
        f"{_med(rows, 'ms', 'cpu_s'):.1f} CPU s in all (2 cores: the wall time is bound by the CPU share the "
        "process gets).",
        "",
    ]


def report_markdown(m: dict[str, Any], versions: dict[str, str], note: str,
                    earlier: list[dict[str, Any]] | None = None) -> str:
    import onnxruntime
    from machine import cpu_name  # benchmarks/machine.py

    from engine.infer.session import available_cores

    rows = m["rows"]
    loads = [v for r in rows for v in r["load"]]
    ms, t0, t2 = _med(rows, "ms", "tiles_per_s"), _med(rows, "tia0", "tiles_per_s"), _med(rows, "tia2", "tiles_per_s")
    ratio = _med(rows, "ratio")
    ms_stage = _med(rows, "ms", "inference_tiles_per_s")
    a, a_os, b = _med(rows, "parts", "a"), _med(rows, "parts", "a_os"), _med(rows, "parts", "b")
    c, c_os = _med(rows, "parts", "c"), _med(rows, "parts", "c_os")
    lim, c_l, lim_os = _med(rows, "parts", "L"), _med(rows, "parts", "c_L"), _med(rows, "parts", "L_os")
    met = lambda ok: "**met**" if ok else "**missed**"  # noqa: E731
    r0 = rows[0]
    lines = [
        SECTION,
        "",
        f"Run {m.get('run', '?')} (UTC, end) with `benchmarks/tiatoolbox_compare.py` on: {cpu_name()}; "
        f"{available_cores()} cores available; Python {platform.python_version()}; MetaScope: onnxruntime "
        f"{onnxruntime.__version__}; TIAToolbox {versions['tiatoolbox']} on torch {versions['torch']} / torchvision "
        f"{versions['torchvision']} (its own venv, {r0['tia0']['torch_threads']} torch threads).",
        f"1-minute load average before / after each repeat: {', '.join(f'{x:.2f}' for x in loads)} (the machine is "
        f"shared with other jobs; both tools ran interleaved in every repeat, so they saw the same load). {note}".rstrip(),
        "",
        f"Slide: the real Aperio slide `CMU-1-Small-Region.svs` (OpenSlide test data, 0.499 um/px) mirrored out to "
        f"{SLIDE_W:,} x {SLIDE_H:,} px and written as an Aperio SVS (240 px JPEG tiles, Q 80, levels 1, 1/4, 1/16). "
        f"Model: MetaScope's seed CNN (`engine/models/seed_cnn.py`, seeded weights) at {INPUT} px / {MODEL_MPP} um/px, "
        f"batch {BATCH}: ONNX package for MetaScope, the same `state_dict` in the same class as a TIAToolbox "
        f"`ModelABC`. MetaScope analyses {r0['ms']['tiles']:,} tissue tiles ({m['grid'][0]} x {m['grid'][1]} grid, "
        f"read at level {m['level']} as {m['read_size']} px); TIAToolbox's own tissue mask gives "
        f"{r0['tia0']['patches']:,} patches. Reader `open_slide` chose: {r0['ms']['reader']}.",
        f"**Medians of {len(rows)} interleaved repeats** (tiles/s, each tool's own tile count / its wall time):",
        "",
        "| measure | tiles/s |",
        "|---|---|",
        f"| TIAToolbox `PatchPredictor.run(patch_mode=False)`, 0 loader workers | {t0:.0f} |",
        f"| TIAToolbox, 2 loader workers | {t2:.0f} |",
        f"| MetaScope full (`compute_heatmap`: open, tissue, tiling, QC, inference) | **{ms:.0f}** |",
        f"| **MetaScope full / best TIAToolbox** (target >= 3.5x) | **{ratio:.2f}x** {met(ratio >= 3.5)} |",
        f"| MetaScope heatmap stage alone (tile reads + inference, `timing.tiles_per_s`; TIAToolbox's figure "
        f"includes its mask and set-up) | {ms_stage:.0f} ({ms_stage / max(t0, t2):.2f}x) |",
        f"| (a) MetaScope read only, `open_slide`'s reader / OpenSlide | {a:.0f} / {a_os:.0f} ({a / a_os:.2f}x) |",
        f"| (b) MetaScope inference only (onnxruntime, ready batches{_b_parts(rows)}) | {b:.0f} |",
        *_openvino_rows(m),
        f"| (c) MetaScope pipeline (`iter_tile_outputs`), `open_slide`'s reader / OpenSlide | {c:.0f} / {c_os:.0f} |",
        f"| L = 1 / (1/a + 1/b), faster reader / OpenSlide | {lim:.0f} / {lim_os:.0f} |",
        f"| **c / L** with the faster reader's a (target >= 0.9) | **{c_l:.2f}** {met(c_l >= 0.9)} |",
        "",
        *_fixed_cost_lines(rows),
        "Per repeat: " + "; ".join(
            f"MetaScope {r['ms']['tiles_per_s']:.0f}, TIA {r['tia0']['tiles_per_s']:.0f} / {r['tia2']['tiles_per_s']:.0f}, "
            f"ratio {r['ratio']:.2f}, a {r['parts']['a']:.0f}, b {r['parts']['b']:.0f}, c {r['parts']['c']:.0f}, "
            f"c/L {r['parts']['c_L']:.2f}" + (f", fixed {r['ms']['fixed_s']:.2f} s" if "fixed_s" in r["ms"] else "")
            for r in rows),
        "",
        f"Mean tumour probability over the slide (same weights, a sanity check that both ran the model): MetaScope "
        f"{r0['ms']['mean_p1']:.4f}, TIAToolbox {r0['tia0']['mean_p1']:.4f}.",
        "",
    ]
    if earlier:
        lines += ["Earlier full runs of the same script (medians of 3 each; the table above is the latest run):", ""]
        lines += [f"- {run_summary(e)}" for e in earlier]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tia-venv", type=Path, default=Path("/work/scratch/tiavenv"))
    ap.add_argument("--cache", type=Path, default=Path("/work/scratch/tiabench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--note", default="", help="a sentence on the run conditions for RESULTS.md")
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from the last run's measurements (--cache/tiatoolbox_compare.json)")
    ap.add_argument("--earlier", type=Path, nargs="*", default=[],
                    help="measurement JSON files of earlier runs to summarise under the latest one")
    ap.add_argument("--tia-child", metavar="SLIDE", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--save-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tia_child:
        tia_child(args.tia_child, args.weights, args.workers, BATCH, args.save_dir)
        return 0
    if not REAL_SLIDE.is_file():
        raise SystemExit(f"error: {REAL_SLIDE} is missing (the real slide in ../shared/data)")
    if ROOT / ".venv" in args.tia_venv.resolve().parents or args.tia_venv.resolve() == (ROOT / ".venv").resolve():
        raise SystemExit("error: --tia-venv must not be MetaScope's own .venv")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    args.cache.mkdir(parents=True, exist_ok=True)
    saved = args.cache / "tiatoolbox_compare.json"
    if args.report_only:
        m = json.loads(saved.read_text())
    else:
        m = {"versions": ensure_tia_venv(args.tia_venv)}
        slide = build_slide(args.cache)
        onnx_path, weights = export_model(args.cache)
        m.update(measure(args.tia_venv, slide, onnx_path, weights, args.repeats))
        saved.write_text(json.dumps(m, indent=1))
    earlier = [json.loads(p.read_text()) for p in args.earlier]
    text = report_markdown(m, m["versions"], args.note, earlier)
    from machine import publish  # benchmarks/machine.py

    return publish(SECTION, text, args.write_results)


if __name__ == "__main__":
    raise SystemExit(main())
