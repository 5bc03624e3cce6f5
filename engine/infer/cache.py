"""The heatmap cache shared by the app and ``metascope heatmap --cache``.

Results are cached per (slide, model, settings) under ``engine.paths.cache_dir()/heatmaps``:

- the slide is identified by its path, size and modification time (hashing a multi-gigabyte
  slide would take longer than the heatmap): :func:`slide_key`;
- the model by its sha256;
- the settings by the user's slide resolution (``slide_mpp``, for a slide that records none) and
  a hash of every other setting that changes the result (tissue threshold, stride, tile cap,
  threshold and top-k of the summary); default settings add nothing to the folder name. The
  default threshold is the model's operating threshold (``extra["operating_threshold"]``, else
  0.5), the one the app and ``metascope heatmap`` both use unless told otherwise, so both find
  each other's results.

A cache folder holds the files of :func:`engine.infer.outputs.write_heatmap_outputs`, written
atomically, so a cancelled or failed run leaves no partial cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.fileio import recover_dir
from engine.jobs import CancelToken

if TYPE_CHECKING:
    from engine.infer.pipeline import HeatmapResult, InferenceConfig
    from engine.slides.base import SlideReader

CACHE_SUBDIR = "heatmaps"
#: InferenceConfig fields that change a cached result (batch size, threads and device do not).
RESULT_SETTINGS = (
    "min_tissue_fraction", "stride_factor", "max_tiles", "threshold", "top_k", "qc", "keep_qc_failed", "max_unreadable",
    "roi",
)


def default_root() -> Path:
    """``engine.paths.cache_dir()/heatmaps``."""
    from engine.paths import cache_dir

    return cache_dir() / CACHE_SUBDIR


def slide_key(slide_path: str | os.PathLike[str]) -> str:
    """Cache key of a slide file: its name plus a hash of its path, size and modification time.

    Raises:
        OSError: the slide cannot be stat'ed.
    """
    from engine.infer.outputs import safe_name

    p = Path(slide_path).resolve()
    st = p.stat()
    digest = hashlib.sha256(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{safe_name(p.stem)}-{digest}"


def cache_root(slide_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding every cached result of one slide."""
    return (Path(root) if root is not None else default_root()) / slide_key(slide_path)


def settings_suffix(cfg: InferenceConfig | None, model_threshold: float | None = None) -> str:
    """``""`` for the default result settings, else ``-s<hash>`` of those that differ.

    ``model_threshold`` is the model's operating threshold (the default threshold; ``None``:
    the pipeline's 0.5).
    """
    if cfg is None:
        return ""
    from dataclasses import replace

    from engine.infer.pipeline import InferenceConfig

    default = InferenceConfig()
    if model_threshold is not None:
        default = replace(default, threshold=float(model_threshold))
    changed = {k: getattr(cfg, k) for k in RESULT_SETTINGS if getattr(cfg, k) != getattr(default, k)}
    if not changed:
        return ""
    return "-s" + hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:12]


def cache_folder(
    slide_path: str | os.PathLike[str],
    model_sha256: str,
    slide_mpp: float | None = None,
    cfg: InferenceConfig | None = None,
    root: str | os.PathLike[str] | None = None,
    model_threshold: float | None = None,
) -> Path:
    """Folder of the cached result of (slide, model, settings).

    Args:
        slide_path: the slide file.
        model_sha256: the model package's sha256.
        slide_mpp: the user's slide resolution, when one was given.
        cfg: the heatmap settings (``None``: defaults).
        root: the cache root (default :func:`default_root`).
        model_threshold: the model's operating threshold (:func:`model_default_threshold`):
            a ``cfg.threshold`` equal to it is the default and adds nothing to the name.

    Raises:
        OSError: the slide cannot be stat'ed.
    """
    name = model_sha256[:24] if slide_mpp is None else f"{model_sha256[:24]}-mpp{slide_mpp:.6g}"
    return cache_root(slide_path, root) / (name + settings_suffix(cfg, model_threshold))


def model_default_threshold(metadata: Any) -> float:
    """The default heatmap threshold of a model: its operating threshold, else 0.5."""
    from engine.infer.lesions import operating_threshold

    return operating_threshold(metadata)


def load_cached(
    slide_path: str | os.PathLike[str],
    model_sha256: str,
    slide_mpp: float | None = None,
    cfg: InferenceConfig | None = None,
    root: str | os.PathLike[str] | None = None,
    model_threshold: float | None = None,
) -> tuple[HeatmapResult, Path] | None:
    """The cached ``(result, folder)`` of (slide, model, settings), or ``None`` when there is none.

    Raises:
        HeatmapFileError: the cache folder exists but is unreadable.
    """
    from engine.infer.outputs import load_heatmap_result

    try:
        folder = cache_folder(slide_path, model_sha256, slide_mpp, cfg, root, model_threshold)
    except OSError:
        return None
    recover_dir(folder)  # a replacement cut short by a crash: the previous result comes back
    if not (folder / "heatmap.json").is_file():
        return None
    result = load_heatmap_result(folder)
    if str(result.model.get("sha256", model_sha256)) != model_sha256:
        return None
    return result, folder


def store(
    result: HeatmapResult,
    slide_path: str | os.PathLike[str],
    model_sha256: str,
    reader: SlideReader | None = None,
    slide_mpp: float | None = None,
    cfg: InferenceConfig | None = None,
    root: str | os.PathLike[str] | None = None,
    cancel: CancelToken | None = None,
    model_threshold: float | None = None,
) -> Path:
    """Write ``result`` into its cache folder (atomically: a cancel leaves the old state).

    Returns:
        The cache folder.

    Raises:
        OutputError: the cache cannot be written; Cancelled: ``cancel`` was set.
    """
    from engine.infer.outputs import write_heatmap_outputs

    folder = cache_folder(slide_path, model_sha256, slide_mpp, cfg, root, model_threshold)
    write_heatmap_outputs(result, folder.parent, reader=reader, folder_name=folder.name, cancel=cancel)
    return folder


def cached_heatmap(
    reader: SlideReader,
    slide_path: str | os.PathLike[str],
    session: Any,
    cfg: InferenceConfig,
    root: str | os.PathLike[str] | None = None,
    **compute: Any,
) -> tuple[HeatmapResult, bool]:
    """The heatmap of (slide, model, settings) from the cache, else computed and stored there.

    Args:
        reader: the open slide.
        slide_path: its file (the cache key).
        session: the loaded model (:class:`engine.infer.session.ModelSession`).
        cfg: the heatmap settings.
        root: the cache root (default :func:`default_root`).
        compute: passed on to :func:`engine.infer.pipeline.compute_heatmap` (``progress``,
            ``cancel``, ``on_batch``, ``on_start``).

    Returns:
        ``(result, from_cache)``.
    """
    from engine.infer.pipeline import compute_heatmap
    from engine.jobs import check_cancel

    default = model_default_threshold(session.metadata)
    hit = load_cached(slide_path, session.sha256, cfg.slide_mpp, cfg, root, default)
    if hit is not None:
        return hit[0], True
    result = compute_heatmap(reader, session, cfg, **compute)
    check_cancel(compute.get("cancel"))
    store(result, slide_path, session.sha256, reader, cfg.slide_mpp, cfg, root, cancel=compute.get("cancel"),
          model_threshold=default)
    return result, False
