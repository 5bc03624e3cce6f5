"""Batches of heatmaps: which slides are already done (``metascope heatmap --skip-existing``).

A slide's result folder is written atomically (:func:`engine.infer.outputs.write_heatmap_outputs`),
so a folder with a ``heatmap.json`` is complete. It counts as done for this run when it was made
from the same slide file, with the same model (sha256) and the same result settings; a batch that
was interrupted therefore resumes at the first slide without a finished folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.infer.pipeline import InferenceConfig

# settings that change a result (the rest only change speed: batch size, threads, device)
_SAME = ("slide_mpp", "ignore_stain")


def result_settings(cfg: InferenceConfig | dict[str, Any]) -> dict[str, Any]:
    """The settings of ``cfg`` that change a heatmap's result files."""
    from engine.infer.cache import RESULT_SETTINGS
    from engine.infer.pipeline import InferenceConfig

    d = cfg.to_dict() if isinstance(cfg, InferenceConfig) else dict(cfg)
    default = InferenceConfig().to_dict()
    return {k: d.get(k, default[k]) for k in (*RESULT_SETTINGS, *_SAME)}


def finished_result(
    folder: str | os.PathLike[str], slide_path: str | os.PathLike[str], model_sha256: str, cfg: InferenceConfig
) -> bool:
    """Whether ``folder`` holds a finished result of this slide, model and settings."""
    meta_path = Path(folder) / "heatmap.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        same_slide = Path(str(meta["slide"]["path"])).resolve() == Path(slide_path).resolve()
        same_model = str(meta["model"]["sha256"]) == model_sha256
        same_settings = result_settings(meta.get("config") or {}) == result_settings(cfg)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    complete = all((Path(folder) / f).is_file() for f in ("heatmap.npy", "tiles.csv", "overlay.png"))
    return bool(same_slide and same_model and same_settings and complete)
