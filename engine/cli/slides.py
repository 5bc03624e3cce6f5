"""``metascope info``, ``metascope heatmap`` and ``metascope selftest``.

Heavy modules (onnxruntime, OpenSlide, matplotlib) are imported inside the handlers, so building
the parser stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import add_device_option
from engine.cli.progress import TerminalProgress
from engine.cli.qc import add_qc_options, qc_config
from engine.cli.ray_options import add_ray_options

# The self-test passes when the demo heatmap separates tumour from non-tumour tiles this well.
# A plumbing check (slide reading, tiling, inference, result files), not a measure of model
# quality: the demo model is built from the demo slide's own stain vectors.
SELFTEST_MIN_AUC = 0.9


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``info``, ``heatmap`` and ``selftest``."""
    info = sub.add_parser(
        "info",
        help="describe a slide: size, levels, resolution, vendor",
        description="Describe a whole-slide image (or a plain image). Label and macro images are listed, never shown.",
    )
    info.add_argument("slide", metavar="SLIDE", help="slide file (SVS, NDPI, MRXS, SCN, BIF, TIFF, DICOM, PNG, JPEG)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument(
        "--slide-mpp", "--mpp", dest="slide_mpp", type=float, default=None,
        help="the slide's microns per pixel to assume (overrides the file)",
    )
    info.set_defaults(handler=_info)

    hm = sub.add_parser(
        "heatmap",
        help="compute metastasis heatmaps of slides with an ONNX model",
        description=(
            "Tile each slide at the model's resolution, run the model on the tissue tiles and write "
            "DIR/<slide name>/: heatmap.npy, heatmap.json, overlay.png, tiles.csv, tiles.geojson. "
            "A slide that fails is reported and the others continue (exit status 0: all done, 2: a slide "
            "failed with bad input, 1: a slide failed unexpectedly)."
        ),
    )
    hm.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
    hm.add_argument("--model", required=True, metavar="MODEL", help="MetaScope model package (.onnx)")
    hm.add_argument("--out", required=True, metavar="DIR", help="output folder (one sub-folder per slide)")
    add_device_option(hm)
    hm.add_argument(
        "--slide-mpp", "--mpp", dest="slide_mpp", type=float, default=None,
        help="the slide's microns per pixel, for slides that do not record one (the analysis resolution is the model's)",
    )
    hm.add_argument("--batch-size", type=int, default=64, help="tiles per inference batch (default 64)")
    hm.add_argument(
        "--threshold", type=float, default=None,
        help="probability counted as positive and seeding lesions (default: the model's operating threshold, else 0.5)",
    )
    hm.add_argument("--workers", type=int, default=0, help="tile-reading threads (default 0: one per core, 2-8)")
    hm.add_argument("--stride", type=float, default=1.0, help="tile step as a fraction of the tile (default 1; 0.5 = overlap)")
    hm.add_argument(
        "--min-tissue", type=float, default=0.25, help="minimum tissue fraction of an analysed tile (default 0.25)"
    )
    add_qc_options(hm)
    hm.add_argument(
        "--roi", metavar="GEOJSON",
        help="analyse only inside these annotations (QuPath GeoJSON, level-0 px); a folder: <slide name>.geojson per slide",
    )
    hm.add_argument(
        "--skip-existing", action="store_true",
        help="leave out slides whose result folder was made with the same model and settings "
        "(an interrupted batch resumes)",
    )
    hm.add_argument(
        "--cache", action="store_true",
        help="reuse heatmaps the app (or an earlier --cache run) computed with the same slide, model and "
        "settings, and store new ones in the app's heatmap cache",
    )
    add_ray_options(hm)
    hm.set_defaults(handler=_heatmap)

    st = sub.add_parser(
        "selftest",
        help="check the installation: demo slide + demo model -> heatmap",
        description=(
            "Generate (once) the synthetic demo slide and demo model, compute the heatmap, write and reload "
            "the result files, and check that the heatmap is high inside the known tumour and low outside."
        ),
    )
    add_device_option(st)
    st.set_defaults(handler=_selftest)

    from engine.cli.qc import register as register_qc

    register_qc(sub, groups)  # metascope qc: slide quality control


