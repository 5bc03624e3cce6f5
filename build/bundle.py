"""What goes into a MetaScope bundle: shared by the PyInstaller spec, the installer builder and the verifier.

Two flavours of the same one-folder bundle:

* ``viewer``: no torch. Opens slides, computes heatmaps and slide-level results with ONNX models,
  evaluates and predicts with ONNX models, runs ``metascope selftest``. The common case on a lab
  workstation, and a fraction of the size.
* ``full``: everything, including training (``metascope train``) and ONNX export with torch.

This module imports nothing outside the standard library, so the spec, ``make_installer.py`` and
``verify_install.py`` can all load it before anything else.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build"
# PyInstaller's work folders and every build product; both ignored by git.
WORK_DIR = BUILD_DIR / "_work"
OUT_DIR = BUILD_DIR / "out"

APP_NAME = "metascope"  # executable, bundle folder, Debian package, /usr/bin command
DISPLAY_NAME = "MetaScope"
SUMMARY = "Workbench for metastasis prediction on whole-slide images"
DESCRIPTION = (
    "Open whole-slide images (SVS, NDPI, MRXS, SCN, TIFF, DICOM), see metastasis heatmaps computed\n"
    "by small ONNX models, train patch classifiers, and predict slide-level lymph-node status.\n"
    "Runs locally and offline; patient data never leaves the machine."
)
MAINTAINER = "MetaScope developers <metascope@localhost>"
HOMEPAGE = "https://github.com/metascope/metascope"
LICENSE = "Apache-2.0"
FLAVOURS = ("viewer", "full")
# Name of the JSON file at the bundle root that says which flavour and version was built.
BUILD_INFO_NAME = "metascope-build.json"

# Modules that only training and torch-based export need. The viewer leaves them out; engine
# modules that import torch lazily stay in and are simply never called.
TORCH_MODULES = (
    "torch",
    "torchvision",
    "torchaudio",
    "functorch",
    "triton",
    "onnxscript",  # the torch.onnx dynamo exporter's helper
    "sympy",
    "mpmath",
    "networkx",
    "optree",
    "jinja2",
)
# Viewer only: TLS. MetaScope never opens a network connection (local-first); without _ssl and
# _hashlib the viewer drops OpenSSL (5 MB) and hashlib uses Python's built-in SHA-256 (model
# checksums). The full flavour keeps them: 5 MB do not matter next to torch's 500, and the
# full bundle's training and export were verified with them.
VIEWER_ONLY_EXCLUDES = ("ssl", "_ssl", "_hashlib")
# Never needed at run time in either flavour: test and dev tools, other GUI toolkits, and the Qt
# modules MetaScope does not use (QtQml/QtQuick alone are ~30 MB with their plugins).
COMMON_EXCLUDES = (
    "tkinter",
    "_tkinter",
    "pytest",
    "pytestqt",
    "_pytest",
    "IPython",
    "ruff",
    "importlinter",
    "grimp",
    "setuptools",
    "pip",
    "PyInstaller",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6.QtQml",
    "PySide6.QtQuick",
    "PySide6.QtQuickWidgets",
    "PySide6.QtQuickControls2",
    "PySide6.QtQuickTest",
    "PySide6.QtDesigner",
    "PySide6.QtUiTools",
    "PySide6.QtHelp",
    "PySide6.QtSql",
    "PySide6.QtTest",
    "PySide6.QtNetwork",
    "PySide6.QtOpenGL",
    "PySide6.QtOpenGLWidgets",
    "PySide6.QtPrintSupport",
    "PySide6.QtConcurrent",
    "PySide6.QtXml",
    "PySide6.Qt3DCore",
    "PySide6.QtWebEngineCore",
    "PySide6.QtCharts",
    "PySide6.QtMultimedia",
    "readline",  # interactive prompt only; links libreadline/libtinfo
    "ray",  # cohorts on a cluster (`--ray`, the distributed extra) run from a pip install, not the app
    "sqlite3",
    "_sqlite3",
    "PIL._avif",  # AVIF images: not a slide or patch format (libavif is 5 MB)
    "PIL._imagingtk",
    "matplotlib.backends.backend_tkagg",
    "matplotlib.backends.backend_tkcairo",
    "matplotlib.backends.backend_gtk3agg",
    "matplotlib.backends.backend_gtk4agg",
    "matplotlib.backends.backend_wxagg",
    "matplotlib.backends.backend_webagg",
    "matplotlib.backends.backend_nbagg",
)
# Loaded by name at run time, so import analysis cannot see them.
HIDDEN_IMPORTS = (
    "matplotlib.backends.backend_agg",
    "matplotlib.backends.backend_qtagg",  # the GUI's plot canvas
)
# The imagecodecs codecs tifffile loads by name on first use (all 60 would add ~80 MB): the
# compressions found in whole-slide and microscopy TIFFs (JPEG, JPEG 2000, LZW/PackBits/delta in
# _imcd, Deflate, LZMA, Zstandard, WebP, PNG). Rare ones (JPEG XL, LERC, JPEG XR, ...) are left
# out: such a file gets tifffile's "codec not available" error instead of pixels.
IMAGECODECS_MODULES = tuple(
    f"imagecodecs.{m}"
    for m in (
        "imagecodecs",
        "_imagecodecs",
        "_shared",
        "_shared_cython",
        "_imcd",
        "_jpeg8",
        "_ljpeg",
        "_jpeg2k",
        "_zlib",
        "_deflate",
        "_lzma",
        "_zstd",
        "_webp",
        "_png",
    )
)
# Packages whose sub-modules are all bundled: the CLI imports its command modules by name.
COLLECT_PACKAGES = ("engine", "gui")
# Full flavour only: the torch.onnx exporter's ops library (registered by import) ...
FULL_COLLECT_PACKAGES = ("onnxscript",)
# ... which builds ONNX functions by parsing their Python source (inspect.getsource), so its .py
# files must ship next to the compiled archive.
FULL_MODULE_COLLECTION_MODE = {"onnxscript": "pyz+py"}
# Files left out of the bundle (glob on the bundle path; PyInstaller files ELF programs found
# among package data as binaries, so the patterns apply to both lists):
# - Qt's translations of its own dialogs (the app is in English; 7 MB); matplotlib's sample data
#   and STIX fonts (plots use DejaVu Sans).
# - Qt's GTK3 platform theme would drag in a private copy of cairo, pango, atk and gdk-pixbuf
#   (~8 MB) yet still needs the system's GTK 3; without it Qt draws with its own style.
# - Platforms for embedded devices and remote framebuffers (eglfs, linuxfb, vnc, Vulkan display)
#   and their input plugins; QtNetwork and the EGLFS libraries go with them. A workstation uses
#   xcb (X11) or wayland; offscreen and minimal stay for headless runs.
# - Image formats no slide, icon or screenshot uses.
# - The C++ test programs, test libraries and protobuf compiler the torch wheel ships (~100 MB).
DROP_PATTERNS = (
    "PySide6/Qt/translations/*",
    "matplotlib/mpl-data/sample_data/*",
    "matplotlib/mpl-data/fonts/ttf/STIX*",
    "PySide6/Qt/plugins/platformthemes/libqgtk3.so",
    "PySide6/Qt/plugins/platforms/libqeglfs.so",
    "PySide6/Qt/plugins/platforms/libqlinuxfb.so",
    "PySide6/Qt/plugins/platforms/libqminimalegl.so",
    "PySide6/Qt/plugins/platforms/libqvkkhrdisplay.so",
    "PySide6/Qt/plugins/platforms/libqvnc.so",
    "PySide6/Qt/plugins/egldeviceintegrations/*",
    "PySide6/Qt/plugins/generic/*",
    "PySide6/Qt/plugins/imageformats/libqicns.so",
    "PySide6/Qt/plugins/imageformats/libqtga.so",
    "PySide6/Qt/plugins/imageformats/libqwbmp.so",
    "torch/test/*",
    "torch/bin/*Test",
    "torch/bin/test_*",
    "torch/bin/protoc*",
    "torch/bin/*.pt",
    "torch/bin/*.ptl",
    "torch/bin/upgrader_models/*",
    "torch/lib/libaoti_custom_ops.so",
    "torch/lib/libbackend_with_compiler.so",
    "torch/lib/libjitbackend_test.so",
    "torch/lib/libtorchbind_test.so",
)
# Libraries that may go when nothing left in the bundle links to them: the system libraries
# PyInstaller copied to the top level, and Qt's own libraries.
PRUNABLE_PREFIXES = ("PySide6/Qt/lib/",)


def _matches(dest: str, patterns: tuple[str, ...]) -> bool:
    import fnmatch

    dest = dest.replace("\\", "/")
    return any(fnmatch.fnmatch(dest, pattern) for pattern in patterns)


def prune_datas(datas: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """``datas`` without :data:`DROP_PATTERNS`."""
    return [d for d in datas if not _matches(d[0], DROP_PATTERNS)]


def prune_binaries(binaries: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Drop :data:`DROP_PATTERNS`, then the system libraries only those files needed (Linux).

    PyInstaller copies every library a collected binary links to into the bundle's top level.
    After removing binaries, a top-level library that no remaining binary links to (directly or
    through others: ``ldd`` lists the whole closure) is dead weight and goes too.

    Args:
        binaries: PyInstaller TOC entries ``(bundle path, source path, type)``.
    """
    kept = [b for b in binaries if not _matches(b[0], DROP_PATTERNS)]
    if not sys.platform.startswith("linux") or len(kept) == len(binaries):
        return kept
    from PyInstaller.depend.bindepend import get_imports

    def prunable(dest: str) -> bool:
        # libraries PyInstaller resolved from the system land at the top; package files have a folder
        dest = dest.replace("\\", "/")
        if "/" not in dest:
            return not dest.startswith("libpython")
        return dest.startswith(PRUNABLE_PREFIXES)

    # ldd lists the whole closure of what it can resolve; the second pass adds the dependencies
    # of kept libraries that only the bundle has (ldd could not follow those the first time)
    needed: set[str] = set()
    for dest, src, _kind in kept:
        if not prunable(dest):
            needed.update(Path(name).name for name, _path in get_imports(src))
    for dest, src, _kind in kept:
        if prunable(dest) and Path(dest).name in needed:
            needed.update(Path(name).name for name, _path in get_imports(src))
    return [b for b in kept if not prunable(b[0]) or Path(b[0]).name in needed]


