"""Build a MetaScope .deb, install it into a temporary root and run the installed app.

    .venv/bin/python build/verify_install.py                    # viewer: build, install, check
    .venv/bin/python build/verify_install.py --skip-build       # check the .deb already built
    .venv/bin/python build/verify_install.py --flavour full     # also trains in the bundle

What a user without Python would do, short of a real ``dpkg -i``: the package is unpacked with
``dpkg -x`` into a temporary root, and everything then runs through ``ROOT/usr/bin/metascope``
(the symbolic link the package installs) under ``env -i`` with only PATH, HOME, LANG and
QT_QPA_PLATFORM=offscreen: no virtual environment, no PYTHONPATH, no source tree.

Checks: package metadata (name, version = engine.__version__, Depends, desktop entry, icons),
``metascope --version``, ``metascope selftest`` twice (first run generates the demo slide and model;
the second measures the heatmap alone), the GUI started offscreen (window shown, torch not
imported in the viewer, a screenshot of the main window saved after the demo heatmap had time to
fill in), and for the full flavour a one-epoch training run with a spawned data-loading worker
followed by an ONNX export. Measurements go to ``build/out/verify-<flavour>.json``.
Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bundle  # noqa: E402
import deb_package  # noqa: E402

# Seconds the GUI keeps running after its window is shown, so the demo heatmap fills in before
# the screenshot (the demo assets already exist by then: selftest made them).
GUI_SETTLE_S = 25.0
STEP_TIMEOUT_S = 900


class Verifier:
    """Runs the checks, records measurements, and collects failures instead of stopping at one."""

    def __init__(self, flavour: str, root: Path, home: Path, screenshot: Path) -> None:
        self.flavour = flavour
        self.root = root
        self.home = home
        self.screenshot = screenshot
        self.failures: list[str] = []
        self.depends: set[str] = set()
        self.facts: dict[str, Any] = {"flavour": flavour, "version": bundle.version()}

    # ------------------------------------------------------------------ helpers

    def check(self, ok: bool, label: str, detail: str = "") -> bool:
        print(f"  [{'ok' if ok else 'FAILED'}] {label}{f' ({detail})' if detail and not ok else ''}", flush=True)
        if not ok:
            self.failures.append(f"{label}{f': {detail}' if detail else ''}")
        return ok

    def clean_env(self, **extra: str) -> list[str]:
        """``env -i`` with the minimal environment of a desktop session, plus ``extra``."""
        env = {
            "PATH": f"{self.root / 'usr' / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "QT_QPA_PLATFORM": "offscreen",
            **extra,
        }
        return ["env", "-i", *(f"{k}={v}" for k, v in env.items())]

    def run_app(self, args: list[str], timeout: float = STEP_TIMEOUT_S, **extra: str) -> tuple[int, str, float]:
        """Run the installed ``metascope ARGS`` in the clean environment: (exit status, output, seconds)."""
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [*self.clean_env(**extra), bundle.APP_NAME, *args],
                cwd=self.home,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return -1, out + f"\n(timed out after {timeout:.0f} s)", time.perf_counter() - t0
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0

    # ------------------------------------------------------------------ steps

    def check_package(self, deb: Path) -> None:
        print(f"package {deb.name} ({deb.stat().st_size / 1e6:.0f} MB)")
        self.facts["deb_bytes"] = deb.stat().st_size
        info = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True).stdout
        fields = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line and not line.startswith(" "))
        self.facts["depends"] = fields.get("Depends", "")
        self.check(fields.get("Package") == deb_package.package_name(self.flavour), "package name")
        self.check(fields.get("Version") == bundle.version(), "version equals engine.__version__", str(fields))
        self.depends = {d.split(" ")[0] for d in fields.get("Depends", "").split(", ") if d}
        self.check("libc6 (>=" in fields.get("Depends", ""), "Depends names libc6 with a minimum version")
        self.check({"libxcb1", "libgl1", "libegl1"} <= self.depends, "Depends names the X11 and OpenGL libraries")

    def install(self, deb: Path) -> None:
        proc = subprocess.run(["dpkg", "-x", str(deb), str(self.root)], capture_output=True, text=True)
        self.check(proc.returncode == 0, "dpkg -x unpacks the package", proc.stderr.strip())
        launcher = self.root / "usr" / "bin" / bundle.APP_NAME
        target = self.root / "opt" / bundle.APP_NAME / bundle.APP_NAME
        self.check(
            launcher.is_symlink() and launcher.resolve() == target.resolve() and os.access(target, os.X_OK),
            "/usr/bin/metascope leads to /opt/metascope/metascope",
        )
        desktop = self.root / "usr" / "share" / "applications" / f"{bundle.APP_NAME}.desktop"
        text = desktop.read_text(encoding="utf-8") if desktop.is_file() else ""
        self.check(
            "Exec=metascope %F" in text and "Icon=metascope" in text and "Type=Application" in text,
            "desktop entry",
        )
        icons = self.root / "usr" / "share" / "icons" / "hicolor"
        self.check(
            (icons / "256x256" / "apps" / "metascope.png").is_file()
            and (icons / "scalable" / "apps" / "metascope.svg").is_file(),
            "hicolor icons",
        )
        # what the installed files load from outside the bundle must come from a declared package
        libs = deb_package.system_libraries(self.root / "opt" / bundle.APP_NAME)
        undeclared = sorted(k for k in libs if deb_package.SONAME_PACKAGES.get(k) not in self.depends)
        self.check(not undeclared, "every system library the bundle loads is in Depends", ", ".join(undeclared))
        internal = self.root / "opt" / bundle.APP_NAME / "_internal"
        has_torch = (internal / "torch").exists()
        self.check(
            has_torch == (self.flavour == "full"), f"torch {'in' if self.flavour == 'full' else 'not in'} bundle"
        )
        info = internal / bundle.BUILD_INFO_NAME
        built = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
        self.check(built.get("flavour") == self.flavour, "bundle says which flavour it is", str(built))
        self.facts["installed_bytes"] = bundle.folder_size(self.root)

    def cli(self) -> None:
        rc, out, _ = self.run_app(["--version"], timeout=120)
        self.check(rc == 0 and bundle.version() in out, "metascope --version", out.strip()[-300:])
        rc, out, _ = self.run_app(["info", "/nonexistent.svs"], timeout=120)
        self.check(
            rc == 2 and "error:" in out and "Traceback" not in out, "bad input: one-line error, exit 2", out[-300:]
        )
        if self.flavour == "viewer":
            data = self.home / "tiny-patches"
            _write_toy_patches(data, per_class=4)
            rc, out, _ = self.run_app(["train", "patches", "--data", str(data), "--out", str(self.home / "run")])
            self.check(
                rc == 2 and "full edition" in out and "Traceback" not in out,
                "viewer: training says it needs the full edition (exit 2, no traceback)",
                out[-500:],
            )
        for run in ("first", "second"):
            rc, out, seconds = self.run_app(["selftest"])
            passed = rc == 0 and "self-test passed" in out
            self.check(passed, f"metascope selftest ({run} run)", out.strip()[-1500:])
            tiles = re.search(r"(\d+) tiles in ([\d.]+) s \((\d+) tiles/s\)", out)
            self.facts[f"selftest_{run}_s"] = round(seconds, 2)
            if tiles:
                self.facts[f"selftest_{run}_tiles"] = int(tiles.group(1))
                self.facts[f"selftest_{run}_inference_s"] = float(tiles.group(2))
            auc = re.search(r"AUC ([\d.]+)", out)
            if auc:
                self.facts["selftest_auc"] = float(auc.group(1))
            print(f"    {run} selftest: {seconds:.1f} s wall" + (f", {tiles.group(0)}" if tiles else ""), flush=True)

    def gui(self) -> None:
        self.screenshot.parent.mkdir(parents=True, exist_ok=True)
        self.screenshot.unlink(missing_ok=True)
        cmd = [
            *self.clean_env(METASCOPE_STARTUP_PROBE=str(GUI_SETTLE_S), METASCOPE_SCREENSHOT=str(self.screenshot)),
            bundle.APP_NAME,
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=self.home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        lines: list[str] = []
        shown_wall = None
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("startup_window_shown_s=") and shown_wall is None:
                shown_wall = time.perf_counter() - t0
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -1
        out = "\n".join(lines)
        probe = dict(line.split("=", 1) for line in lines if re.match(r"^[a-z_]+=", line))
        self.check(rc == 0, "GUI starts and quits cleanly (offscreen)", out[-1500:])
        self.check(probe.get("startup_visible") == "1", "main window shown", out[-500:])
        if self.flavour == "viewer":
            self.check("torch" not in probe.get("startup_heavy_modules", ""), "GUI start-up does not import torch")
        self.check(
            probe.get("screenshot") == str(self.screenshot) and self.screenshot.is_file(),
            "screenshot of the main window saved",
            out[-500:],
        )
        if self.screenshot.is_file():
            self._check_screenshot()
        if shown_wall is not None:
            self.facts["gui_window_shown_wall_s"] = round(shown_wall, 2)
            self.facts["gui_window_shown_in_app_s"] = float(probe.get("startup_window_shown_s", "nan"))
            print(
                f"    main window shown {shown_wall:.2f} s after launch "
                f"({probe.get('startup_window_shown_s')} s after the GUI code started)",
                flush=True,
            )
        self.facts["screenshot"] = str(self.screenshot)

    def _check_screenshot(self) -> None:
        from PIL import Image

        with Image.open(self.screenshot) as im:
            rgb = im.convert("RGB")
            size = rgb.size
            extrema = rgb.getextrema()
        varied = any(hi - lo > 40 for lo, hi in extrema)
        self.check(size[0] >= 640 and size[1] >= 400 and varied, "screenshot shows a drawn window", f"{size} {extrema}")

    def train_in_bundle(self) -> None:
        """Full flavour: one epoch with a spawned loader worker, then an ONNX export, all inside the bundle."""
        data = self.home / "tiny-patches"
        _write_toy_patches(data)
        run = self.home / "runs" / "tiny"
        args = ["train", "patches", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "16",
                "--workers", "1", "--cache", "none", "--device", "cpu"]  # fmt: skip
        rc, out, seconds = self.run_app(args)
        self.check(rc == 0, "train patches in the bundle (spawned data-loader worker)", out.strip()[-1500:])
        self.facts["train_one_epoch_s"] = round(seconds, 1)
        model = self.home / "tiny.onnx"
        rc, out, seconds = self.run_app(["export", str(run), "--out", str(model)])
        self.check(rc == 0 and model.is_file(), "export the trained run to ONNX in the bundle", out.strip()[-1500:])
        self.facts["export_s"] = round(seconds, 1)


def _write_toy_patches(root: Path, per_class: int = 48, size: int = 96) -> None:
    """Class folders of pink 'normal' and purple, dotted 'tumour' patches (PNG, RGB)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, base in (("normal", (235, 170, 200)), ("tumour", (120, 70, 160))):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(rng.normal(base, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            if label == "tumour":
                for _ in range(12):
                    y, x = rng.integers(4, size - 4, 2)
                    img[y - 3 : y + 3, x - 3 : x + 3] = (60, 30, 110)
            Image.fromarray(img).save(folder / f"{label}-{i:03d}.png")


def build(flavour: str, deb_level: int) -> float:
    """Build ``flavour``'s bundle and .deb with make_installer.py; returns seconds."""
    t0 = time.perf_counter()
    cmd = [
        sys.executable, str(bundle.BUILD_DIR / "make_installer.py"),
        "--flavour", flavour, "--deb", "--deb-level", str(deb_level),
    ]  # fmt: skip
    rc = subprocess.run(cmd, cwd=bundle.ROOT).returncode
    if rc != 0:
        sys.exit(f"error: building the {flavour} package failed (exit {rc})")
    return time.perf_counter() - t0


def find_deb(flavour: str) -> Path:
    name = deb_package.package_name(flavour)
    debs = sorted(bundle.OUT_DIR.glob(f"{name}_{bundle.version()}_*.deb"))
    if not debs:
        sys.exit(f"error: no {name} package in {bundle.OUT_DIR}: run without --skip-build")
    return debs[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_install.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavour", choices=bundle.FLAVOURS, default="viewer")
    parser.add_argument("--skip-build", action="store_true", help="verify the .deb already in build/out")
    parser.add_argument(
        "--deb-level", type=int, choices=range(10), default=6, metavar="0-9", help="xz level when building (default 6)"
    )
    parser.add_argument("--no-gui", action="store_true", help="skip the GUI start and screenshot")
    parser.add_argument("--keep", metavar="DIR", help="install into DIR and keep it (default: a temporary folder)")
    parser.add_argument("--screenshot", metavar="PNG", help="where to save the screenshot (default build/out/)")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux") or shutil.which("dpkg") is None:
        print("error: verify_install.py needs Linux with dpkg (Debian/Ubuntu)", file=sys.stderr)
        return 2

    build_s = None if args.skip_build else build(args.flavour, args.deb_level)
    deb = find_deb(args.flavour)
    with tempfile.TemporaryDirectory(prefix="metascope-verify-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        if args.keep and base.exists():
            shutil.rmtree(base)
        root, home = base / "root", base / "home"
        root.mkdir(parents=True)
        home.mkdir(parents=True)
        shot = Path(args.screenshot) if args.screenshot else bundle.OUT_DIR / f"screenshot-{args.flavour}.png"
        v = Verifier(args.flavour, root, home, shot.resolve())
        if build_s is not None:
            v.facts["build_and_package_s"] = round(build_s, 1)
        v.check_package(deb)
        v.install(deb)
        v.cli()
        if not args.no_gui:
            v.gui()
        if args.flavour == "full":
            v.train_in_bundle()
    v.facts["failures"] = v.failures
    out = bundle.OUT_DIR / f"verify-{args.flavour}.json"
    out.write_text(json.dumps(v.facts, indent=2) + "\n", encoding="utf-8")
    print(f"{'all checks passed' if not v.failures else f'{len(v.failures)} check(s) FAILED'}; facts: {out}")
    return 0 if not v.failures else 1


if __name__ == "__main__":
    sys.exit(main())
