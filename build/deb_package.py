"""Linux ``.deb`` of a MetaScope bundle, built with ``dpkg-deb`` (no debhelper, no root needed).

Layout installed by the package::

    /opt/metascope/                      the PyInstaller one-folder bundle (metascope + _internal/)
    /usr/bin/metascope                   -> ../../opt/metascope/metascope (relative: also works
                                            inside a ``dpkg -x`` test root)
    /usr/share/applications/metascope.desktop
    /usr/share/icons/hicolor/{256x256,scalable}/apps/metascope.{png,svg}
    /usr/share/doc/<package>/copyright

The desktop database and icon cache are refreshed by the dpkg triggers of ``desktop-file-utils``
and ``hicolor-icon-theme``, so the package needs no maintainer scripts.

System dependencies: the bundle carries its own Python, Qt, numpy, onnxruntime, OpenSlide and most
X11/xcb libraries; what it still loads from the system is found by running ``ldd`` over every
library in the bundle and mapped to Debian/Ubuntu package names through :data:`SONAME_PACKAGES`.
A library missing from that map stops the build, so a new system dependency cannot slip into a
package silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import bundle

# Libraries the bundle loads from the system, by soname, and the package that provides each
# (same names on Debian 11/12 and Ubuntu 22.04/24.04).
SONAME_PACKAGES = {
    # glibc; the minimum version comes from the symbol versions the bundle uses
    "libc.so.6": "libc6",
    "libm.so.6": "libc6",
    "libpthread.so.0": "libc6",
    "libdl.so.2": "libc6",
    "librt.so.1": "libc6",
    "libresolv.so.2": "libc6",
    "libutil.so.1": "libc6",
    "ld-linux-x86-64.so.2": "libc6",
    "ld-linux-aarch64.so.1": "libc6",
    # OpenGL through libglvnd: Qt Gui links them; the GPU vendor's driver plugs in underneath
    "libGL.so.1": "libgl1",
    "libGLX.so.0": "libglx0",
    "libGLdispatch.so.0": "libglvnd0",
    "libEGL.so.1": "libegl1",
    "libOpenGL.so.0": "libopengl0",
    "libdrm.so.2": "libdrm2",
    # X11 (xcb) platform plugin: libxcb itself must match the X server's protocol libraries,
    # and icccm/keysyms are not collected by PyInstaller
    "libxcb.so.1": "libxcb1",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    # Wayland platform plugin
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}
GLIBC_PACKAGE = "libc6"
_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(not found|\S+)")
_GLIBC_VERSION = re.compile(r"\bGLIBC_(\d+(?:\.\d+)+)\b")


class PackagingError(RuntimeError):
    """The .deb cannot be built (missing tool, unknown system library, dpkg-deb failure)."""


def package_name(flavour: str) -> str:
    """``metascope`` for the full flavour (everything), ``metascope-viewer`` for the viewer."""
    return bundle.APP_NAME if bundle.check_flavour(flavour) == "full" else f"{bundle.APP_NAME}-viewer"


def debian_architecture() -> str:
    """dpkg's name of this machine's architecture (``amd64``, ``arm64``)."""
    return _run(["dpkg", "--print-architecture"]).strip()


def elf_files(root: Path) -> list[Path]:
    """Regular ELF files (executables and shared libraries) under ``root``; symbolic links skipped."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as fh:
            if fh.read(4) == b"\x7fELF":
                found.append(path)
    return found


def system_libraries(bundle_root: Path) -> dict[str, list[str]]:
    """Sonames the bundle loads from outside itself, each with the bundle files that need it.

    ``ldd`` runs with the bundle's library folder first on the search path (as the bootloader sets
    it up), so only libraries that are not in the bundle remain; ``not found`` ones count too
    (they are the dependencies this build machine lacks, e.g. xcb-icccm).
    """
    internal = bundle_root / "_internal"
    env = dict(os.environ, LD_LIBRARY_PATH=str(internal))
    needs: dict[str, set[str]] = {}
    for path in elf_files(bundle_root):
        proc = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env)
        for line in proc.stdout.splitlines():
            m = _LDD_LINE.match(line)
            if not m:
                continue
            soname, where = m.groups()
            if where != "not found" and Path(where).resolve().is_relative_to(bundle_root.resolve()):
                continue
            needs.setdefault(soname, set()).add(str(path.relative_to(bundle_root)))
    return {k: sorted(v) for k, v in sorted(needs.items())}


