"""Start-up time of the desktop app: from launching ``python main.py`` to the main window shown.

Each run is a fresh process (offscreen Qt, an empty MetaScope home, no demo); the app prints a
line once its event loop has painted the window, and this script times that line from the
moment the process was started. Also reports whether torch or other heavy modules were loaded.

    .venv/bin/python benchmarks/startup.py [--runs 5] [--slide S.svs]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch_once(slide: Path | None, home: Path) -> dict[str, float | str]:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
        "METASCOPE_HOME": str(home),
        "METASCOPE_TEST": "1",
        "METASCOPE_NO_DEMO": "1",
        "METASCOPE_STARTUP_PROBE": "1",
    }
    args = [sys.executable, str(ROOT / "main.py")] + ([str(slide)] if slide else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    facts: dict[str, float | str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("startup_window_shown_s="):
            facts["launch_to_window_s"] = round(time.perf_counter() - t0, 3)
        if "=" in line:
            k, v = line.strip().split("=", 1)
            facts[k] = v
    proc.wait(timeout=120)
    facts["process_total_s"] = round(time.perf_counter() - t0, 3)
    if proc.returncode != 0 or "launch_to_window_s" not in facts:
        raise RuntimeError(f"the app did not start (exit status {proc.returncode})")
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--slide", type=Path, help="also open this slide (command-line path)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="metascope-startup-") as tmp:
        launch_once(args.slide, Path(tmp))  # warm the OS file cache: measure the app, not the disk
        for _ in range(args.runs):
            runs.append(launch_once(args.slide, Path(tmp)))
    times = [float(r["launch_to_window_s"]) for r in runs]
    in_app = [float(r["startup_window_shown_s"]) for r in runs]
    result = {
        "runs": len(runs),
        "launch_to_window_median_s": round(statistics.median(times), 3),
        "launch_to_window_max_s": round(max(times), 3),
        "run_gui_to_window_median_s": round(statistics.median(in_app), 3),
        "heavy_modules_at_window": sorted({str(r["startup_heavy_modules"]) for r in runs}),
        "torch_imported": any("torch" in str(r["startup_heavy_modules"]) for r in runs),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
