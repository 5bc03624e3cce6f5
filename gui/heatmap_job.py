"""Qt-free jobs behind the slide view: listing models, computing and caching heatmaps, exporting.

Every function here runs in the background and talks to the GUI only through its return value
and the ``progress``/``partial`` callbacks: :func:`run_heatmap` in a child process
(``gui.workers.ProcessWorker``, so its compute never holds the GUI process's GIL), the short
jobs on a worker thread (``gui.workers.Worker``). Nothing here imports Qt or torch.

Results go to the engine's heatmap cache (:mod:`engine.infer.cache`, shared with
``metascope heatmap --cache``): per (slide, model), the slide identified by its path, size and
modification time, the model by its sha256; written atomically, so a cancelled or failed run
leaves no partial cache.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelPackageError
from engine.jobs import CancelToken, ProgressCallback, check_cancel

PartialCallback = Callable[[object], None]


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """A model the user can pick for heatmaps."""

    path: str
    label: str
    sha256: str
    description: str
    in_library: bool = False
    task: str = "patch_classification"
    mil: Any = None  # gui.mil_job.MilModelInfo for slide-level models
    #: the model's operating threshold (fitted on validation data, else 0.5): the default
    #: threshold of heatmaps, lesions and the display, as in ``metascope heatmap``
    threshold: float = 0.5

    @property
    def is_mil(self) -> bool:
        """A slide-level (MIL) model: class probabilities and an attention map, not a heatmap."""
        return self.task == "mil_aggregator"

    @property
    def tooltip(self) -> str:
        return f"{self.description}\n{self.path}" if self.description else self.path


@dataclass(frozen=True, slots=True)
class HeatmapStarted:
    """Sent once the tiles are planned: the grid's ``(rows, cols)`` and where it lies on the slide
    (level-0 pixels). The receiver starts from an all-NaN grid of that shape."""

    shape: tuple[int, int]
    n_tiles: int
    origin_xy: tuple[float, float]
    stride: float
    tile_size: float


@dataclass(frozen=True, slots=True)
class HeatmapBatch:
    """One finished batch: grid rows, columns and positive-class probabilities, each ``(B,)``."""

    rows: np.ndarray
    cols: np.ndarray
    probs: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class HeatmapData:
    """A complete heatmap (computed now or loaded from the cache) for display and export."""

    result: Any  # engine.infer.pipeline.HeatmapResult
    slide_path: str
    model: ModelChoice
    cache_folder: str

    @property
    def grid(self) -> np.ndarray:
        return self.result.grid

    @property
    def origin_xy(self) -> tuple[float, float]:
        return (float(self.result.origin_level0[0]), float(self.result.origin_level0[1]))

    @property
    def stride(self) -> float:
        return float(self.result.stride_level0)

    @property
    def tile_size(self) -> float:
        return float(self.result.tile_size_level0)

    @property
    def n_tiles(self) -> int:
        return int(np.isfinite(self.result.grid).sum())

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.result.summary)


# -- models ----------------------------------------------------------------------------------
def _describe(path: Path, sha256: str | None = None, in_library: bool = False) -> ModelChoice:
    from engine.modelpkg import read_metadata, sha256_file

    meta = read_metadata(path)
    auc = meta.metrics.get("auc") if isinstance(meta.metrics, dict) else None
    if meta.task == "mil_aggregator":
        from engine.mil.package import describe_mil

        info = describe_mil(meta)
        parts = ["slide-level (attention MIL)", f"classes: {', '.join(meta.class_names)}"]
        if info.clinical:
            parts.append(f"clinical: {', '.join(f.name for f in info.clinical)}")
        if isinstance(auc, (int, float)):
            parts.append(f"AUC {auc:.3f}")
        parts.append(f"features: {info.extractor_name}"
                     + ("" if info.extractor_path else " (not in the model library)"))
        return ModelChoice(str(path.resolve()), meta.name or path.stem, sha256 or sha256_file(path),
                           " · ".join(parts), in_library, meta.task, info)
    if meta.task != "patch_classification":
        raise ModelPackageError(
            f"{path.name} is a {meta.task.replace('_', ' ')} model; slides need a patch classification model "
            "(heatmap) or a slide-level MIL model"
        )
    from engine.infer.lesions import operating_threshold

    parts = [f"{meta.input_size} px", f"{meta.input_mpp:g} µm/px" if meta.input_mpp else "resolution not recorded",
             f"classes: {', '.join(meta.class_names)}"]
    if isinstance(auc, (int, float)):
        parts.append(f"validation AUC {auc:.3f}")
    threshold = operating_threshold(meta)
    if "operating_threshold" in (meta.extra or {}):
        parts.append(f"threshold {threshold:.2f}")
    return ModelChoice(str(path.resolve()), meta.name or path.stem, sha256 or sha256_file(path), " · ".join(parts),
                       in_library, threshold=threshold)


def describe_model(path: str, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                   partial: PartialCallback | None = None) -> ModelChoice:
    """Read a model file chosen by the user.

    Raises:
        ModelPackageError: not a MetaScope patch classification or slide-level MIL model.
    """
    return _describe(Path(path))


def list_models(extra_paths: list[str], progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                partial: PartialCallback | None = None) -> list[ModelChoice]:
    """Library models, the bundled starter models, the demo model (if generated) and ``extra_paths``:
    patch classifiers (heatmaps) and slide-level MIL models.

    Unreadable files and models of other tasks (feature extractors) are left out.
    """
    from engine.demo import DEMO_MODEL_FILE
    from engine.library import ModelLibrary
    from engine.paths import demo_dir, resources_dir

    out: list[ModelChoice] = []
    seen: set[str] = set()

    def add(path: Path, sha: str | None = None, in_library: bool = False) -> None:
        key = str(path.resolve())
        if key in seen or not path.is_file():
            return
        try:
            out.append(_describe(path, sha, in_library))
            seen.add(key)
        except (ModelPackageError, OSError):
            return

    # heatmaps are computed in a child process, but this process reads cached results and
    # exports them: import that code now, in the background, rather than on the GUI thread
    # when a cached heatmap is first shown (the import holds the GIL for ~0.1 s)
    import engine.infer.outputs  # noqa: F401

    for entry in ModelLibrary().entries():
        check_cancel(cancel)
        add(entry.path, entry.sha256, in_library=True)
    for path in sorted((resources_dir() / "models").glob("*.onnx")):
        add(path)
    add(demo_dir() / DEMO_MODEL_FILE)
    for p in extra_paths:
        add(Path(p))
    return out


# -- cache (engine.infer.cache) -------------------------------------------------------------
def cache_root(slide_path: str | os.PathLike[str]) -> Path:
    """The engine cache folder of every result of one slide."""
    from engine.infer import cache

    return cache.cache_root(slide_path)


def cache_folder(slide_path: str | os.PathLike[str], model: ModelChoice, mpp: float | None = None) -> Path:
    """Folder holding the cached result of (slide, model), and the user's slide mpp when one was given."""
    from engine.infer import cache

    return cache.cache_folder(slide_path, model.sha256, mpp, _settings(model, mpp), model_threshold=model.threshold)


