"""Build MetaScope's one-folder bundles and Linux packages.

    .venv/bin/python build/make_installer.py                     # both bundles
    .venv/bin/python build/make_installer.py --flavour viewer --deb

Run it with the Python environment MetaScope is installed in (``pip install -e '.[build]'``): the
bundle is made of exactly the packages that interpreter imports. Products land in ``build/out/``:

    build/out/viewer/metascope/            viewer bundle (no torch)
    build/out/full/metascope/              full bundle (training included)
    build/out/metascope-viewer_<v>_<arch>.deb, build/out/metascope_<v>_<arch>.deb
    build/out/build-report.json            sizes and build times of the latest builds

Windows and macOS installers are made from the same spec on those systems: see
``build/windows/metascope.iss`` and ``build/macos/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bundle  # noqa: E402
import deb_package  # noqa: E402

SPEC = bundle.BUILD_DIR / "metascope.spec"
REPORT = bundle.OUT_DIR / "build-report.json"
PAGE = 4096


class BuildError(RuntimeError):
    """A build step failed; the message says which and where its log is."""


def build_bundle(flavour: str) -> dict[str, float | int | str]:
    """Run PyInstaller for ``flavour``, strip the result (Linux) and return its facts.

    Returns:
        ``bundle`` (path), ``bundle_bytes``, ``pyinstaller_s``, ``strip_saved_bytes``, ``build_s``.

    Raises:
        BuildError: PyInstaller failed (the last lines of its log are in the message).
    """
    work = bundle.WORK_DIR / flavour
    work.mkdir(parents=True, exist_ok=True)
    log = work / "pyinstaller.log"
    cmd = [
        sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
        "--distpath", str(bundle.dist_dir(flavour)), "--workpath", str(work),
        str(SPEC), "--", "--flavour", flavour,
    ]  # fmt: skip
    print(f"[{flavour}] PyInstaller ... (log: {_rel(log)})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        rc = subprocess.run(cmd, cwd=bundle.ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
    pyinstaller_s = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise BuildError(f"PyInstaller failed for the {flavour} bundle (exit {rc}):\n  " + "\n  ".join(tail))
    root = bundle.bundle_dir(flavour)
    saved = strip_bundle(root) if sys.platform.startswith("linux") and shutil.which("strip") else 0
    facts: dict[str, float | int | str] = {
        "bundle": _rel(root),
        "bundle_bytes": bundle.folder_size(root),
        "pyinstaller_s": round(pyinstaller_s, 1),
        "strip_saved_bytes": saved,
        "build_s": round(time.perf_counter() - t0, 1),
    }
    print(f"[{flavour}] bundle {_mb(facts['bundle_bytes'])} in {facts['build_s']} s -> {_rel(root)}", flush=True)
    return facts


def strip_bundle(root: Path) -> int:
    """Strip symbol tables from the bundle's ELF files in place; returns the bytes saved.

    Wheels ship many libraries unstripped (libpython alone: 23 MB -> 6 MB). Libraries that
    auditwheel rewrote with patchelf come out of ``strip`` with load segments that are no longer
    page-aligned and fail to load, so every stripped copy is checked and kept only when its
    segments are still loadable.
    """
    saved = 0
    tmp = root.parent / ".strip.tmp"
    for path in deb_package.elf_files(root):
        before = path.stat().st_size
        proc = subprocess.run(["strip", "--strip-unneeded", "-o", str(tmp), str(path)], capture_output=True)
        if proc.returncode != 0 or not tmp.is_file():
            continue  # not a file strip understands: leave it as it is
        after = tmp.stat().st_size
        if after < before and load_segments_aligned(tmp):
            shutil.copymode(path, tmp)
            os.replace(tmp, path)
            saved += before - after
    tmp.unlink(missing_ok=True)
    return saved


def load_segments_aligned(path: Path) -> bool:
    """Whether every ``PT_LOAD`` segment of a 64-bit little-endian ELF file can be mapped.

    The loader needs ``p_vaddr - p_offset`` to be a multiple of the page size and of the
    segment's alignment (glibc: "ELF load command address/offset not page-aligned"). Files that
    are not ELF64-LE are reported as not aligned, so they are never replaced.
    """
    with open(path, "rb") as fh:
        head = fh.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    if len(table) < phentsize * phnum:
        return False
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, _filesz, _memsz, align = struct.unpack_from(
            "<IIQQQQQQ", table, i * phentsize
        )
        if p_type != 1:  # PT_LOAD
            continue
        if (vaddr - offset) % PAGE or (align > 1 and (vaddr - offset) % align):
            return False
    return True


def write_icon() -> Path:
    """``build/out/metascope.ico`` (16-256 px) from the PNG icon, for the Windows installer."""
    from PIL import Image

    ico = bundle.OUT_DIR / "metascope.ico"
    ico.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(bundle.ROOT / "resources" / "icons" / "metascope-256.png") as im:
        im.convert("RGBA").save(ico, sizes=[(s, s) for s in (16, 24, 32, 48, 64, 128, 256)])
    return ico


def write_report(results: dict[str, dict[str, object]]) -> None:
    """Merge ``results`` (per flavour) into :data:`REPORT`, keeping other flavours' earlier facts."""
    report: dict[str, object] = {}
    if REPORT.is_file():
        try:
            report = json.loads(REPORT.read_text(encoding="utf-8"))
        except ValueError:
            report = {}
    report.update(results)
    report["version"] = bundle.version()
    report["platform"] = sys.platform
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    tmp = REPORT.with_name(REPORT.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, REPORT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make_installer.py",
        description="Build MetaScope's PyInstaller bundles (viewer: no torch; full: with training) and .deb packages.",
    )
    parser.add_argument(
        "--flavour", choices=(*bundle.FLAVOURS, "all"), default="all", help="which bundle(s) to build (default all)"
    )
    parser.add_argument("--deb", action="store_true", help="also package each bundle as a .deb (Debian/Ubuntu)")
    parser.add_argument(
        "--deb-level",
        type=int,
        choices=range(10),
        default=6,
        metavar="0-9",
        help="xz level of the .deb (default 6; 1 packs several times faster, for test installs)",
    )
    parser.add_argument(
        "--deb-only", action="store_true", help="package the bundle(s) already in build/out without rebuilding them"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flavours = list(bundle.FLAVOURS) if args.flavour == "all" else [args.flavour]
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        if not args.deb_only:
            print("error: PyInstaller is not installed here: pip install -e '.[build]'", file=sys.stderr)
            return 2
    results: dict[str, dict[str, object]] = {}
    write_icon()
    try:
        for flavour in flavours:
            facts: dict[str, object] = {}
            if not args.deb_only:
                facts.update(build_bundle(flavour))
            else:
                facts["bundle_bytes"] = bundle.folder_size(bundle.bundle_dir(flavour))
            if args.deb or args.deb_only:
                deb, seconds = deb_package.timed_build_deb(
                    flavour, bundle.bundle_dir(flavour), bundle.OUT_DIR, bundle.WORK_DIR, args.deb_level
                )
                facts.update(
                    deb=_rel(deb), deb_bytes=deb.stat().st_size, deb_s=round(seconds, 1), deb_xz_level=args.deb_level
                )
                print(f"[{flavour}] {deb.name}: {_mb(deb.stat().st_size)} in {seconds:.1f} s", flush=True)
            results[flavour] = facts
    except (BuildError, deb_package.PackagingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if results:
            write_report(results)
    print(f"report: {_rel(REPORT)}")
    return 0


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(bundle.ROOT))
    except ValueError:
        return str(path)


def _mb(n: object) -> str:
    return f"{int(n) / 1e6:.0f} MB"  # type: ignore[call-overload]


if __name__ == "__main__":
    sys.exit(main())