# ------------------------------------------------------------------------------------ info


def _info(args: argparse.Namespace) -> int:
    from engine.slides.open import open_slide

    with open_slide(args.slide, mpp=args.slide_mpp) as reader:
        info = reader.info
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    w, h = info.dimensions
    if info.mpp is not None:
        source = "given with --mpp" if info.mpp_from_user else "from the file"
        mpp = f"{info.mpp[0]:.4g} x {info.mpp[1]:.4g} um/px ({source})"
    else:
        mpp = "not recorded (give --mpp to analyse this slide)"
    print(info.path or args.slide)
    print(f"  vendor: {info.vendor}   size: {w} x {h} px   levels: {info.level_count}")
    print(f"  resolution: {mpp}")
    if info.objective_power:
        print(f"  objective: {info.objective_power:g}x")
    if info.mpp is not None:
        mm_w, mm_h = w * info.mpp[0] / 1000, h * info.mpp[1] / 1000
        print(f"  physical size: {mm_w:.2f} x {mm_h:.2f} mm")
    for i, ((lw, lh), ds) in enumerate(zip(info.level_dimensions, info.level_downsamples, strict=True)):
        print(f"  level {i}: {lw} x {lh} px (downsample {ds:g})")
    if info.associated_images:
        print(f"  associated images: {', '.join(info.associated_images)} (not shown; may carry patient data)")
    return 0


# ------------------------------------------------------------------------------------ heatmap


def _heatmap(args: argparse.Namespace) -> int:
    import dataclasses

    from engine.cli.ray_options import ray_settings
    from engine.cohort.tasks import HeatmapJob, model_session, named_slides
    from engine.fileio import ensure_writable_dir
    from engine.infer.lesions import operating_threshold
    from engine.infer.pipeline import InferenceConfig
    from engine.slides.open import validate_mpp

    ray = ray_settings(args)  # bad --ray values or a missing Ray fail first
    roi = _roi_source(args.roi)
    out = ensure_writable_dir(args.out)  # before any work: an unwritable folder fails at once
    session = model_session(args.model, args.device)
    cfg = InferenceConfig(
        batch_size=args.batch_size,
        read_workers=args.workers,
        device=args.device,
        min_tissue_fraction=args.min_tissue,
        stride_factor=args.stride,
        threshold=operating_threshold(session.metadata, args.threshold),
        slide_mpp=validate_mpp(args.slide_mpp),
        **qc_config(args),
    )
    err = sys.stderr
    print(f"model: {session.name} (sha256 {session.sha256[:12]}) on {session.device}", file=err)
    job = HeatmapJob(str(Path(args.model).absolute()), args.device, cfg, out, roi, args.skip_existing, args.cache)
    counts = {"done": 0, "skipped": 0, "bad input": 0, "unexpected": 0}
    bar = TerminalProgress(err)

    def on_outcome(_i: int, outcome: Any) -> None:
        bar.close()  # the bar's line ends before a slide's lines
        for line in outcome.lines:
            print(line)
        for note in outcome.notes:
            print(note, file=err)
        counts[outcome.status] += 1

    if ray is None:
        _heatmap_loop(job, args.slides, on_outcome)
    else:  # one Ray task per slide; a rerun resumes, so finished slides are skipped
        from engine.cohort.ray_runner import run_on_ray
        from engine.cohort.tasks import heatmap_slide

        cfg = dataclasses.replace(cfg, read_workers=args.workers or ray.threads)
        # paths absolute: a worker's working directory is not this one
        job = dataclasses.replace(job, cfg=cfg, out=out.absolute(), skip_existing=True, threads=ray.threads)
        items = named_slides([str(Path(s).absolute()) for s in args.slides])
        try:
            run_on_ray(heatmap_slide, job, items, list(args.slides), ray, on_outcome, bar)
        finally:
            bar.close()
    failed = counts["bad input"] + counts["unexpected"]
    if len(args.slides) > 1 or failed:
        parts = [f"{n} {k}" for k, n in counts.items() if n]
        print(f"{len(args.slides)} slide(s): {', '.join(parts)}", file=err)
    if counts["unexpected"]:
        return 1
    return 2 if counts["bad input"] else 0