def collect_packages(flavour: str) -> tuple[str, ...]:
    """Packages whose every sub-module goes into ``flavour``."""
    return COLLECT_PACKAGES + (FULL_COLLECT_PACKAGES if check_flavour(flavour) == "full" else ())


def module_collection_mode(flavour: str) -> dict[str, str]:
    """PyInstaller ``module_collection_mode`` of ``flavour``."""
    return dict(FULL_MODULE_COLLECTION_MODE) if check_flavour(flavour) == "full" else {}


def check_flavour(flavour: str) -> str:
    """``flavour`` if known; otherwise exit with a one-line message (a build script's user error)."""
    if flavour not in FLAVOURS:
        sys.exit(f"error: unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    return flavour


def excludes(flavour: str) -> list[str]:
    """Module names PyInstaller must leave out of ``flavour``."""
    check_flavour(flavour)
    names = list(COMMON_EXCLUDES)
    if flavour == "viewer":
        names += TORCH_MODULES + VIEWER_ONLY_EXCLUDES
    return names


def version() -> str:
    """MetaScope's version, read from ``engine/__init__.py`` without importing the engine."""
    text = (ROOT / "engine" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    if not match:
        sys.exit("error: engine/__init__.py defines no __version__")
    return match.group(1)


def dist_dir(flavour: str) -> Path:
    """Folder PyInstaller writes ``flavour``'s bundle into (the bundle is ``<dist>/metascope``)."""
    return OUT_DIR / check_flavour(flavour)


def bundle_dir(flavour: str) -> Path:
    """The one-folder bundle of ``flavour``: the ``metascope`` executable and ``_internal/``."""
    return dist_dir(flavour) / APP_NAME


def build_info(flavour: str) -> str:
    """Contents of :data:`BUILD_INFO_NAME`: flavour, version and whether training is included."""
    return json.dumps(
        {"app": DISPLAY_NAME, "version": version(), "flavour": flavour, "training": flavour == "full"}, indent=2
    )


def folder_size(path: Path) -> int:
    """Bytes of all regular files under ``path`` (symbolic links not followed)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
