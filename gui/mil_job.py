"""Qt-free jobs for slide-level (MIL) prediction in the slide view: thin wrappers over the engine.

What a MIL package needs (its extractor found by sha256, the clinical form fields) comes from
:mod:`engine.mil.package`; prediction and its files from :mod:`engine.mil.predict`, as for
``metascope mil predict``. :func:`run_prediction` runs in the same child process mechanism as
heatmaps (``gui.workers.ProcessWorker``). Nothing here imports Qt or torch.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.jobs import CancelToken, ProgressCallback
from engine.mil.package import (  # noqa: F401 - the slide view's names for them
    MIL_TASK,
    ClinicalField,
    MilModelInfo,
    clinical_fields,
    describe_mil,
    find_extractor,
)

PartialCallback = Callable[[object], None]


def check_extractor(path: str, expected_sha256: str, progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None, partial: PartialCallback | None = None) -> str:
    """Check that the file the user chose is the extractor a model needs; returns its path.

    Raises:
        ModelPackageError: not a feature extractor package, or a different one.
    """
    from engine.mil.package import check_extractor_file

    return check_extractor_file(path, expected_sha256)


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
    from engine.mil.predict import write_prediction_for_slide

    ensure_writable_dir(out_root)
    return str(write_prediction_for_slide(pred, Path(out_root) / safe_name(Path(pred.slide_path).stem)))


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