def load_cached(slide_path: str, model: ModelChoice, mpp: float | None = None) -> HeatmapData | None:
    """The cached result of (slide, model), or None when there is none.

    Raises:
        HeatmapFileError: the cache folder exists but is unreadable.
    """
    from engine.infer import cache

    hit = cache.load_cached(slide_path, model.sha256, mpp, _settings(model, mpp), model_threshold=model.threshold)
    if hit is None:
        return None
    return HeatmapData(hit[0], slide_path, model, str(hit[1]))


def _settings(model: ModelChoice, mpp: float | None, ignore_stain: bool = False) -> Any:
    """The app's heatmap settings: the pipeline defaults at the model's operating threshold, the
    same result settings ``metascope heatmap`` uses by default (so both share cache entries)."""
    from engine.infer.pipeline import InferenceConfig

    return InferenceConfig(slide_mpp=mpp, ignore_stain=ignore_stain, threshold=model.threshold)


# -- compute ---------------------------------------------------------------------------------
def run_heatmap(slide_path: str, model: ModelChoice, mpp: float | None = None,
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                partial: PartialCallback | None = None, ignore_stain: bool = False) -> HeatmapData:
    """Compute the heatmap of (slide, model), streaming batches to ``partial``, then cache it.

    ``partial`` receives one :class:`HeatmapStarted` and then a :class:`HeatmapBatch` per batch.
    ``mpp`` (microns per level-0 pixel) is the user's value for a slide that records none.
    ``ignore_stain``: analyse a slide that does not look like H&E with a model that needs H&E.

    Raises:
        MetaScopeError: the slide or model is unusable (one-line message for a dialog).
        Cancelled: ``cancel`` was set; nothing is written.
    """
    from engine.infer import cache
    from engine.infer.pipeline import compute_heatmap
    from engine.slides import open_slide

    def on_start(plan: Any, grid: np.ndarray) -> None:
        if partial is not None:
            partial(HeatmapStarted((int(grid.shape[0]), int(grid.shape[1])), int(plan.n_tiles),
                                   (float(plan.origin_level0[0]), float(plan.origin_level0[1])),
                                   float(plan.stride_level0), float(plan.tile_size_level0)))

    def on_batch(rows: np.ndarray, cols: np.ndarray, probs: np.ndarray) -> None:
        if partial is not None:
            partial(HeatmapBatch(np.array(rows), np.array(cols), np.array(probs, dtype=np.float32)))

    with open_slide(slide_path, mpp=mpp) as reader:
        cfg = _settings(model, mpp, ignore_stain)
        result = compute_heatmap(reader, model.path, cfg, progress=progress, cancel=cancel,
                                 on_batch=on_batch, on_start=on_start)
        check_cancel(cancel)
        # the cache is one folder written atomically: a cancel here leaves the old state
        folder = cache.store(result, slide_path, model.sha256, reader, slide_mpp=mpp, cfg=cfg, cancel=cancel,
                             model_threshold=model.threshold)
    # the tile plan (tissue mask included) is not needed for display or export: keep the
    # result that travels back to the GUI process small
    result.plan = None
    return HeatmapData(result, slide_path, model, str(folder))


