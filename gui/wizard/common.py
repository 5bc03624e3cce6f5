"""Pieces shared by the training wizard's pages: the dataset summary, message labels, formatting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QLabel, QLineEdit, QWidget

#: Labels of the dataset formats the engine reads (``engine.data.open.FORMATS``) for training.
FORMAT_LABELS: dict[str, str] = {
    "auto": "Detect automatically",
    "kaggle": "Kaggle: images + CSV (id,label)",
    "folders": "Class folders: ROOT/<class>/*.png",
    "pcam_h5": "PatchCamelyon HDF5 (*_x.h5 / *_y.h5)",
    "annotated_slides": "Slides + QuPath GeoJSON annotations",
}


def format_choices() -> list[tuple[str, str]]:
    """``(engine format name, label)`` for every labelled format the engine reads, ``auto`` first."""
    from engine.data.open import FORMATS

    # "images" is the unlabelled format (prediction only): it cannot train a classifier
    return [("auto", FORMAT_LABELS["auto"])] + [(f, FORMAT_LABELS.get(f, f)) for f in FORMATS if f != "images"]


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """What the wizard learned by opening a dataset (no pixels are kept).

    Attributes:
        path: the dataset path as given.
        fmt: the format asked for (``auto`` or a name) and ``detected_fmt`` the one found.
        mpp: microns per pixel entered by the user, or ``None`` (the dataset's own is used).
        counts: patches per class name, in class order.
        patch_size: ``(height, width)`` in pixels.
        dataset_mpp: microns per pixel of the patches as the engine reads them, or ``None``.
        groups: number of distinct groups (slides/patients), or ``None`` without groups.
        positive_class: index of the positive class.
        warnings: problems noticed while opening.
        dataset: the opened ``PatchDataset`` (lazy: holds no pixels), used for split previews.
    """

    path: str
    fmt: str
    detected_fmt: str
    mpp: float | None
    class_names: tuple[str, ...]
    counts: dict[str, int]
    patch_size: tuple[int, int]
    dataset_mpp: float | None
    groups: int | None
    positive_class: int
    warnings: tuple[str, ...] = ()
    dataset: Any = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "unlabelled")

    @classmethod
    def from_dataset(cls, ds: Any, path: str, fmt: str, mpp: float | None) -> DatasetSummary:
        d = ds.describe()
        counts = {str(k): int(v) for k, v in d["counts"].items()}
        return cls(
            path=path,
            fmt=fmt,
            detected_fmt=str(d["format"]),
            mpp=mpp,
            class_names=tuple(str(c) for c in d["class_names"]),
            counts=counts,
            patch_size=(int(d["patch_size"][0]), int(d["patch_size"][1])),
            dataset_mpp=d.get("mpp"),
            groups=d.get("groups"),
            positive_class=int(d.get("positive_class", -1)),
            warnings=tuple(str(w) for w in d.get("warnings", ())),
            dataset=ds,
        )

    def one_line(self) -> str:
        h, w = self.patch_size
        mpp = self.mpp if self.mpp is not None else self.dataset_mpp
        per_class = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        mpp_text = f"{mpp:g} µm/px" if mpp else "resolution unknown"
        return f"{self.n:,} patches ({per_class}) · {w}×{h} px · {mpp_text}"


class MessageLabel(QLabel):
    """A word-wrapped message line: red for errors, amber for warnings, grey for information."""

    STYLES = {
        "error": "color: #b00020; font-weight: 600;",
        "warning": "color: #8a5a00;",
        "info": "color: palette(text);",
        "ok": "color: #1b6e20;",
    }

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.kind = ""
        self.hide()

    def show_message(self, text: str, kind: str = "info") -> None:
        self.kind = kind if text else ""
        self.setStyleSheet(self.STYLES.get(kind, ""))
        self.setText(text)
        self.setVisible(bool(text))

    def clear_message(self) -> None:
        self.show_message("")


def human_count(n: int) -> str:
    """``3.4 M``, ``612 k``, ``950``."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 10_000:
        return f"{n / 1e3:.0f} k"
    return f"{n:,}"


def human_duration(seconds: float | None) -> str:
    """``1 h 05 min``, ``4 min 10 s``, ``12 s``; empty for unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


DATASET_FILE_FILTER = "Datasets (*.h5 *.hdf5 *.csv);;All files (*)"


def browse_dataset(parent: QWidget, path_edit: QLineEdit, *, folder: bool) -> None:
    """Let the user pick a dataset folder (or file) and put its path into ``path_edit``."""
    if folder:
        path = QFileDialog.getExistingDirectory(parent, "Choose a dataset folder", path_edit.text())
    else:
        path, _ = QFileDialog.getOpenFileName(parent, "Choose a dataset file", path_edit.text(), DATASET_FILE_FILTER)
    if path:
        path_edit.setText(path)
