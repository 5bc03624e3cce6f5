"""Slide QC and damaged tiles as reported in a result summary (``heatmap.json``), and read back.

The summary of a heatmap carries:

- ``unreadable_tiles``: count; ``unreadable``: ``{count, fraction, max_fraction, tiles: [{index,
  x, y, row, col, error}], listed}``;
- ``qc_excluded_tiles``: tiles QC left out; ``qc``: ``{stain, flagged: {pen, fold, bubble,
  blur}, excluded_tiles, area_fractions, keep_failed, tiles: [[row, col, reason], ...]}``;
- ``warnings``: one line each (e.g. the stain is not H&E).

:func:`reason_grid` turns that back into a per-cell reason grid for the overlay and the viewer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.slides.damage import UnreadableLog
from engine.slides.qc import BLUR, REASONS, UNREADABLE, BlurScreen, StainReport

#: The model metadata ``extra`` key saying which stain the model needs, and the value for H&E.
REQUIRES_STAIN_KEY = "requires_stain"
HE_NAMES = ("h&e", "he", "h and e", "hematoxylin-eosin", "haematoxylin-eosin")


def model_requires_he(meta: Any) -> bool:
    """Whether a model package says it needs H&E slides (``extra["requires_stain"] == "H&E"``)."""
    extra = getattr(meta, "extra", None) or {}
    return str(extra.get(REQUIRES_STAIN_KEY, "")).strip().lower() in HE_NAMES


def stain_warnings(stain: StainReport, meta: Any, model_name: str, slide_name: str, ignore: bool) -> list[str]:
    """The warnings of the stain check; refuses the slide when the model needs H&E.

    Raises:
        ConfigError: the slide is not H&E, the model needs H&E and ``ignore`` is False.
    """
    if stain.is_he:
        return []
    if model_requires_he(meta) and not ignore:
        raise ConfigError(
            f"{slide_name}: {stain.message}; the model {model_name} needs H&E slides "
            "(use --ignore-stain to analyse it anyway)"
        )
    return [f"{slide_name}: {stain.message}; results of an H&E model may be meaningless"]


def qc_summary(
    plan: Any, unreadable: UnreadableLog | None, blur: BlurScreen | None, warnings: list[str]
) -> dict[str, Any]:
    """The QC / damage part of a result summary (see the module description)."""
    out: dict[str, Any] = {"warnings": list(warnings)}
    unread = unreadable.to_dict() if unreadable is not None else {"count": 0, "fraction": 0.0, "tiles": [], "listed": 0}
    for t in unread.get("tiles", []):
        if t["index"] >= 0:
            r, c = plan.grid_rc[t["index"]]
            t["row"], t["col"] = int(r), int(c)
    out["unreadable_tiles"] = int(unread["count"])
    out["unreadable"] = unread
    qc = getattr(plan, "qc", None)
    if qc is None:
        out["qc_excluded_tiles"] = 0
        return out
    d = qc.to_dict()
    tiles = [[int(r), int(c), REASONS[int(k)]] for (r, c), k in zip(qc.rc.tolist(), qc.reason.tolist(), strict=True)]
    excluded = int(qc.excluded.sum())
    n_blur = 0
    if blur is not None:
        rows = blur.blurred_rows()
        n_blur = int(rows.size)
        tiles += [[int(plan.grid_rc[i, 0]), int(plan.grid_rc[i, 1]), "blur"] for i in rows.tolist()]
        if not blur.keep:
            excluded += n_blur
        _, scores = blur.results()
        d["blur_score_median"] = round(float(np.median(scores)), 3) if scores.size else None
    d["flagged"]["blur"] = n_blur
    d["excluded_tiles"] = excluded
    d["keep_failed"] = bool(qc.settings.keep_failed)
    d["tiles"] = tiles
    out["qc_excluded_tiles"] = excluded
    out["qc"] = d
    return out


def reason_grid(summary: dict[str, Any], grid_shape: tuple[int, int]) -> np.ndarray:
    """uint8 ``(rows, cols)`` reason code per grid cell (0: none) from a result summary."""
    grid = np.zeros(grid_shape, dtype=np.uint8)
    rows, cols = grid_shape
    qc = summary.get("qc") or {}
    for item in qc.get("tiles", []) or []:
        try:
            r, c, name = int(item[0]), int(item[1]), str(item[2])
        except (TypeError, ValueError, IndexError):
            continue
        if 0 <= r < rows and 0 <= c < cols and name in REASONS:
            grid[r, c] = REASONS.index(name)
    for t in (summary.get("unreadable") or {}).get("tiles", []) or []:
        r, c = t.get("row"), t.get("col")
        if isinstance(r, int) and isinstance(c, int) and 0 <= r < rows and 0 <= c < cols:
            grid[r, c] = UNREADABLE
    return grid


def summary_line(summary: dict[str, Any]) -> str:
    """``", 2 unreadable tiles, 14 tiles left out by QC (9 pen, 5 blur)"`` or ``""``."""
    parts = []
    n = int(summary.get("unreadable_tiles") or 0)
    if n:
        parts.append(f"{n} unreadable tile{'s' if n != 1 else ''} left out")
    qc = summary.get("qc") or {}
    flagged = {k: v for k, v in (qc.get("flagged") or {}).items() if v}
    if flagged:
        what = ", ".join(f"{v} {k}" for k, v in flagged.items())
        if qc.get("keep_failed"):
            parts.append(f"QC flagged {what} (kept)")
        else:
            parts.append(f"{summary.get('qc_excluded_tiles', 0)} tiles left out by QC ({what})")
    return "".join(f", {p}" for p in parts)


__all__ = ["BLUR", "model_requires_he", "qc_summary", "reason_grid", "stain_warnings", "summary_line"]
