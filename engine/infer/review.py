"""Patch review: every patch of an evaluation with its truth, probability and error kind.

Reads what ``metascope evaluate MODEL DATA --out DIR`` writes (``predictions.csv`` with ``id``,
``label``, ``p_<class>``..., ``predicted``, ``source``, ``index``; ``metrics.json`` with the
positive class and the threshold used) into :class:`ReviewRow` s: the positive class against the
rest, at the evaluation's threshold, each patch a true/false positive/negative. Errors come
first, the most confident first (:func:`sort_rows`); :func:`filter_rows` narrows them and
:func:`export_csv` writes them. :class:`PatchImages` reads a patch's pixels back (an image file,
a row of a PCam HDF5 file, or the evaluated dataset reopened for slide tiles and older outputs
without a ``source`` column). No Qt here: the GUI view and ``metascope review`` share it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError
from engine.fileio import atomic_write_text

PREDICTIONS_NAME = "predictions.csv"
METRICS_NAME = "metrics.json"
KINDS = ("FP", "FN", "TP", "TN")
ERROR_KINDS = frozenset({"FP", "FN"})
EXPORT_COLUMNS = ("id", "kind", "truth", "predicted", "probability", "confidence", "source", "index")
H5_EXTS = (".h5", ".hdf5", ".he5")


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """One evaluated patch.

    Attributes:
        id: the patch id (as in ``predictions.csv``).
        source: the image file, HDF5 file or slide holding the patch (``""`` when not recorded).
        index: the patch's row in the evaluated dataset (``-1`` when not recorded).
        truth: the true class name.
        probability: the model's probability of the positive class.
        predicted: the class called at the threshold (the positive class or ``"not <positive>"``
            for multi-class models; the other class for binary ones).
        kind: ``"TP"``, ``"FP"``, ``"FN"`` or ``"TN"`` (positive class vs rest).
        confidence: how sure the call was, 0 (at the threshold) to 1 (probability 0 or 1): for an
            error, how confidently wrong.
    """

    id: str
    source: str
    index: int
    truth: str
    probability: float
    predicted: str
    kind: str
    confidence: float

    @property
    def is_error(self) -> bool:
        return self.kind in ERROR_KINDS


@dataclass(frozen=True, slots=True)
class Review:
    """An evaluation ready to review.

    Attributes:
        folder: the evaluation folder.
        rows: every patch, sorted by :func:`sort_rows`.
        threshold: positive when ``probability >= threshold``.
        positive_class: the positive class name.
        class_names: the model's classes.
        metrics: ``metrics.json`` (empty when absent).
    """

    folder: Path
    rows: list[ReviewRow]
    threshold: float
    positive_class: str
    class_names: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)

    def counts(self, rows: Iterable[ReviewRow] | None = None) -> dict[str, int]:
        """Patches per kind (``TP``, ``FP``, ``FN``, ``TN``) of ``rows`` (default all)."""
        out = dict.fromkeys(KINDS, 0)
        for r in self.rows if rows is None else rows:
            out[r.kind] += 1
        return out


def confidence(probability: float, threshold: float) -> float:
    """Distance of ``probability`` from ``threshold``, scaled to 0..1 on its side."""
    if probability >= threshold:
        return 1.0 if threshold >= 1 else (probability - threshold) / (1 - threshold)
    return 1.0 if threshold <= 0 else (threshold - probability) / threshold


def _predictions_path(path: Path) -> Path:
    if path.is_dir() and not (path / PREDICTIONS_NAME).is_file() and (path / "validation" / PREDICTIONS_NAME).is_file():
        path = path / "validation"  # a training run folder: its validation patches (engine.train.run_evaluation)
    if path.is_dir():
        path = path / PREDICTIONS_NAME
    if not path.is_file():
        raise DatasetError(f"{path.parent} holds no {PREDICTIONS_NAME}: open the folder `metascope evaluate --out` wrote")
    return path


def _read_metrics(folder: Path) -> dict[str, Any]:
    p = folder / METRICS_NAME
    if not p.is_file():
        return {}
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{p} is damaged ({exc})") from None
    if not isinstance(m, dict):
        raise DatasetError(f"{p} is not an evaluation's metrics file")
    return m


def _positive(metrics: dict[str, Any], classes: list[str], csv_path: Path) -> str:
    pos = metrics.get("positive_class")
    if isinstance(pos, int) and 0 <= pos < len(classes):
        return classes[pos]
    if isinstance(pos, str) and pos in classes:
        return pos
    if len(classes) == 2:
        return classes[1]
    raise DatasetError(f"{csv_path}: cannot tell the positive class (no metrics.json beside it)")


def _threshold(metrics: dict[str, Any], override: float | None) -> float:
    t = override if override is not None else metrics.get("threshold", 0.5)
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise DatasetError(f"the threshold {t!r} is not a number") from None
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise DatasetError(f"the threshold must be between 0 and 1, not {t:g}")
    return t


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = list(reader.fieldnames or [])
    return header, list(reader)


def load_review(path: str | os.PathLike[str], threshold: float | None = None) -> Review:
    """Read an evaluation folder (or its ``predictions.csv``) into a :class:`Review`.

    Args:
        path: the folder ``metascope evaluate --out`` wrote, or the ``predictions.csv`` in it.
        threshold: call positive at this probability instead of the evaluation's threshold.

    Raises:
        DatasetError: no predictions, predictions without labels (``predict`` output), unreadable
            or damaged files.
    """
    csv_path = _predictions_path(Path(path))
    folder = csv_path.parent
    metrics = _read_metrics(folder)
    header, records = _read_table(csv_path)
    classes = [c[2:] for c in header if c.startswith("p_")]
    if "id" not in header or not classes:
        raise DatasetError(f"{csv_path} is not a patch evaluation's predictions (needs id and p_<class> columns)")
    if "label" not in header:
        raise DatasetError(f"{csv_path} has no true labels: patch review needs `metascope evaluate` output, not predict")
    positive = _positive(metrics, classes, csv_path)
    t = _threshold(metrics, threshold)
    other = classes[0] if len(classes) == 2 and classes[1] == positive else (
        classes[1] if len(classes) == 2 else f"not {positive}")
    rows = []
    for line, rec in enumerate(records, start=2):
        p, index = _number(rec.get(f"p_{positive}"), float), _number(rec.get("index") or "-1", int)
        if p is None or index is None or not 0.0 <= p <= 1.0:
            raise DatasetError(f"{csv_path}, line {line}: not a number (or not a probability)")
        truth = rec.get("label") or ""
        called_pos = p >= t
        kind = ("T" if called_pos == (truth == positive) else "F") + ("P" if called_pos else "N")
        rows.append(ReviewRow(rec.get("id") or "", rec.get("source") or "", index, truth, p,
                              positive if called_pos else other, kind, confidence(p, t)))
    if not rows:
        raise DatasetError(f"{csv_path} lists no patches")
    return Review(folder, sort_rows(rows), t, positive, classes, metrics)


def _number(text: str | None, kind: type) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        return None


def _sort_key(r: ReviewRow) -> tuple[int, float, str]:
    # errors first, most confidently wrong first; then correct calls, least confident first
    return (0, -r.confidence, r.id) if r.is_error else (1, r.confidence, r.id)


def sort_rows(rows: Iterable[ReviewRow]) -> list[ReviewRow]:
    """Errors (FP and FN) first, the most confident error first; then the correct calls, the
    closest to the threshold first (the near misses)."""
    return sorted(rows, key=_sort_key)


def filter_rows(
    rows: Sequence[ReviewRow],
    kinds: Iterable[str] | None = None,
    p_min: float = 0.0,
    p_max: float = 1.0,
    text: str = "",
) -> list[ReviewRow]:
    """The rows of ``kinds`` (default all) with ``p_min <= probability <= p_max`` whose id, source
    or truth contains ``text`` (case-insensitive); order kept."""
    wanted = set(KINDS if kinds is None else kinds)
    needle = text.strip().lower()
    return [
        r for r in rows
        if r.kind in wanted and p_min <= r.probability <= p_max
        and (not needle or needle in r.id.lower() or needle in r.source.lower() or needle in r.truth.lower())
    ]


def export_csv(rows: Iterable[ReviewRow], path: str | os.PathLike[str], threshold: float | None = None) -> int:
    """Write ``rows`` as CSV (:data:`EXPORT_COLUMNS`, plus ``threshold`` when given), atomically.

    Returns:
        The number of rows written.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(EXPORT_COLUMNS) + (["threshold"] if threshold is not None else []))
    n = 0
    for r in rows:
        row: list[Any] = [r.id, r.kind, r.truth, r.predicted, f"{r.probability:.6f}", f"{r.confidence:.4f}",
                          r.source, r.index if r.index >= 0 else ""]
        w.writerow(row + ([f"{threshold:g}"] if threshold is not None else []))
        n += 1
    atomic_write_text(path, buf.getvalue())
    return n


