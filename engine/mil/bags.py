"""Per-slide feature bags in HDF5: the hand-off between feature extraction and MIL training.

One file per slide, ``FEATURES_DIR/<slide_id>.h5``:

- ``features``: float32 ``(N, D)``, one embedding per tissue tile.
- ``coords``: int64 ``(N, 2)``, the tiles' top-left ``(x, y)`` in level-0 pixels.
- ``grid_rc``: int64 ``(N, 2)``, each tile's ``(row, col)`` in the tile grid.
- attributes: ``extractor_sha256``, ``extractor_name``, ``mpp`` (analysis resolution),
  ``tile_size`` (model input pixels), ``tile_size_level0`` and ``stride_level0`` (level-0 pixels),
  ``origin_level0`` (x, y of grid cell (0, 0)), ``grid_shape`` (rows, cols), ``slide_path``,
  ``slide_dimensions``, ``fingerprint`` (JSON of every setting that changes the bag: see
  :func:`engine.mil.features.bag_fingerprint`), ``complete`` (written last).

Files are written to a temporary name and renamed, so a file under the final name is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError
from engine.fileio import atomic_path

BAG_SUFFIX = ".h5"
#: Fingerprint keys that are feature-extraction settings (besides extractor, mpp and tile size):
#: the same for a whole cohort, and embedded in an exported MIL model.
BAG_SETTING_KEYS = ("min_tissue_fraction", "max_tiles", "mask_px_per_tile")


@dataclass(frozen=True, slots=True)
class Bag:
    """The features of one slide.

    Attributes:
        features: float32 ``(N, D)``.
        coords: int64 ``(N, 2)`` level-0 ``(x, y)`` of each tile's top-left corner.
        grid_rc: int64 ``(N, 2)`` ``(row, col)`` of each tile in the grid.
        attrs: the file attributes (see module docstring).
    """

    features: np.ndarray
    coords: np.ndarray
    grid_rc: np.ndarray
    attrs: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def bag_path(features_dir: str | os.PathLike[str], slide_id: str) -> Path:
    return Path(features_dir) / f"{slide_id}{BAG_SUFFIX}"


def write_bag(path: str | os.PathLike[str], bag: Bag) -> None:
    """Write a bag atomically.

    Raises:
        OutputError: the folder cannot be written.
    """
    import h5py

    feats = np.ascontiguousarray(bag.features, dtype=np.float32)
    if feats.ndim != 2 or bag.coords.shape != (feats.shape[0], 2) or bag.grid_rc.shape != (feats.shape[0], 2):
        raise ValueError("bag arrays must be features (N, D), coords (N, 2), grid_rc (N, 2)")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=np.asarray(bag.coords, dtype=np.int64))
        f.create_dataset("grid_rc", data=np.asarray(bag.grid_rc, dtype=np.int64))
        for k, v in bag.attrs.items():
            f.attrs[k] = v
        f.attrs["complete"] = True


def bag_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The attributes of a complete bag file, or ``None`` if it is absent or unreadable."""
    import h5py

    p = Path(path)
    if not p.is_file():
        return None
    try:
        with h5py.File(p, "r") as f:
            if not bool(f.attrs.get("complete", False)) or "features" not in f:
                return None
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            attrs["n_tiles"] = int(f["features"].shape[0])
            attrs["feature_dim"] = int(f["features"].shape[1])
            return attrs
    except OSError:
        return None


def stored_fingerprint(info: dict[str, Any]) -> dict[str, Any] | None:
    """The fingerprint recorded in a bag's attributes (``None`` for bags written without one)."""
    raw = info.get("fingerprint")
    if not raw:
        return None
    try:
        fp = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return fp if isinstance(fp, dict) else None


def fingerprint_changes(path: str | os.PathLike[str], fingerprint: dict[str, Any]) -> list[str] | None:
    """What differs between the bag at ``path`` and ``fingerprint``.

    Returns:
        ``None`` when there is no complete bag; ``[]`` when the bag was made with exactly these
        settings (it can be reused); else the names of the settings that changed (the bag must be
        recomputed). A bag written without a fingerprint reports ``["fingerprint"]``.
    """
    info = bag_info(path)
    if info is None:
        return None
    stored = stored_fingerprint(info)
    if stored is None:
        return ["fingerprint"]
    return sorted(k for k in set(stored) | set(fingerprint) if not _same(stored.get(k), fingerprint.get(k)))


def _same(a: Any, b: Any) -> bool:
    # resolutions are floats (compared with a tolerance); sizes and times are ints (exact)
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return bool(a == b)


def read_bag(path: str | os.PathLike[str]) -> Bag:
    """Read a bag file.

    Raises:
        DatasetError: missing, incomplete or unreadable file.
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"feature file not found: {p}")
    try:
        with h5py.File(p, "r") as f:
            if not bool(f.attrs.get("complete", False)):
                raise DatasetError(f"feature file {p.name} is incomplete; run feature extraction again")
            feats = np.asarray(f["features"][...], dtype=np.float32)
            coords = np.asarray(f["coords"][...], dtype=np.int64)
            grid = np.asarray(f["grid_rc"][...], dtype=np.int64)
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as exc:
        raise DatasetError(f"cannot read feature file {p.name}: {exc}") from exc
    return Bag(feats, coords, grid, attrs)


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v