def export_result(data: HeatmapData, out_root: str, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None, partial: PartialCallback | None = None) -> str:
    """Write overlay PNG, GeoJSON, CSV (and the grid) of ``data`` into ``out_root/<slide name>/``.

    Raises:
        OutputError: the folder cannot be written.
        SlideOpenError: the slide (needed for the overlay's thumbnail) can no longer be read.
    """
    from engine.fileio import ensure_writable_dir
    from engine.infer.outputs import write_heatmap_outputs
    from engine.slides import open_slide

    ensure_writable_dir(out_root)
    with open_slide(data.slide_path) as reader:
        return str(write_heatmap_outputs(data.result, out_root, reader=reader, cancel=cancel))


# -- text ------------------------------------------------------------------------------------
def summary_html(data: HeatmapData, threshold: float) -> str:
    """Slide-level result as rich text, counting tiles at the display ``threshold``."""
    grid = data.grid
    vals = grid[np.isfinite(grid)]
    n = int(vals.size)
    if n == 0:
        return "No tissue tiles were analysed."
    above = int((vals >= threshold).sum())
    mm2_per_tile = (data.stride * float(data.result.slide_mpp) / 1000.0) ** 2
    s = data.summary
    hi = float(vals.max())
    colour = "#c62828" if hi >= threshold else "#2e7d32"
    verdict = (f"{above:,} tiles at or above {threshold:.2f}" if above else f"No tile at or above {threshold:.2f}")
    rows = [
        ("Highest tile probability", f"<b style='color:{colour}'>{hi:.3f}</b>"),
        ("Mean probability", f"{float(vals.mean()):.3f}"),
        ("Tiles analysed", f"{n:,}"),
        ("Above threshold", f"{above:,} ({above / n:.1%} of tissue tiles)"),
        ("Area above threshold", f"{above * mm2_per_tile:.2f} mm²"),
    ]
    if s.get("tissue_area_mm2") is not None:
        rows.append(("Tissue area", f"{float(s['tissue_area_mm2']):.1f} mm²"))
    runtime = data.result.timing.get("total_s") if data.result.timing else None
    if runtime:
        rows.append(("Engine time", f"{float(runtime):.1f} s"))
    rows.append(("Model", html.escape(data.model.label)))
    body = "".join(f"<tr><td style='color:#546e7a; padding-right:10px'>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<p style='margin-bottom:4px'><b>{html.escape(verdict)}</b></p><table>{body}</table>"