def minimum_glibc(bundle_root: Path) -> str:
    """Highest ``GLIBC_x.y`` symbol version any file in the bundle requires (e.g. ``2.34``)."""
    best: tuple[int, ...] = (2, 17)
    for path in elf_files(bundle_root):
        out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True).stdout
        for v in _GLIBC_VERSION.findall(out):
            best = max(best, tuple(int(x) for x in v.split(".")))
    return ".".join(str(x) for x in best)


def depends(bundle_root: Path) -> list[str]:
    """The ``Depends:`` entries of a bundle, e.g. ``["libc6 (>= 2.34)", "libegl1", ...]``.

    Raises:
        PackagingError: the bundle loads a system library missing from :data:`SONAME_PACKAGES`.
    """
    libs = system_libraries(bundle_root)
    unknown = {k: v for k, v in libs.items() if k not in SONAME_PACKAGES}
    if unknown:
        detail = "; ".join(f"{k} (needed by {', '.join(v[:2])})" for k, v in unknown.items())
        raise PackagingError(
            f"the bundle needs system libraries with no known Debian package: {detail}. "
            "Add them to SONAME_PACKAGES in build/deb_package.py (or bundle them)."
        )
    packages = sorted({SONAME_PACKAGES[k] for k in libs} - {GLIBC_PACKAGE})
    return [f"{GLIBC_PACKAGE} (>= {minimum_glibc(bundle_root)})", *packages]


def control_file(flavour: str, installed_kib: int, depends_on: list[str], arch: str) -> str:
    """The ``DEBIAN/control`` text."""
    name = package_name(flavour)
    other = package_name("viewer" if flavour == "full" else "full")
    what = (
        "Viewer edition: slides, heatmaps and slide-level results with ONNX models (no training)."
        if flavour == "viewer"
        else "Full edition: includes training of new models (PyTorch, CPU)."
    )
    description = "\n".join(
        " " + (line if line.strip() else ".") for line in (*bundle.DESCRIPTION.splitlines(), "", what)
    )
    fields = {
        "Package": name,
        "Version": bundle.version(),
        "Architecture": arch,
        "Maintainer": bundle.MAINTAINER,
        "Installed-Size": str(installed_kib),
        "Depends": ", ".join(depends_on),
        # both editions install /opt/metascope and /usr/bin/metascope: one at a time
        "Conflicts": other,
        "Replaces": other,
        "Provides": "metascope-app",
        "Section": "science",
        "Priority": "optional",
        "Homepage": bundle.HOMEPAGE,
    }
    head = "".join(f"{k}: {v}\n" for k, v in fields.items())
    return f"{head}Description: {bundle.SUMMARY}\n{description}\n"


def desktop_entry() -> str:
    """The freedesktop ``.desktop`` launcher (opens slides given by the file manager too)."""
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        f"Name={bundle.DISPLAY_NAME}\n"
        "GenericName=Slide Viewer\n"
        f"Comment={bundle.SUMMARY}\n"
        f"Exec={bundle.APP_NAME} %F\n"
        f"TryExec={bundle.APP_NAME}\n"
        f"Icon={bundle.APP_NAME}\n"
        "Terminal=false\n"
        "Categories=Science;MedicalSoftware;Graphics;Viewer;\n"
        "MimeType=image/tiff;image/png;image/jpeg;application/dicom;\n"
        "Keywords=pathology;histology;whole-slide;heatmap;metastasis;\n"
        # Qt sets the window class from QGuiApplication.setDesktopFileName("metascope")
        f"StartupWMClass={bundle.APP_NAME}\n"
        "StartupNotify=true\n"
    )


