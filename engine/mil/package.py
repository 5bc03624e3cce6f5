"""What a slide-level (MIL) model package needs to be used: its feature extractor and clinical inputs.

A ``mil_aggregator`` package records the feature extractor it was trained on (name + sha256) and
its clinical encoding. :func:`describe_mil` turns such a package's metadata into what a client
needs (the extractor found in the model library by sha256, the clinical columns for a form);
the app's slide view and ``metascope mil predict`` both use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelPackageError

MIL_TASK = "mil_aggregator"


@dataclass(frozen=True, slots=True)
class ClinicalField:
    """One clinical input of a MIL model, for a form.

    Attributes:
        name: column name the model was trained with.
        kind: ``"numeric"`` or ``"categorical"``.
        categories: training categories (categorical).
        median: training median, used when the value is left blank (numeric).
    """

    name: str
    kind: str
    categories: tuple[str, ...] = ()
    median: float | None = None


@dataclass(frozen=True, slots=True)
class MilModelInfo:
    """What a client shows and needs for a slide-level model."""

    class_names: tuple[str, ...]
    extractor_name: str
    extractor_sha256: str
    extractor_path: str  # "" when no library model has that sha256
    clinical: tuple[ClinicalField, ...]
    tile_size: int | None
    mpp: float | None


def clinical_fields(spec: Mapping[str, Any] | None) -> tuple[ClinicalField, ...]:
    """The form fields of a model's clinical spec (``metadata.extra["clinical"]``), in the
    order the model encodes them.

    Raises:
        ConfigError: the spec is unreadable.
    """
    from engine.mil.clinical import ClinicalSpec

    s = ClinicalSpec.from_dict(dict(spec) if spec else None)
    return tuple(ClinicalField(f.name, "numeric", median=f.median) for f in s.numeric) + tuple(
        ClinicalField(f.name, "categorical", categories=f.categories) for f in s.categorical
    )


def find_extractor(sha256: str, extra_paths: list[str] | None = None) -> str:
    """Path of a feature extractor with this sha256: the model library, the bundled models, then
    ``extra_paths``; "" when none matches."""
    from engine.library import ModelLibrary
    from engine.modelpkg import sha256_file
    from engine.paths import resources_dir

    if not sha256:
        return ""
    for entry in ModelLibrary().entries():
        if entry.sha256 == sha256:
            return str(entry.path.resolve())
    for p in [*sorted((resources_dir() / "models").glob("*.onnx")), *(Path(x) for x in extra_paths or [])]:
        try:
            if p.is_file() and sha256_file(p) == sha256:
                return str(p.resolve())
        except OSError:
            continue
    return ""


def describe_mil(meta: Any, extra_extractors: list[str] | None = None) -> MilModelInfo:
    """The :class:`MilModelInfo` of a ``mil_aggregator`` package's metadata.

    Raises:
        ModelPackageError: not a slide-level model, or its clinical spec is unreadable.
    """
    from engine.errors import ConfigError

    if meta.task != MIL_TASK:
        raise ModelPackageError(f"{meta.name} is not a slide-level (MIL) model")
    fx = meta.feature_extractor or {}
    sha = str(fx.get("sha256", ""))
    tiling = meta.extra.get("tiling", {}) if isinstance(meta.extra, dict) else {}
    try:
        fields = clinical_fields(meta.extra.get("clinical") if isinstance(meta.extra, dict) else None)
    except ConfigError as exc:
        raise ModelPackageError(f"{meta.name}: {exc}") from exc
    return MilModelInfo(
        class_names=tuple(meta.class_names),
        extractor_name=str(fx.get("name", "")) or "unnamed extractor",
        extractor_sha256=sha,
        extractor_path=find_extractor(sha, extra_extractors),
        clinical=fields,
        tile_size=int(tiling["tile_size"]) if tiling.get("tile_size") else None,
        mpp=float(tiling["mpp"]) if tiling.get("mpp") else None,
    )


def check_extractor_file(path: str | os.PathLike[str], expected_sha256: str) -> str:
    """Check that ``path`` is the extractor a model needs; returns its resolved path.

    Raises:
        ModelPackageError: not a feature extractor package, or a different one.
    """
    from engine.modelpkg import read_metadata, sha256_file

    p = Path(path)
    meta = read_metadata(p)
    if meta.task not in ("feature_extractor", "patch_classification"):
        raise ModelPackageError(f"{p.name} is a {meta.task.replace('_', ' ')} model, not a feature extractor")
    digest = sha256_file(p)
    if expected_sha256 and digest != expected_sha256:
        raise ModelPackageError(
            f"{p.name} is not the feature extractor this model was trained with "
            f"(sha256 {digest[:12]}…, the model needs {expected_sha256[:12]}…)"
        )
    return str(p.resolve())


def extractor_for(model_path: str | os.PathLike[str]) -> str:
    """The feature extractor a MIL model package needs, found in the model library by sha256.

    Raises:
        ModelPackageError: not a MIL model, or its extractor is not in the library.
    """
    from engine.modelpkg import read_metadata

    info = describe_mil(read_metadata(Path(model_path)))
    if not info.extractor_path:
        raise ModelPackageError(
            f"the feature extractor '{info.extractor_name}' (sha256 {info.extractor_sha256[:12]}...) that "
            f"{Path(model_path).name} needs is not in the model library; give it with --extractor"
        )
    return info.extractor_path
