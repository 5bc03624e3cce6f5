"""GUI responsiveness of the slide view: first paint after opening a slide, and the longest
event-loop stall while tiles load and while a heatmap runs.

A QTimer probe fires every 5 ms on the GUI thread; the gap between two firings minus 5 ms is how
long the event loop could not react (a user's click or key press would have waited that long).
Navigation (zoom and pan steps every 50 ms) is driven by another timer, inside the event loop,
as a user's wheel and drag events would be.

Run (offscreen, a few minutes on first use while the demo slide is generated):

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/gui_latency.py [--slide S.svs --model M.onnx] [--runs 5]

With ``--runs N`` the measurement is repeated in N fresh processes and the median of each number
is reported next to the individual runs (on a shared machine single runs are noisy). The heatmap
is computed in a child process, as in the app, so its CPU use competes with the GUI process for
cores but not for the GIL.

Without ``--slide`` the demo slide and model are generated once into ``--work`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PROBE_MS = 5
NAV_MS = 50


def _stats(gaps: list[float]) -> dict[str, float]:
    """Stall statistics in milliseconds (gap between probe firings minus the probe interval)."""
    if not gaps:
        return {"max_ms": float("nan"), "p99_ms": float("nan"), "median_ms": float("nan"), "samples": 0}
    stalls = sorted(max(0.0, g * 1000 - PROBE_MS) for g in gaps)
    p99 = stalls[min(len(stalls) - 1, int(round(0.99 * (len(stalls) - 1))))]
    return {"max_ms": round(stalls[-1], 1), "p99_ms": round(p99, 1),
            "median_ms": round(statistics.median(stalls), 1), "samples": len(stalls)}


def _repeat(args: argparse.Namespace) -> int:
    """Run the benchmark ``args.runs`` times in fresh processes; print each run and the medians."""
    import subprocess

    base = [sys.executable, str(Path(__file__).resolve()), "--json", "--work", str(args.work),
            "--nav-seconds", str(args.nav_seconds)]
    if args.slide is not None:
        base += ["--slide", str(args.slide)]
    if args.model is not None:
        base += ["--model", str(args.model)]
    runs = []
    for i in range(args.runs):
        proc = subprocess.run(base, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        runs.append(json.loads(proc.stdout))
        print(f"run {i + 1}: " + ", ".join(f"{k}={_brief(runs[-1][k])}" for k in _KEYS), file=sys.stderr)

    def med(path: tuple[str, ...]) -> float:
        vals = []
        for r in runs:
            v = r
            for k in path:
                v = v[k]
            vals.append(float(v))
        return round(statistics.median(vals), 1)

    summary = {"runs": len(runs)}
    for key in _KEYS:
        if isinstance(runs[0][key], dict):
            summary[key] = {k: med((key, k)) for k in ("max_ms", "p99_ms", "median_ms")}
        else:
            summary[key] = med((key,))
    summary["max_of_max_ms"] = {k: max(r[k]["max_ms"] for r in runs)
                                for k in ("stall_while_tiles_load", "stall_while_heatmap_runs")}
    print(json.dumps({"median": summary, "runs": runs}, indent=2) if args.json else json.dumps(summary, indent=2))
    return 0


_KEYS = ("first_paint_ms", "all_visible_tiles_ms", "stall_while_tiles_load", "stall_while_heatmap_runs",
         "heatmap_s", "load_average_1min")


def _brief(v: object) -> str:
    if isinstance(v, dict):
        return "{:g}/{:g}/{:g} ms".format(v["max_ms"], v["p99_ms"], v["median_ms"])
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, help="slide to open (default: the generated demo slide)")
    ap.add_argument("--model", type=Path, help="model for the heatmap (default: the demo model)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "metascope-bench-gui",
                    help="folder for the generated demo assets and the benchmark's MetaScope home")
    ap.add_argument("--nav-seconds", type=float, default=6.0, help="navigation time while only tiles load")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--runs", type=int, default=1, help="repeat in this many fresh processes; report medians")
    args = ap.parse_args(argv)
    if args.runs > 1:
        return _repeat(args)

    home = args.work / "home"
    os.environ["METASCOPE_HOME"] = str(home)
    os.environ["METASCOPE_TEST"] = "1"  # settings file inside the benchmark home
    os.environ["METASCOPE_NO_DEMO"] = "1"
    import shutil

    shutil.rmtree(home / "cache", ignore_errors=True)  # always compute the heatmap
    if args.slide is None or args.model is None:
        from engine.demo import ensure_demo_assets

        t = time.perf_counter()
        slide, model = ensure_demo_assets(args.work / "demo")
        print(f"demo assets ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        args.slide, args.model = args.slide or slide, args.model or model

    from PySide6.QtCore import QPointF, QTimer

    from gui.app import create_application
    from gui.main_window import MainWindow
    from gui.settings import Settings

    app = create_application()
    window = MainWindow(Settings())
    window.resize(1440, 900)
    window.show()
    view = window.slide_view
    viewer = view.viewer
    view.refresh_models()  # as the app does at start-up (also warms up the inference runtime)

    def spin_until(cond, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
        end = time.perf_counter() + timeout_s
        while time.perf_counter() < end:
            app.processEvents()
            if cond():
                return True
            time.sleep(0.001)
        return False

    spin_until(lambda: False, 0.5)  # let the window settle
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    probe = QTimer()
    probe.setInterval(PROBE_MS)
    probe.timeout.connect(tick)

    # -- open: first paint and all visible tiles ----------------------------------------------
    t_open = time.perf_counter()
    ok = view.open_slide(args.slide)
    if not ok:
        print("error: could not open the slide", file=sys.stderr)
        return 2
    open_call_s = time.perf_counter() - t_open
    spin_until(lambda: viewer.fully_drawn_s is not None, 30)
    first_paint_s, fully_drawn_s = viewer.first_paint_s, viewer.fully_drawn_s

    step = [0]

    def navigate() -> None:
        i = step[0]
        step[0] += 1
        w, h = viewer.width(), viewer.height()
        phase = i % 40
        if phase < 12:
            viewer.zoom_by(1.25, QPointF(w * 0.4 + 10 * phase, h * 0.45))
        elif phase < 28:
            viewer.pan_by(35 * (1 if phase % 8 < 4 else -1), 22)
        else:
            viewer.zoom_by(1 / 1.25, QPointF(w * 0.6, h * 0.5))

    nav = QTimer()
    nav.setInterval(NAV_MS)
    nav.timeout.connect(navigate)

    # -- navigation while tiles load -----------------------------------------------------------
    viewer.scheduler.cache.clear()
    last[0] = time.perf_counter()
    probe.start()
    nav.start()
    spin_until(lambda: False, args.nav_seconds)
    nav.stop()
    probe.stop()
    tiles_stats = _stats(gaps)
    tiles_loaded = len(viewer.scheduler.cache)

    # -- navigation while a heatmap runs -------------------------------------------------------
    view.select_model(str(args.model))
    spin_until(lambda: view.heatmap_panel.current_model() == str(Path(args.model).resolve()), 30)
    viewer.fit()
    gaps.clear()
    last[0] = time.perf_counter()
    probe.start()
    nav.start()
    t_run = time.perf_counter()
    view.run_heatmap()
    spin_until(lambda: not view.running, 600)
    heatmap_s = time.perf_counter() - t_run
    nav.stop()
    probe.stop()
    heat_stats = _stats(gaps)
    result = {
        "slide": str(args.slide),
        "slide_size": list(view.reader.info.dimensions) if view.reader else None,
        "open_call_ms": round(open_call_s * 1000, 1),
        "first_paint_ms": round((first_paint_s or float("nan")) * 1000, 1),
        "all_visible_tiles_ms": round((fully_drawn_s or float("nan")) * 1000, 1),
        "stall_while_tiles_load": tiles_stats,
        "tiles_loaded": tiles_loaded,
        "stall_while_heatmap_runs": heat_stats,
        "heatmap_s": round(heatmap_s, 2),
        "heatmap_tiles": view.result.n_tiles if view.result else 0,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
    }
    window.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