def _heatmap_loop(job: Any, slides: list[str], on_outcome: Any) -> None:
    """The slides of a heatmap batch one after the other, each with its own progress bar."""
    from engine.cohort.tasks import heatmap_slide, named_slides, unexpected_outcome
    from engine.errors import Cancelled

    for i, item in enumerate(named_slides(slides)):
        progress = TerminalProgress(sys.stderr)
        try:
            outcome = heatmap_slide(job, item, progress)
        except (Cancelled, KeyboardInterrupt):
            progress.close()
            raise
        except Exception as exc:  # noqa: BLE001 - one slide's crash never stops the batch
            outcome = unexpected_outcome(item.slide, f"{type(exc).__name__}: {exc}")
        progress.close()
        on_outcome(i, outcome)


def _roi_source(roi: str | None) -> Path | None:
    """The ``--roi`` file (checked now) or folder of ``<slide stem>.geojson`` files."""
    if roi is None:
        return None
    from engine.data.geojson import read_region_rings
    from engine.errors import DatasetError

    p = Path(roi).expanduser().resolve()
    if p.is_dir():
        return p
    if not p.is_file():
        raise DatasetError(f"region of interest {roi} not found")
    read_region_rings(p)  # an unreadable ROI fails before any slide is analysed
    return p


# ------------------------------------------------------------------------------------ selftest


def _selftest(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from engine.demo import demo_truth, ensure_demo_assets, score_against_truth
    from engine.infer.outputs import load_heatmap_result, write_heatmap_outputs
    from engine.infer.pipeline import InferenceConfig, compute_heatmap
    from engine.infer.session import load_model
    from engine.slides.open import open_slide

    t0 = time.perf_counter()
    err = sys.stderr
    progress = TerminalProgress(err)
    slide_path, model_path = ensure_demo_assets(progress=progress)
    session = load_model(model_path, args.device)
    with open_slide(slide_path) as reader:
        result = compute_heatmap(reader, session, InferenceConfig(device=args.device), progress=progress)
        progress.close()
        with tempfile.TemporaryDirectory(prefix="metascope-selftest-") as tmp:
            folder = write_heatmap_outputs(result, tmp, reader=reader)
            reloaded = load_heatmap_result(folder)
            files_ok = reloaded.grid.shape == result.grid.shape and (folder / "overlay.png").stat().st_size > 0
    score = score_against_truth(result, demo_truth())
    auc = score["auc"]
    checks = {
        "plumbing: the demo heatmap separates tumour from other tissue (AUC >= 0.9)": auc is not None and auc >= SELFTEST_MIN_AUC,
        "high inside the tumour (mean >= 0.5)": (score["mean_inside"] or 0.0) >= 0.5,
        "low outside the tumour (mean < 0.5)": score["mean_outside"] is not None and score["mean_outside"] < 0.5,
        "result files written and read back": files_ok,
    }
    print(f"MetaScope self-test: {slide_path.name} with {session.name}")
    print(
        f"  {result.summary['tiles_analysed']} tiles in {result.timing['inference_s']:.1f} s "
        f"({result.timing['tiles_per_s']:.0f} tiles/s) on {session.device} ({session.provider}, "
        f"{session.intra_op_threads} threads)"
    )
    print(
        f"  plumbing check AUC {auc if auc is None else round(auc, 3)} (the demo model is built from the demo "
        "slide's own stain vectors: this checks the pipeline, not model quality)"
    )
    print(
        f"  mean probability inside tumour "
        f"{score['mean_inside'] or 0:.3f} ({score['tiles_inside']} tiles), outside {score['mean_outside'] or 0:.3f} "
        f"({score['tiles_outside']} tiles)"
    )
    for label, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {label}")
    passed = all(checks.values())
    print(f"self-test {'passed' if passed else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if passed else 1
