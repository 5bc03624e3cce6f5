"""The validation report shown before training: counts, unreadable and missing files, size
mismatches, exact duplicates, labels outside the class set."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.data.base import DigestCache, ItemCheck, PatchDataset
from engine.errors import DatasetError
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report

#: patches checked per work unit (progress and cancel are checked per unit)
CHUNK = 256
#: examples named per problem in messages and ``to_dict``
MAX_EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What :func:`validate_dataset` found.

    Attributes:
        source: dataset path.
        fmt: dataset format.
        n_items: number of patches.
        class_names: class names in index order.
        counts: patches per class name (plus ``"unlabelled"`` when some have no valid label).
        patch_size: ``(height, width)`` the dataset reads patches at.
        mpp: microns per pixel, or ``None`` when unknown.
        checked_images: whether every patch was read (hashing, size, decoding).
        sizes: stored patch sizes ``"HxW" -> count`` (only when images were checked).
        missing: ids of patches whose file does not exist (named in a CSV or list).
        unreadable: ``(id, reason)`` of patches that cannot be read.
        size_mismatches: ids of patches whose stored size differs from ``patch_size``.
        unknown_labels: ids of patches whose label is not in the class set.
        duplicate_groups: index tuples of patches with byte-identical content (2+ members).
        errors: one-line problems that make the dataset unusable for training as it is.
        warnings: one-line problems worth knowing.
        elapsed_s: seconds spent.
    """

    source: str
    fmt: str
    n_items: int
    class_names: tuple[str, ...]
    counts: dict[str, int]
    patch_size: tuple[int, int]
    mpp: float | None
    checked_images: bool
    sizes: dict[str, int] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()
    size_mismatches: tuple[str, ...] = ()
    unknown_labels: tuple[str, ...] = ()
    duplicate_groups: tuple[tuple[int, ...], ...] = ()
    duplicates_by_class: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when there are no errors."""
        return not self.errors

    @property
    def duplicate_files(self) -> int:
        """Patches that belong to a duplicate group (all copies counted)."""
        return sum(len(g) for g in self.duplicate_groups)

    def summary(self) -> str:
        """One line: counts and the first error (or ``ok``)."""
        counts = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        head = f"{self.n_items} patches ({counts})"
        if self.errors:
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"{self.source}: {head}; {self.errors[0]}{more}"
        return f"{self.source}: {head}; ok" + (f", {len(self.warnings)} warnings" if self.warnings else "")

    def group_ids(self) -> np.ndarray:
        """``int64`` ``(N,)``: duplicates share a group id, every other patch has its own."""
        ids = np.arange(self.n_items, dtype=np.int64)
        for g in self.duplicate_groups:
            ids[list(g)] = g[0]
        return ids

    def raise_if_errors(self) -> None:
        """Raise :class:`DatasetError` with a one-line summary when there are errors."""
        if self.errors:
            raise DatasetError(self.summary())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; long lists are cut to their first examples (counts stay exact)."""
        return {
            "source": self.source,
            "format": self.fmt,
            "ok": self.ok,
            "patches": self.n_items,
            "class_names": list(self.class_names),
            "counts": dict(self.counts),
            "patch_size": list(self.patch_size),
            "mpp": self.mpp,
            "checked_images": self.checked_images,
            "sizes": dict(self.sizes),
            "missing": {"count": len(self.missing), "examples": list(self.missing[:MAX_EXAMPLES])},
            "unreadable": {
                "count": len(self.unreadable),
                "examples": [{"id": i, "reason": r} for i, r in self.unreadable[:MAX_EXAMPLES]],
            },
            "size_mismatches": {"count": len(self.size_mismatches), "examples": list(self.size_mismatches[:MAX_EXAMPLES])},
            "unknown_labels": {"count": len(self.unknown_labels), "examples": list(self.unknown_labels[:MAX_EXAMPLES])},
            "duplicates": {
                "groups": len(self.duplicate_groups),
                "files": self.duplicate_files,
                "by_class": {k: dict(v) for k, v in self.duplicates_by_class.items()},
            },
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _examples(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (", ..." if len(items) > n else "")


def compute_checks(
    ds: PatchDataset,
    *,
    decode: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    stage: str = "validate",
) -> list[ItemCheck]:
    """Check every patch with :meth:`PatchDataset.check_items`, in parallel threads.

    Reading files and decoding release the GIL, so a few threads overlap disk and CPU.
    The digests are cached for :func:`duplicate_groups` and grouped splits.
    """
    n = len(ds)
    chunks = [range(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    results: list[ItemCheck] = []
    workers = max(1, min(8, (os.cpu_count() or 2) * 2))
    report(progress, ProgressEvent(stage, 0, n, "checking patches"))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate") as pool:
        pending = [pool.submit(ds.check_items, list(c), decode) for c in chunks[:workers * 2]]
        next_chunk = len(pending)
        done = 0
        try:
            while pending:
                check_cancel(cancel)
                part = pending.pop(0).result()
                results.extend(part)
                done += len(part)
                report(progress, ProgressEvent(stage, done, n, "checking patches"))
                if next_chunk < len(chunks):
                    pending.append(pool.submit(ds.check_items, list(chunks[next_chunk]), decode))
                    next_chunk += 1
        finally:
            for fut in pending:
                fut.cancel()
    DigestCache.put(ds, [c.digest for c in results])
    return results


def _group_digests(digests: Sequence[bytes | None]) -> list[tuple[int, ...]]:
    by_digest: dict[bytes, list[int]] = {}
    for i, d in enumerate(digests):
        if d is not None:
            by_digest.setdefault(d, []).append(i)
    return sorted((tuple(v) for v in by_digest.values() if len(v) > 1), key=lambda g: g[0])


def duplicate_groups(
    ds: PatchDataset,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Group ids that put byte-identical patches together.

    Uses the digests from a previous :func:`validate_dataset` when available, else hashes
    every patch (file bytes for image files, no decoding).

    Returns:
        ``int64`` ``(N,)``: patches with identical content share an id (the index of the first
        copy); every other patch has its own id.
    """
    digests = DigestCache.get(ds)
    if digests is None or len(digests) != len(ds):
        digests = [c.digest for c in compute_checks(ds, decode=False, progress=progress, cancel=cancel, stage="hash")]
    ids = np.arange(len(ds), dtype=np.int64)
    for g in _group_digests(digests):
        ids[list(g)] = g[0]
    return ids


def validate_dataset(
    ds: PatchDataset,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    check_images: bool = True,
    *,
    require_classes: int = 2,
    allow_mixed_sizes: bool | None = None,
) -> ValidationReport:
    """Check a dataset before training.

    Args:
        ds: the dataset.
        progress: called per chunk of patches (stage ``"validate"``).
        cancel: checked per chunk.
        check_images: read every patch (hash file bytes, read sizes, decode to prove it is
            readable). ``False`` checks only counts, labels and that files exist.
        require_classes: labelled datasets with fewer classes holding patches are an error
            (training needs two); ``0`` disables the check.
        allow_mixed_sizes: size mismatches are warnings, not errors; default: when the dataset
            resizes patches on reading.

    Returns:
        The report; ``report.raise_if_errors()`` turns errors into a :class:`DatasetError`.

    Raises:
        Cancelled: ``cancel`` was set.
    """
    t0 = time.perf_counter()
    n = len(ds)
    errors: list[str] = []
    warnings: list[str] = list(ds.open_warnings)
    counts = ds.class_counts()
    k = len(ds.class_names)
    unknown_idx = np.flatnonzero((ds.labels < 0) | (ds.labels >= k)) if k else np.array([], np.int64)
    unknown = tuple(ds.ids[i] for i in unknown_idx)
    if unknown:
        errors.append(
            f"{len(unknown)} patches have a label that is not one of the classes "
            f"({', '.join(ds.class_names)}): {_examples(list(unknown))}"
        )
    if k and require_classes:
        present = [c for c, v in counts.items() if v > 0 and c != "unlabelled"]
        if len(present) < require_classes:
            errors.append(
                f"only {len(present)} class with patches ({', '.join(present) or 'none'}); "
                f"training needs at least {require_classes}"
            )
    if not k:
        warnings.append("no labels: usable for prediction only")
    if ds.mpp is None:
        warnings.append("the microns per pixel of the patches is unknown: give it (e.g. --mpp 0.5) so heatmaps read slides at the right resolution")
    if allow_mixed_sizes is None:
        allow_mixed_sizes = getattr(ds, "_resize_to", None) is not None

    missing: list[str] = []
    unreadable: list[tuple[str, str]] = []
    mismatched: list[str] = []
    sizes: Counter[str] = Counter()
    groups: list[tuple[int, ...]] = []
    by_class: dict[str, dict[str, int]] = {}
    if check_images:
        checks = compute_checks(ds, decode=True, progress=progress, cancel=cancel)
        expected = getattr(ds, "native_size", ds.patch_size)
        for i, c in enumerate(checks):
            if c.missing:
                missing.append(ds.ids[i])
            elif c.error is not None:
                unreadable.append((ds.ids[i], c.error))
            if c.size is not None:
                sizes[f"{c.size[0]}x{c.size[1]}"] += 1
                if c.size != expected:
                    mismatched.append(ds.ids[i])
        groups = _group_digests([c.digest for c in checks])
        for g in groups:
            labs = {int(ds.labels[i]) for i in g}
            if len(labs) > 1:
                name = "mixed labels"
            else:
                lab = labs.pop()
                name = ds.class_names[lab] if 0 <= lab < k else "unlabelled"
            entry = by_class.setdefault(name, {"groups": 0, "files": 0})
            entry["groups"] += 1
            entry["files"] += len(g)
    elif ds.paths is not None:
        for i, p in enumerate(ds.paths):
            if i % CHUNK == 0:
                check_cancel(cancel)
                report(progress, ProgressEvent("validate", i, n, "checking files exist"))
            if not os.path.exists(p):
                missing.append(ds.ids[i])
        report(progress, ProgressEvent("validate", n, n, "checking files exist"))

    if missing:
        errors.append(f"{len(missing)} files named in the dataset do not exist: {_examples(missing)}")
    if unreadable:
        errors.append(f"{len(unreadable)} images cannot be read: {_examples([u[0] for u in unreadable])}")
    if mismatched:
        h, w = getattr(ds, "native_size", ds.patch_size)
        msg = (
            f"{len(mismatched)} images are not {w}x{h} px like the first one ({', '.join(sorted(sizes))} found): "
            f"{_examples(mismatched)}"
        )
        if allow_mixed_sizes:
            warnings.append(msg + " (they are resized on reading)")
        else:
            errors.append(msg + "; resize them or ask for resizing")
    if groups:
        n_files = sum(len(g) for g in groups)
        mixed = by_class.get("mixed labels", {}).get("groups", 0)
        warnings.append(
            f"{len(groups)} groups of byte-identical patches ({n_files} files): split grouped so copies "
            "do not leak between training and validation"
        )
        if mixed:
            warnings.append(f"{mixed} of the duplicate groups carry different labels")
    return ValidationReport(
        source=ds.source,
        fmt=ds.fmt,
        n_items=n,
        class_names=tuple(ds.class_names),
        counts=counts,
        patch_size=tuple(ds.patch_size),  # type: ignore[arg-type]
        mpp=ds.mpp,
        checked_images=check_images,
        sizes=dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        missing=tuple(missing),
        unreadable=tuple(unreadable),
        size_mismatches=tuple(mismatched),
        unknown_labels=unknown,
        duplicate_groups=tuple(groups),
        duplicates_by_class=by_class,
        errors=tuple(errors),
        warnings=tuple(warnings),
        elapsed_s=time.perf_counter() - t0,
    )
