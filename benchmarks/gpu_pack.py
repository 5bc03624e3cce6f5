"""Pack what benchmarks/gpu_device.sh needs on an offline GPU machine into ``.gpuwheels/``.

The lent H200 machine has a CUDA PyTorch, onnx and most of MetaScope's dependencies, but no
network, no onnxruntime with CUDA, no OpenSlide and no imagecodecs. This script, run here
(where pip reaches the package index), downloads those wheels for the machine's Python (3.12,
x86-64) and makes onnxruntime-gpu small enough to travel: its CUDA provider library carries
GPU code for six architectures (sm_75 to sm_120, 218 MB); only sm_90 (H100/H200) is kept, the
other cubins are zeroed in place (headers intact, so the library's layout does not change) and
the result is xz-compressed. The archive is split into parts that fit one device call each.

    .venv/bin/python benchmarks/gpu_pack.py            # -> .gpuwheels/part-00 ... (git-ignored)

Then (see benchmarks/RESULTS.md, "GPU path"): one device call per part but the last with
``bash benchmarks/gpu_device.sh --stash`` and ``carry: [".gpuwheels"]``, the last one with
``bash benchmarks/gpu_device.sh`` and the same carry: the script reassembles the parts.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".gpuwheels"
ORT_GPU = "onnxruntime-gpu==1.31.1"  # built for CUDA 13, as the machine's PyTorch (cu130)
EXTRA = ["openslide-python==1.4.7", "openslide-bin==4.0.1.2", "imagecodecs==2026.3.6"]  # as in .venv here
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
FATBIN_MAGIC = 0xBA55ED50
KEEP_SM = 90
PART_BYTES = 48 * 2**20  # + the working tree (~10 MB) stays well under a call's 64 MiB


def _download(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(dest)]  # fmt: skip
    for p in PLATFORMS:
        cmd += ["--platform", p]
    before = set(dest.glob("*.whl"))
    subprocess.run([*cmd, spec], check=True)
    new = set(dest.glob("*.whl")) - before
    name = spec.split("=")[0].replace("-", "_").lower()
    match = [w for w in (new or dest.glob("*.whl")) if w.name.lower().startswith(name)]
    if not match:
        raise SystemExit(f"error: pip did not download {spec}")
    return sorted(match)[-1]


def _section(data: bytes | bytearray, name: bytes) -> tuple[int, int] | None:
    """File offset and size of an ELF64 section."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    str_off = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        base = shoff + i * shentsize
        name_off = struct.unpack_from("<I", data, base)[0]
        end = data.index(b"\0", str_off + name_off)
        if bytes(data[str_off + name_off : end]) == name:
            off, size = struct.unpack_from("<QQ", data, base + 0x18)
            return off, size
    return None


def trim_fatbins(data: bytearray, keep_sm: int = KEEP_SM) -> tuple[int, int]:
    """Zero the payload of every cubin/PTX entry not built for ``keep_sm``; returns (kept, zeroed) bytes."""
    sec = _section(data, b".nv_fatbin")
    if sec is None:
        return 0, 0
    pos, end = sec[0], sec[0] + sec[1]
    kept = zeroed = 0
    while pos < end:
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # alignment padding between fat binaries
            continue
        e, stop = pos + hsize, pos + hsize + fsize
        while e < stop:
            _kind, _v, ehsize, padded = struct.unpack_from("<HHII", data, e)
            sm = struct.unpack_from("<I", data, e + 28)[0]
            if sm == keep_sm:
                kept += padded
            else:
                data[e + ehsize : e + ehsize + padded] = bytes(padded)
                zeroed += padded
            e += ehsize + padded
        pos = stop
    return kept, zeroed


def pack_ort(wheel: Path, tar: tarfile.TarFile) -> None:
    """The ``onnxruntime`` package of the wheel, CUDA provider trimmed, into ``tar`` as ``site/``."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(("onnxruntime/", "onnxruntime_gpu-")):
                continue
            data = bytearray(z.read(info))
            if info.filename.endswith("libonnxruntime_providers_cuda.so"):
                kept, zeroed = trim_fatbins(data)
                print(f"  CUDA provider: kept {kept / 1e6:.0f} MB of sm_{KEEP_SM} code, zeroed {zeroed / 1e6:.0f} MB")
            ti = tarfile.TarInfo("site/" + info.filename)
            ti.size = len(data)
            ti.mode = 0o755 if info.filename.endswith(".so") or ".so." in info.filename else 0o644
            tar.addfile(ti, io.BytesIO(bytes(data)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--part-mb", type=int, default=PART_BYTES // 2**20)
    args = ap.parse_args()
    out = Path(args.out)
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.gpuwheels/" not in (exclude.read_text() if exclude.exists() else ""):
        with open(exclude, "a") as fh:
            fh.write("/.gpuwheels/\n")
    with tempfile.TemporaryDirectory() as tmp:
        dl = Path(tmp) / "dl"
        dl.mkdir()
        print(f"downloading {ORT_GPU} and {', '.join(EXTRA)} for CPython 3.12 x86-64")
        ort = _download(ORT_GPU, dl)
        extra = [_download(spec, dl) for spec in EXTRA]
        archive = Path(tmp) / "gpu-site.tar.xz"
        with tarfile.open(archive, "w:xz", preset=6) as tar:
            pack_ort(ort, tar)
            for w in extra:
                tar.add(w, arcname="wheels/" + w.name)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        size = archive.stat().st_size
        step = args.part_mb * 2**20
        with open(archive, "rb") as fh:
            for i in range(0, size, step):
                (out / f"part-{i // step:02d}").write_bytes(fh.read(step))
    parts = sorted(out.glob("part-*"))
    print(f"{size / 2**20:.1f} MiB in {len(parts)} part(s) under {out}:")
    for p in parts:
        print(f"  {p.name}  {p.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    raise SystemExit(main())
