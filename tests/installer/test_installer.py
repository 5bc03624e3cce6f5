"""Installers: packaging rules (fast) and the real build + install + run (slow).

The slow test is what a release runs: it builds the viewer bundle and its .deb, unpacks the
package into a temporary root and runs the installed app there in a clean environment
(``build/verify_install.py``). The fast tests pin the packaging decisions that a user would
notice if they broke: the viewer has no torch, the package names the system libraries Qt needs,
the launcher and the desktop entry point at the installed executable.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"


@pytest.fixture(scope="module")
def build_modules():
    """``bundle``, ``deb_package`` and ``make_installer`` from build/ (a script folder, not a package)."""
    sys.path.insert(0, str(BUILD))
    try:
        import bundle
        import deb_package
        import make_installer

        yield bundle, deb_package, make_installer
    finally:
        sys.path.remove(str(BUILD))


def _elf64(tmp_path: Path, name: str, offset: int, vaddr: int, align: int = 0x1000) -> Path:
    """A minimal ELF64 little-endian file with one PT_LOAD program header."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff: program headers right after the header
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 1, 5, offset, vaddr, vaddr, 0x100, 0x100, align)
    path = tmp_path / name
    path.write_bytes(bytes(header) + phdr)
    return path


def test_strip_keeps_only_loadable_libraries(build_modules, tmp_path):
    _, _, make_installer = build_modules
    assert make_installer.load_segments_aligned(_elf64(tmp_path, "ok.so", 0x288800, 0x289800))
    # what strip leaves of a patchelf-rewritten library: offset and address disagree mod the page
    assert not make_installer.load_segments_aligned(_elf64(tmp_path, "bad.so", 0x15C8670, 0x15CA000))
    (tmp_path / "text").write_bytes(b"not an ELF file at all" * 4)
    assert not make_installer.load_segments_aligned(tmp_path / "text")


def test_viewer_leaves_out_torch_and_full_keeps_it(build_modules):
    bundle, _, _ = build_modules
    viewer, full = bundle.excludes("viewer"), bundle.excludes("full")
    for name in ("torch", "torchvision", "onnxscript", "ssl"):
        assert name in viewer and name not in full
    assert "PySide6.QtQml" in viewer and "PySide6.QtQml" in full
    assert bundle.collect_packages("full") == ("engine", "gui", "onnxscript")
    with pytest.raises(SystemExit, match="unknown flavour"):
        bundle.excludes("tiny")


def test_pruned_files(build_modules):
    bundle, _, _ = build_modules
    datas = [
        ("torch/bin/test_api", "/x", "DATA"),
        ("torch/bin/FileStoreTest", "/x", "DATA"),
        ("torch/bin/torch_shm_manager", "/x", "DATA"),
        ("PySide6/Qt/translations/qt_de.qm", "/x", "DATA"),
        ("resources/icons/metascope.svg", "/x", "DATA"),
        ("matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf", "/x", "DATA"),
    ]
    kept = [d[0] for d in bundle.prune_datas(datas)]
    assert kept == [
        "torch/bin/torch_shm_manager",
        "resources/icons/metascope.svg",
        "matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf",
    ]


def test_version_comes_from_the_engine(build_modules):
    bundle, _, _ = build_modules
    from engine import __version__

    assert bundle.version() == __version__
    info = json.loads(bundle.build_info("viewer"))
    assert info == {"app": "MetaScope", "version": __version__, "flavour": "viewer", "training": False}