def copyright_file() -> str:
    """``/usr/share/doc/<package>/copyright`` (machine-readable format)."""
    return (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        f"Upstream-Name: {bundle.DISPLAY_NAME}\n\n"
        "Files: *\n"
        f"License: {bundle.LICENSE}\n"
        " The bundled third-party components (Python, Qt/PySide6, numpy, onnxruntime, OpenSlide and\n"
        " others) keep their own licences; their notices are inside /opt/metascope/_internal.\n"
    )


def build_deb(flavour: str, bundle_root: Path, out_dir: Path, work_dir: Path, level: int = 6) -> Path:
    """Package ``bundle_root`` as ``out_dir/<package>_<version>_<arch>.deb`` and return its path.

    Args:
        level: xz compression level 0-9 (6, dpkg's default, for releases; 1 packs ~5x faster
            for a test install at ~10% more size).

    Raises:
        PackagingError: ``dpkg-deb`` is missing or fails, or a system library is unmapped.
    """
    if shutil.which("dpkg-deb") is None:
        raise PackagingError("dpkg-deb not found: build .deb packages on Debian or Ubuntu (apt install dpkg-dev)")
    if not (bundle_root / bundle.APP_NAME).is_file():
        raise PackagingError(f"no bundle at {bundle_root}: build it first (make_installer.py --flavour {flavour})")
    name = package_name(flavour)
    arch = debian_architecture()
    stage = work_dir / f"deb-{name}"
    if stage.exists():
        shutil.rmtree(stage)
    opt = stage / "opt" / bundle.APP_NAME
    shutil.copytree(bundle_root, opt, symlinks=True)
    usr_bin = stage / "usr" / "bin"
    usr_bin.mkdir(parents=True)
    (usr_bin / bundle.APP_NAME).symlink_to(Path("..", "..", "opt", bundle.APP_NAME, bundle.APP_NAME))
    share = stage / "usr" / "share"
    _write(share / "applications" / f"{bundle.APP_NAME}.desktop", desktop_entry())
    icons = bundle.ROOT / "resources" / "icons"
    for size_dir, src in (("256x256", icons / "metascope-256.png"), ("scalable", icons / "metascope.svg")):
        dest = share / "icons" / "hicolor" / size_dir / "apps" / f"{bundle.APP_NAME}{src.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    _write(share / "doc" / name / "copyright", copyright_file())
    _normalise_modes(stage)

    installed_kib = (bundle.folder_size(stage) + 1023) // 1024
    control = control_file(flavour, installed_kib, depends(bundle_root), arch)
    _write(stage / "DEBIAN" / "control", control)

    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{name}_{bundle.version()}_{arch}.deb"
    tmp = deb.with_name(deb.name + ".part")
    # --root-owner-group: files owned by root:root without running as root (fakeroot otherwise)
    # xz: readable by every dpkg still in use (zstd needs dpkg >= 1.21.18)
    cmd = ["dpkg-deb", "--root-owner-group", "-Zxz", f"-z{level}", "--build", str(stage), str(tmp)]
    if not _supports_root_owner_group():
        cmd = ["fakeroot", "dpkg-deb", "-Zxz", f"-z{level}", "--build", str(stage), str(tmp)]
    _run(cmd)
    os.replace(tmp, deb)
    shutil.rmtree(stage)
    return deb


def _supports_root_owner_group() -> bool:
    return "--root-owner-group" in subprocess.run(["dpkg-deb", "--help"], capture_output=True, text=True).stdout


def _normalise_modes(root: Path) -> None:
    """0755 folders and executables, 0644 everything else (as dpkg and lintian expect)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise PackagingError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


def timed_build_deb(
    flavour: str, bundle_root: Path, out_dir: Path, work_dir: Path, level: int = 6
) -> tuple[Path, float]:
    """:func:`build_deb` and the seconds it took."""
    t0 = time.perf_counter()
    deb = build_deb(flavour, bundle_root, out_dir, work_dir, level)
    return deb, time.perf_counter() - t0