class PatchImages:
    """Reads the pixels of review rows: image files directly, PCam HDF5 rows by index, anything
    else (slide tiles, outputs without ``source``) through the evaluated dataset, reopened once
    from ``metrics.json``. Safe to call from several threads.
    """

    def __init__(self, review: Review) -> None:
        self.review = review
        self._lock = threading.Lock()
        self._h5: dict[str, Any] = {}
        self._dataset: Any = None
        self._id_index: dict[str, int] | None = None
        self._slides = (review.metrics.get("data") or {}).get("format") == "annotated_slides"

    def read(self, row: ReviewRow) -> np.ndarray:
        """``uint8`` RGB ``(H, W, 3)`` of ``row``'s patch.

        Raises:
            DatasetError: the file is gone or unreadable, or the data changed since the evaluation.
        """
        src = row.source
        low = src.lower()
        if self._slides:  # the source is the slide: the tile is cut again as the dataset cut it
            return self._from_dataset(row)
        if src and low.endswith(H5_EXTS) and row.index >= 0:
            try:
                return self._h5_file(src).read(row.index)
            except IndexError:
                raise DatasetError(f"patch {row.index} is not in {src} (the file changed since the evaluation)") from None
        if src and _is_image(low):
            from engine.data.base import read_image_file

            return read_image_file(src)
        return self._from_dataset(row)

    def _h5_file(self, src: str) -> Any:
        with self._lock:
            ds = self._h5.get(src)
            if ds is None:
                from engine.data.pcam_h5 import PCamH5Dataset

                if not Path(src).is_file():
                    raise DatasetError(f"HDF5 file not found: {src}")
                ds = self._h5[src] = PCamH5Dataset(Path(src), None, labelled=False)
            return ds

    def _from_dataset(self, row: ReviewRow) -> np.ndarray:
        with self._lock:
            if self._dataset is None:
                data = self.review.metrics.get("data") or {}
                if not data.get("path"):
                    raise DatasetError("the evaluation does not say which data it scored (no metrics.json)")
                from engine.data import open_dataset

                self._dataset = open_dataset(data["path"], fmt=data.get("format") or "auto", mpp=data.get("mpp"),
                                             labelled=True)
                self._id_index = None
            ds = self._dataset
            i = row.index
            if i < 0 or i >= len(ds) or ds.ids[i] != row.id:
                if self._id_index is None:
                    self._id_index = {pid: k for k, pid in enumerate(ds.ids)}
                i = self._id_index.get(row.id, -1)
        if i < 0:
            raise DatasetError(f"patch {row.id} is no longer in {ds.source} (the data changed since the evaluation)")
        return ds.read(i)

    def close(self) -> None:
        with self._lock:
            closer = getattr(self._dataset, "close", None)
            if callable(closer):
                closer()
            self._dataset = None
            self._h5 = {}


def _is_image(lower_path: str) -> bool:
    from engine.data.base import IMAGE_EXTS

    return lower_path.endswith(IMAGE_EXTS)


def summary_lines(review: Review, rows: Sequence[ReviewRow]) -> list[str]:
    """Human lines for the CLI: counts per kind, then one line per row."""
    c = review.counts()
    lines = [
        f"{len(review.rows):,} patches at threshold {review.threshold:g} ({review.positive_class} positive): "
        f"{c['FP']:,} false positives, {c['FN']:,} false negatives, {c['TP']:,} TP, {c['TN']:,} TN"
    ]
    for r in rows:
        where = r.source + (f"[{r.index}]" if r.source.lower().endswith(H5_EXTS) else "")
        lines.append(f"{r.kind}  p={r.probability:.3f}  truth={r.truth}  {r.id}  {where}".rstrip())
    return lines
