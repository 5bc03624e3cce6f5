"""Atomic file writing: write to a temporary name in the same folder, fsync, then rename.

An interrupted run therefore never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import OutputError

# os.umask can only be read by setting it: read once at import (before worker threads exist)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _default_mode(is_dir: bool) -> int:
    """Permissions a plain ``open()``/``mkdir()`` would give (mkstemp/mkdtemp use 0600/0700)."""
    return (0o777 if is_dir else 0o666) & ~_UMASK


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and check that files can be created in it.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write to folder {p}: {exc.strerror or exc}") from exc
    return p


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode(is_dir=False))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths (no numpy import needed)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (renames, new files) durable; POSIX only (Windows cannot open a
    folder for fsync, and its renames are journaled by NTFS)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; nothing more to do there
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (written by callers with plain writes)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                with open(os.path.join(folder, name), "rb") as fh:
                    os.fsync(fh.fileno())
            except OSError:
                continue
        _fsync_dir(Path(folder))


def old_dir(path: str | os.PathLike[str]) -> Path:
    """The hidden name :func:`atomic_dir` parks the previous folder under while replacing it."""
    final = Path(path)
    return final.with_name(f".{final.name}.old")


def recover_dir(path: str | os.PathLike[str]) -> Path:
    """Undo a replacement :func:`atomic_dir` could not finish (a crash between its two renames
    leaves the previous complete folder only under its hidden ``.old`` name): when ``path`` is
    missing and the ``.old`` folder exists, rename it back. Call before reading a result folder.

    Returns:
        ``path``.
    """
    final = Path(path)
    old = old_dir(final)
    if not final.exists() and old.is_dir():
        try:
            os.replace(old, final)
        except OSError:
            return final  # another process recovered it first, or the folder is read-only
        _fsync_dir(final.parent)
    return final


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` as a whole.

    Used for per-slide result folders: readers see either the old complete folder or the new
    complete folder, never a mix. The new folder's files are fsynced before the renames and the
    parent after them (POSIX); a crash between the two renames is undone by :func:`recover_dir`
    (called here first, and by readers).
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
    old = old_dir(final)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(is_dir=True))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        recover_dir(final)  # an error between the renames: put the previous folder back now
        raise
