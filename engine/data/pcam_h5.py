"""PatchCamelyon HDF5 pairs: ``*_x.h5`` (``(N, 96, 96, 3)`` uint8) and ``*_y.h5`` (``(N, 1, 1, 1)``).

Patches are read lazily: the file is opened on first use in each process (after a fork or in a
spawned data-loader worker the handle is reopened), and h5py's global lock makes reads from
several threads safe.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.base import PCAM_MPP, ItemCheck, PatchDataset, _digest, check_mpp, infer_positive_class, parse_size
from engine.data.tables import find_column, read_table
from engine.errors import DatasetError

H5_EXTS = (".h5", ".hdf5", ".he5")


def _strip_h5(name: str) -> str:
    lower = name.lower()
    for ext in H5_EXTS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def find_pairs(folder: Path) -> list[tuple[Path, Path | None]]:
    """``(x file, y file or None)`` for every ``*_x.h5`` in ``folder``, sorted by name."""
    out = []
    for p in sorted(folder.iterdir()):
        stem = _strip_h5(p.name)
        if stem != p.name and stem.endswith("_x") and p.is_file():
            out.append((p, _partner(p)))
    return out


def _partner(x_path: Path) -> Path | None:
    stem = _strip_h5(x_path.name)[:-2]
    for ext in H5_EXTS:
        cand = x_path.with_name(f"{stem}_y{ext}")
        if cand.is_file():
            return cand
    return None


def resolve_pair(path: Path, split: str | None = None) -> tuple[Path, Path | None]:
    """The ``(x, y)`` files for ``path`` (either file of a pair, or a folder with one pair).

    Raises:
        DatasetError: no pair, or several pairs in a folder and no ``split`` chosen.
    """
    if path.is_file():
        stem = _strip_h5(path.name)
        if stem.endswith("_y"):
            for ext in H5_EXTS:
                cand = path.with_name(f"{stem[:-2]}_x{ext}")
                if cand.is_file():
                    return cand, path
            raise DatasetError(f"{path} holds labels; its patches file ({stem[:-2]}_x.h5) is missing")
        return path, _partner(path) if stem.endswith("_x") else None
    pairs = find_pairs(path)
    if split is not None:
        pairs = [p for p in pairs if f"_{split}_" in p[0].name or p[0].name.startswith(f"{split}_")]
    if not pairs:
        raise DatasetError(f"no PCam HDF5 file (*_x.h5) found in {path}" + (f" for split {split!r}" if split else ""))
    if len(pairs) > 1:
        names = ", ".join(p[0].name for p in pairs)
        raise DatasetError(f"{path} holds several PCam pairs ({names}): give the *_x.h5 file or choose a split")
    return pairs[0]


def _only_dataset(f: Any, preferred: str, path: Path) -> str:
    import h5py

    if preferred in f and isinstance(f[preferred], h5py.Dataset):
        return preferred
    names = [k for k in f if isinstance(f[k], h5py.Dataset)]
    if len(names) != 1:
        raise DatasetError(f"{path}: expected one dataset named {preferred!r}, found {', '.join(names) or 'none'}")
    return names[0]


class PCamH5Dataset(PatchDataset):
    """Patches from a PCam-style HDF5 pair, read lazily.

    Args:
        x_path: the patches file: a dataset ``(N, H, W, 3)`` uint8 (named ``x`` or the only one).
        y_path: the labels file: ``(N,)`` or ``(N, 1, 1, 1)`` integers, or ``None`` (unlabelled).
        labelled: ``False`` ignores ``y_path``.
        mpp: microns per pixel; default ``PCAM_MPP``.
        class_names: names per integer label; default ``("0", "1")`` for binary labels.
        positive_class: positive class name or index.
        resize: ``(h, w)`` or side to resize every patch to.

    Raises:
        DatasetError: unreadable file, wrong shapes, patch and label counts differ.
    """

    def __init__(
        self,
        x_path: Path,
        y_path: Path | None,
        *,
        labelled: bool = True,
        mpp: float | None = None,
        class_names: Sequence[str] | None = None,
        positive_class: str | int | None = None,
        resize: int | Sequence[int] | None = None,
    ) -> None:
        import h5py

        self.x_path = str(x_path)
        self.y_path = str(y_path) if y_path is not None else None
        self.source = str(x_path)
        self.fmt = "pcam_h5"
        self.paths = None
        warnings: list[str] = []
        try:
            with h5py.File(x_path, "r") as f:
                self._x_key = _only_dataset(f, "x", x_path)
                shape, dtype = f[self._x_key].shape, f[self._x_key].dtype
        except OSError as exc:
            raise DatasetError(f"cannot open HDF5 file {x_path}: {exc}") from None
        if len(shape) != 4 or shape[3] not in (3, 4) or dtype != np.uint8:
            raise DatasetError(f"{x_path}: patches must be uint8 (N, H, W, 3), found {dtype} {shape}")
        n = int(shape[0])
        if n == 0:
            raise DatasetError(f"{x_path}: the dataset is empty")
        self._n = n
        self.native_size = (int(shape[1]), int(shape[2]))
        self._resize_to = parse_size(resize)
        self.patch_size = self._resize_to or self.native_size
        if labelled:
            if y_path is None:
                raise DatasetError(f"{x_path}: the labels file (*_y.h5) is missing; open it unlabelled for prediction")
            try:
                with h5py.File(y_path, "r") as f:
                    y = np.asarray(f[_only_dataset(f, "y", y_path)][...]).reshape(-1)
            except OSError as exc:
                raise DatasetError(f"cannot open HDF5 file {y_path}: {exc}") from None
            if len(y) != n:
                raise DatasetError(f"{y_path} has {len(y)} labels for {n} patches in {Path(x_path).name}")
            labels = y.astype(np.int64)
            top = int(labels.max())
            if class_names is None:
                class_names = tuple(str(k) for k in range(max(2, top + 1)))
            k = len(class_names)
            labels[(labels < 0) | (labels >= k)] = -1
            self.labels = labels
            self.class_names = tuple(str(c) for c in class_names)
            self.positive_class = infer_positive_class(self.class_names, positive_class)
        else:
            self.labels = np.full(n, -1, np.int64)
            self.class_names = tuple(str(c) for c in class_names) if class_names else ()
            self.positive_class = infer_positive_class(self.class_names, positive_class) if self.class_names else -1
        stem = _strip_h5(Path(x_path).name)[:-2] if _strip_h5(Path(x_path).name).endswith("_x") else _strip_h5(Path(x_path).name)
        self.ids = [f"{stem}_{i:06d}" for i in range(n)]
        self.groups = self._meta_groups(Path(x_path).with_name(f"{stem}_meta.csv"), n, warnings)
        user = check_mpp(mpp)
        native_mpp = user if user is not None else PCAM_MPP
        if self._resize_to is not None and self._resize_to != self.native_size:
            native_mpp = native_mpp * self.native_size[1] / self._resize_to[1]
        self.mpp = native_mpp
        self.mpp_source = "user" if user is not None else "format"
        self.open_warnings = tuple(warnings)
        self._lock = threading.Lock()
        self._handle: Any = None
        self._pid = -1

    @staticmethod
    def _meta_groups(meta: Path, n: int, warnings: list[str]) -> np.ndarray | None:
        # PCam ships *_meta.csv with the source slide ("wsi") of every patch: group by slide
        if not meta.is_file():
            return None
        header, rows = read_table(meta)
        col = find_column(header, None, ("wsi", "slide", "patient", "group"))
        if col is None:
            return None
        if len(rows) != n:
            warnings.append(f"{meta.name} has {len(rows)} rows for {n} patches; slide groups are not used")
            return None
        values = np.array([r[col] if col < len(r) else "" for r in rows], dtype=str)
        return np.unique(values, return_inverse=True)[1].astype(np.int64)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = -1
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _x(self) -> Any:
        # reopen after fork: an HDF5 handle must not be shared across processes
        if self._handle is None or self._pid != os.getpid():
            import h5py

            with self._lock:
                if self._handle is None or self._pid != os.getpid():
                    try:
                        self._handle = h5py.File(self.x_path, "r")
                    except OSError as exc:
                        raise DatasetError(f"cannot open HDF5 file {self.x_path}: {exc}") from None
                    self._pid = os.getpid()
        return self._handle[self._x_key]

    def close(self) -> None:
        """Close the HDF5 handle of this process (reopened on the next read)."""
        with self._lock:
            if self._handle is not None and self._pid == os.getpid():
                self._handle.close()
            self._handle = None

    def __len__(self) -> int:
        return self._n

    def _finish(self, arr: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(arr[..., :3])
        if self._resize_to is not None and arr.shape[:2] != self._resize_to:
            from engine.data.base import _resize

            arr = _resize(arr, self._resize_to)
        return arr

    def read(self, i: int) -> np.ndarray:
        if not -self._n <= i < self._n:
            raise IndexError(i)
        try:
            arr = np.asarray(self._x()[int(i) % self._n])
        except OSError as exc:
            raise DatasetError(f"cannot read patch {i} of {self.x_path}: {exc}") from None
        return self._finish(arr)

    def _read_block(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        x = self._x()
        if len(sorted_idx) and sorted_idx[-1] - sorted_idx[0] + 1 == len(sorted_idx):
            block = np.asarray(x[int(sorted_idx[0]) : int(sorted_idx[-1]) + 1])
        else:
            # h5py fancy indexing needs increasing, unique indices
            uniq, inverse = np.unique(sorted_idx, return_inverse=True)
            block = np.asarray(x[uniq.tolist()])[inverse]
        out = np.empty_like(block)
        out[order] = block
        return out

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        """Patches ``indices`` as ``uint8`` ``(B, H, W, 3)`` in one HDF5 read."""
        try:
            block = self._read_block(indices)
        except OSError as exc:
            raise DatasetError(f"cannot read patches of {self.x_path}: {exc}") from None
        if self._resize_to is None:
            return np.ascontiguousarray(block[..., :3])
        return np.stack([self._finish(b) for b in block])

    def check_items(self, indices: Sequence[int], decode: bool = True) -> list[ItemCheck]:
        """Hash each stored patch (read in one block per call)."""
        try:
            block = self._read_block(indices)
        except OSError as exc:
            return [ItemCheck(error=f"cannot read: {exc}") for _ in indices]
        size = self.native_size
        return [ItemCheck(digest=_digest(b.tobytes()), size=size) for b in block]