def test_control_file_is_valid_deb822(build_modules):
    bundle, deb_package, _ = build_modules
    text = deb_package.control_file("viewer", 351_000, ["libc6 (>= 2.36)", "libegl1", "libxcb-icccm4"], "amd64")
    assert text.endswith("\n") and "\n\n" not in text
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(" "):
            assert line.strip(), "continuation lines must not be empty (use ' .')"
            continue
        key, value = line.split(": ", 1)
        fields[key] = value
    assert fields["Package"] == "metascope-viewer"
    assert fields["Version"] == bundle.version()
    assert fields["Architecture"] == "amd64"
    assert fields["Installed-Size"] == "351000"
    assert fields["Depends"] == "libc6 (>= 2.36), libegl1, libxcb-icccm4"
    assert fields["Conflicts"] == "metascope" and fields["Replaces"] == "metascope"
    assert " ." in text.splitlines()  # paragraph break in the long description
    assert deb_package.package_name("full") == "metascope"


def test_depends_maps_sonames_and_refuses_unknown_ones(build_modules, monkeypatch, tmp_path):
    _, deb_package, _ = build_modules
    libs = {"libc.so.6": ["metascope"], "libxcb-icccm.so.4": ["a"], "libEGL.so.1": ["b"], "libm.so.6": ["c"]}
    monkeypatch.setattr(deb_package, "system_libraries", lambda root: libs)
    monkeypatch.setattr(deb_package, "minimum_glibc", lambda root: "2.31")
    assert deb_package.depends(tmp_path) == ["libc6 (>= 2.31)", "libegl1", "libxcb-icccm4"]
    libs["libfancy.so.3"] = ["_internal/somewhere/plugin.so"]
    with pytest.raises(deb_package.PackagingError, match="libfancy.so.3.*plugin.so"):
        deb_package.depends(tmp_path)


def test_desktop_entry_launches_the_installed_command(build_modules):
    _, deb_package, _ = build_modules
    entry = deb_package.desktop_entry()
    lines = entry.splitlines()
    assert lines[0] == "[Desktop Entry]"
    keys = dict(line.split("=", 1) for line in lines[1:])
    assert keys["Type"] == "Application" and keys["Terminal"] == "false"
    assert keys["Exec"] == "metascope %F" and keys["Icon"] == "metascope"
    assert keys["Categories"].endswith(";") and keys["MimeType"].endswith(";")


def test_spec_and_installer_scripts_agree(build_modules):
    compile((BUILD / "metascope.spec").read_text(encoding="utf-8"), "metascope.spec", "exec")
    iss = (BUILD / "windows" / "metascope.iss").read_text(encoding="utf-8")
    spec = (BUILD / "metascope.spec").read_text(encoding="utf-8")
    # the Windows executables the spec builds are the ones the installer installs and links
    assert 'name="MetaScope" if _windows' in spec and 'f"{bundle.APP_NAME}-cli"' in spec
    assert "{app}\\MetaScope.exe" in iss and "{app}\\metascope-cli.exe" in iss
    assert '..\\out\\" + Flavour + "\\metascope' in iss
    hook = (BUILD / "hooks" / "hook-openslide_bin.py").read_text(encoding="utf-8")
    assert "collect_dynamic_libs" in hook and "*.so*" in hook


def _can_build() -> str | None:
    if not sys.platform.startswith("linux"):
        return "installers are verified on Linux"
    for tool in ("dpkg-deb", "dpkg", "ldd", "objdump", "strip"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        return "PyInstaller not installed (pip install -e '.[build]')"
    return None


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_built_deb_installs_and_runs(tmp_path):
    """Build the viewer bundle and .deb, install into a temporary root, run selftest and the GUI."""
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    shot = tmp_path / "screenshot.png"
    proc = subprocess.run(
        [sys.executable, str(BUILD / "verify_install.py"), "--flavour", "viewer", "--deb-level", "1",
         "--screenshot", str(shot)],
        cwd=ROOT, capture_output=True, text=True, timeout=3500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    facts = json.loads((BUILD / "out" / "verify-viewer.json").read_text(encoding="utf-8"))
    assert facts["failures"] == []
    assert facts["selftest_auc"] >= 0.9
    assert facts["gui_window_shown_wall_s"] < 30
    assert shot.is_file() and shot.stat().st_size > 10_000
