"""Qt-free jobs for slide-level (MIL) prediction in the slide view.

A ``mil_aggregator`` package records the feature extractor it was trained on (name + sha256) and
its clinical encoding. :func:`describe_mil` turns such a package into what the view needs (the
extractor found in the model library by sha256, the clinical columns for a form), and
:func:`run_prediction` runs :func:`engine.mil.predict.predict_slide` in the same child process
mechanism as heatmaps (``gui.workers.ProcessWorker``). Nothing here imports Qt or torch.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelPackageError
from engine.jobs import CancelToken, ProgressCallback

PartialCallback = Callable[[object], None]
MIL_TASK = "mil_aggregator"


@dataclass(frozen=True, slots=True)
class ClinicalField:
    """One clinical input of a MIL model, for the form.

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
    """What the slide view shows and needs for a slide-level model."""

    class_names: tuple[str, ...]
    extractor_name: str
    extractor_sha256: str
    extractor_path: str  # "" when no library model has that sha256
    clinical: tuple[ClinicalField, ...]
    tile_size: int | None
    mpp: float | None


def clinical_fields(spec: Mapping[str, Any] | None) -> tuple[ClinicalField, ...]:
    """The form fields of a model's clinical spec (``metadata.extra["clinical"]``), in the
    order the model encodes them."""
    from engine.mil.clinical import ClinicalSpec

    s = ClinicalSpec.from_dict(dict(spec) if spec else None)
    return tuple(ClinicalField(f.name, "numeric", median=f.median) for f in s.numeric) + tuple(
        ClinicalField(f.name, "categorical", categories=f.categories) for f in s.categorical)


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


def check_extractor(path: str, expected_sha256: str, progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None, partial: PartialCallback | None = None) -> str:
    """Check that the file the user chose is the extractor a model needs; returns its path.

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
            f"(sha256 {digest[:12]}…, the model needs {expected_sha256[:12]}…)")
    return str(p.resolve())


def run_prediction(slide_path: str, aggregator_path: str, extractor_path: str, clinical: dict[str, str],
                   mpp: float | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None, partial: PartialCallback | None = None) -> Any:
    """Slide-level prediction (runs in the child process); returns the
    :class:`engine.mil.predict.SlidePrediction` (class probabilities and attention grid).

    ``clinical`` holds the values typed in (absent names are missing); ``mpp`` is the user's
    level-0 resolution for a slide that records none.

    Raises:
        MetaScopeError: unusable slide, model or extractor (one-line message for a dialog).
        Cancelled: ``cancel`` was set.
    """
    from engine.mil.predict import predict_slide

    return predict_slide(slide_path, extractor_path, aggregator_path, clinical, slide_mpp=mpp, device="auto",
                         progress=progress, cancel=cancel)


def export_prediction(pred: Any, out_root: str, progress: ProgressCallback | None = None,
                      cancel: CancelToken | None = None, partial: PartialCallback | None = None) -> str:
    """Write ``prediction.json``, ``attention.npy``, ``attention.png`` (over the slide thumbnail)
    and ``tiles.csv`` into ``out_root/<slide name>/``, atomically.

    Raises:
        OutputError: the folder cannot be written.
        SlideOpenError: the slide (for the thumbnail) can no longer be read.
    """
    from engine.fileio import ensure_writable_dir
    from engine.infer.outputs import safe_name
    from engine.mil.predict import write_prediction
    from engine.slides import open_slide

    ensure_writable_dir(out_root)
    with open_slide(pred.slide_path) as reader:
        thumbnail = reader.thumbnail(1024)
    return str(write_prediction(pred, Path(out_root) / safe_name(Path(pred.slide_path).stem), thumbnail))


# -- text ------------------------------------------------------------------------------------
def prediction_html(pred: Any) -> str:
    """Slide-level prediction as rich text: the call, the tiles it rests on, clinical notes."""
    probs = np.asarray(pred.probabilities, dtype=np.float64)
    k = int(np.argmax(probs))
    rows = [
        ("Predicted", f"<b style='color:#c62828'>{html.escape(pred.class_names[k])}</b> ({probs[k]:.1%})"),
        ("Tiles analysed", f"{int(pred.attention.size):,}"),
        ("Analysis resolution", f"{float(pred.mpp):.2f} µm/px, tiles of {int(pred.tile_size_level0):,} px (level 0)"),
        ("Model", html.escape(str(pred.model.get("name", "")))),
        ("Features", html.escape(str(pred.extractor.get("name", "")))),
    ]
    if pred.runtime_s:
        rows.append(("Engine time", f"{float(pred.runtime_s):.1f} s"))
    given = ", ".join(f"{html.escape(str(n))} = {html.escape(str(v))}" for n, v in pred.clinical.items() if str(v))
    rows.append(("Clinical values", given or "none given (image only)"))
    body = "".join(f"<tr><td style='color:#546e7a; padding-right:10px'>{a}</td><td>{b}</td></tr>" for a, b in rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in pred.clinical_notes)
    note_html = f"<p style='margin:6px 0 0 0; color:#8d6e63'>Clinical inputs:</p><ul style='margin:0'>{notes}</ul>" if notes else ""
    return (f"<table>{body}</table>{note_html}"
            "<p style='margin-top:6px; color:#607d8b'>The map shows attention: how much each tile weighed "
            "in the slide-level call (1 = the most), not a tumour probability.</p>")
