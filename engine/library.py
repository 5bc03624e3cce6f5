"""The model library: a folder of MetaScope model packages (``.onnx``), listed with metadata.

Each model's sha256 is recorded in ``library.json`` when it is added; :func:`verify` checks the
file against it before use so a modified or truncated model is never run silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelPackageError
from engine.fileio import atomic_write_json
from engine.modelpkg import ModelMetadata, read_metadata, sha256_file, sidecar_paths, write_metadata
from engine.paths import models_dir

INDEX_NAME = "library.json"


@dataclass(frozen=True, slots=True)
class LibraryEntry:
    path: Path
    metadata: ModelMetadata
    sha256: str

    @property
    def name(self) -> str:
        return self.metadata.name or self.path.stem


class ModelLibrary:
    """A folder of model packages with a sha256 index."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else models_dir()

    # -- index -------------------------------------------------------------------------------
    def _index(self) -> dict[str, str]:
        p = self.folder / INDEX_NAME
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return {str(k): str(v) for k, v in data.get("sha256", {}).items()}

    def _save_index(self, index: dict[str, str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / INDEX_NAME, {"sha256": index})

    # -- queries -----------------------------------------------------------------------------
    def entries(self) -> list[LibraryEntry]:
        """All readable model packages, sorted by name; unreadable files are skipped."""
        if not self.folder.is_dir():
            return []
        index = self._index()
        out: list[LibraryEntry] = []
        for p in sorted(self.folder.glob("*.onnx")):
            try:
                meta = read_metadata(p)
            except ModelPackageError:
                continue
            out.append(LibraryEntry(p, meta, index.get(p.name) or sha256_file(p)))
        return sorted(out, key=lambda e: e.name.lower())

    def verify(self, path: str | os.PathLike[str]) -> str:
        """Check a library model against its recorded sha256; returns the digest.

        Raises:
            ModelPackageError: the file changed since it was added.
        """
        p = Path(path)
        digest = sha256_file(p)
        recorded = self._index().get(p.name) if p.parent.resolve() == self.folder.resolve() else None
        if recorded is not None and recorded != digest:
            raise ModelPackageError(f"{p.name} changed since it was added to the library (sha256 mismatch)")
        return digest

    # -- changes -----------------------------------------------------------------------------
    def add(self, src: str | os.PathLike[str], name: str | None = None) -> LibraryEntry:
        """Copy a model package (or a plain ONNX with a sidecar JSON) into the library.

        The sidecar's metadata is embedded so the library copy is self-describing.
        """
        src_p = Path(src)
        meta = read_metadata(src_p)  # validates
        stem = _safe_name(name or meta.name or src_p.stem)
        dst = self.folder / f"{stem}.onnx"
        n = 2
        while dst.exists():
            dst = self.folder / f"{stem}-{n}.onnx"
            n += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        has_sidecar = any(s.is_file() for s in sidecar_paths(src_p))
        if has_sidecar or name:
            if name:
                from dataclasses import replace

                meta = replace(meta, name=name)
            write_metadata(src_p, meta, out_path=dst)
        else:
            tmp = dst.with_name(f".{dst.name}.part")
            shutil.copyfile(src_p, tmp)
            os.replace(tmp, dst)
        index = self._index()
        index[dst.name] = sha256_file(dst)
        self._save_index(index)
        return LibraryEntry(dst, meta, index[dst.name])

    def remove(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        index = self._index()
        index.pop(p.name, None)
        p.unlink(missing_ok=True)
        self._save_index(index)

    def rename(self, path: str | os.PathLike[str], new_name: str) -> LibraryEntry:
        """Change a model's display name (metadata) and file name."""
        from dataclasses import replace

        p = Path(path)
        meta = replace(read_metadata(p), name=new_name)
        dst = self.folder / f"{_safe_name(new_name)}.onnx"
        if dst.exists() and dst.resolve() != p.resolve():
            raise ModelPackageError(f"a model named {dst.stem!r} already exists")
        write_metadata(p, meta, out_path=dst)
        index = self._index()
        index.pop(p.name, None)
        if dst.resolve() != p.resolve():
            p.unlink(missing_ok=True)
        index[dst.name] = sha256_file(dst)
        self._save_index(index)
        return LibraryEntry(dst, meta, index[dst.name])


def _safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return s or "model"
