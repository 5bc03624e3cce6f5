"""Slide-level prediction with onnxruntime only (no torch): extractor + MIL aggregator packages.

:func:`predict_slide` embeds the slide's tissue tiles with the extractor the aggregator was
trained on (checked by sha256), runs the aggregator on the bag with the encoded clinical values,
and returns the class probabilities plus per-tile attention laid out on the same grid as a
heatmap (NaN float32 grid, one cell per tile, level-0 tile size / stride / origin), so a viewer
can paint it with its heatmap overlay code.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ModelPackageError
from engine.fileio import atomic_dir, atomic_path, atomic_write_json
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, report
from engine.mil.clinical import ClinicalSpec

if TYPE_CHECKING:
    from engine.infer.session import ModelSession
    from engine.mil.features import Extractor, FeatureConfig


class Aggregator:
    """A loaded ``mil_aggregator`` package.

    Attributes:
        session: the verified :class:`engine.infer.session.ModelSession`.
        class_names: output classes.
        clinical: the clinical encoding the model was trained with (empty: image only).
        extractor_sha256, extractor_name: the feature extractor it needs.
        tile_size, mpp: the tiling its features were extracted with.
        feature_settings: the tissue settings and tile cap of its training bags (``None`` for
            models exported before they were recorded: defaults are used).
    """

    def __init__(self, session: ModelSession) -> None:
        meta = session.metadata
        if meta.task != "mil_aggregator":
            raise ModelPackageError(f"{session.path.name} is a {meta.task} model, not a MIL (slide-level) model")
        self.session = session
        self.class_names = meta.class_names
        self.clinical = ClinicalSpec.from_dict(meta.extra.get("clinical"))
        fx = meta.feature_extractor or {}
        self.extractor_sha256 = str(fx.get("sha256", ""))
        self.extractor_name = str(fx.get("name", ""))
        tiling = meta.extra.get("tiling", {})
        self.tile_size = int(tiling.get("tile_size", 0)) or None
        self.mpp = float(tiling["mpp"]) if tiling.get("mpp") else None
        settings = meta.extra.get("feature_settings")
        self.feature_settings: dict[str, Any] | None = dict(settings) if isinstance(settings, dict) else None
        self.inputs = [i.name for i in session.session.get_inputs()]
        self.feature_dim = meta.feature_dim
        self.bag_size = int(meta.extra.get("bag_size") or 0)

    @property
    def name(self) -> str:
        return self.session.name

    def feature_config(
        self, *, batch_size: int = 64, device: str = "auto", slide_mpp: float | None = None
    ) -> FeatureConfig:
        """The feature extraction settings of the training bags (tile size, mpp, tissue, tile cap).

        Raises:
            ModelPackageError: the recorded settings are not valid.
        """
        from engine.errors import ConfigError
        from engine.mil.bags import BAG_SETTING_KEYS
        from engine.mil.features import FeatureConfig

        recorded = {k: v for k, v in (self.feature_settings or {}).items() if k in BAG_SETTING_KEYS and v is not None}
        try:
            return FeatureConfig(
                tile_size=self.tile_size, mpp=self.mpp, batch_size=batch_size, device=device, slide_mpp=slide_mpp,
                **recorded,
            )
        except (ConfigError, TypeError) as exc:
            raise ModelPackageError(f"{self.name}: invalid feature settings in the model metadata ({exc})") from exc

    def check_extractor(self, extractor: Extractor) -> None:
        """Raise :class:`ModelPackageError` unless ``extractor`` is the one this model needs."""
        if self.extractor_sha256 and extractor.sha256 != self.extractor_sha256:
            raise ModelPackageError(
                f"{self.name} was trained on features of '{self.extractor_name}' (sha256 {self.extractor_sha256[:12]}...), "
                f"but the extractor given is '{extractor.name}' (sha256 {extractor.sha256[:12]}...)"
            )
        if self.feature_dim and extractor.feature_dim != self.feature_dim:
            raise ModelPackageError(
                f"{self.name} expects {self.feature_dim} features per tile, the extractor gives {extractor.feature_dim}"
            )

    def encode(self, clinical: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Encode clinical values (absent ones count as missing); see :class:`ClinicalSpec`."""
        clinical = dict(clinical or {})
        num, codes, notes = self.clinical.encode([clinical])
        unused = sorted(set(clinical) - set(self.clinical.columns))
        if unused:
            notes.append(f"ignored (the model does not use them): {', '.join(unused)}")
        return num, codes, notes

    def run(
        self, features: np.ndarray, numeric: np.ndarray | None = None, codes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score one bag.

        Args:
            features: float32 ``(N, D)``.
            numeric: float32 ``(1, Kn)``; codes: int64 ``(1, Kc)`` (clinical models).

        Returns:
            ``(probabilities (C,), attention (N,))``. A model trained on random bags of
            ``bag_size`` tiles (BALNMP recipe) scores fixed random bags of the slide's tiles and
            averages their probabilities; each tile's attention is then divided by the number of
            bags, so it still sums to 1 over the slide.
        """
        n = int(features.shape[0])
        if self.bag_size and n > self.bag_size:
            perm = np.random.default_rng(n).permutation(n)
            bags = [np.sort(perm[i : i + self.bag_size]) for i in range(0, n, self.bag_size)]
            attention = np.zeros(n, dtype=np.float32)
            probs = []
            for idx in bags:
                p, a = self._run_one(features[idx], numeric, codes)
                probs.append(p)
                attention[idx] = a / len(bags)
            return np.mean(probs, axis=0), attention
        return self._run_one(features, numeric, codes)

    def _run_one(
        self, features: np.ndarray, numeric: np.ndarray | None, codes: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        feed: dict[str, np.ndarray] = {"features": np.ascontiguousarray(features, dtype=np.float32)}
        if "clinical_numeric" in self.inputs:
            feed["clinical_numeric"] = np.asarray(numeric, dtype=np.float32).reshape(1, -1)
        if "clinical_codes" in self.inputs:
            feed["clinical_codes"] = np.asarray(codes, dtype=np.int64).reshape(1, -1)
        probs, attention = self.session.session.run(["probabilities", "attention"], feed)
        return np.asarray(probs, dtype=np.float64)[0], np.asarray(attention, dtype=np.float32)


def load_aggregator(path: str | os.PathLike[str], device: str = "cpu") -> Aggregator:
    """Load and verify a MIL aggregator package.

    Raises:
        ModelPackageError: not a usable MIL model package.
    """
    from engine.infer.session import load_model

    return Aggregator(load_model(path, device=device))


@dataclass(frozen=True, slots=True, eq=False)
class SlidePrediction:
    """A slide-level prediction with its attention map.

    The attention map uses the heatmap grid convention: ``attention_grid[row, col]`` covers the
    level-0 square ``x = origin_level0[0] + col * stride_level0`` (likewise ``y`` with ``row``),
    ``tile_size_level0`` px wide; NaN where no tile was analysed.

    Attributes:
        slide_path: the slide.
        slide_dimensions: level-0 ``(width, height)``.
        class_names: output classes; probabilities: float64 ``(C,)``; predicted: argmax index.
        attention: float32 ``(N,)`` raw attention per tile (sums to 1 over the slide).
        attention_grid: float32 ``(rows, cols)``: attention / max attention (0-1), NaN off-tissue.
        coords: int64 ``(N, 2)`` level-0 ``(x, y)`` of each tile; grid_rc: int64 ``(N, 2)`` ``(row, col)``.
        tile_size_level0, stride_level0: tile side and grid step in level-0 pixels.
        origin_level0: level-0 ``(x, y)`` of grid cell (0, 0).
        mpp: analysis resolution (microns per pixel).
        model, extractor: name, sha256 (and path) of the packages used.
        clinical: clinical values given; clinical_notes: how missing/unseen values were handled.
        runtime_s: wall time.
    """

    slide_path: str
    slide_dimensions: tuple[int, int]
    class_names: tuple[str, ...]
    probabilities: np.ndarray
    attention: np.ndarray
    attention_grid: np.ndarray
    coords: np.ndarray
    grid_rc: np.ndarray
    tile_size_level0: int
    stride_level0: int
    origin_level0: tuple[int, int]
    mpp: float
    model: dict[str, Any]
    extractor: dict[str, Any]
    clinical: dict[str, Any] = field(default_factory=dict)
    clinical_notes: tuple[str, ...] = ()
    runtime_s: float = 0.0

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def predicted_class(self) -> str:
        return self.class_names[self.predicted]

    def top_tiles(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` tiles with the highest attention (level-0 boxes)."""
        order = np.argsort(-self.attention, kind="stable")[:k]
        s = self.tile_size_level0
        return [
            {
                "x": int(self.coords[i, 0]),
                "y": int(self.coords[i, 1]),
                "width": s,
                "height": s,
                "attention": float(self.attention[i]),
            }
            for i in order
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-tile arrays beyond the top tiles)."""
        return {
            "slide": self.slide_path,
            "slide_dimensions": list(self.slide_dimensions),
            "class_names": list(self.class_names),
            "probabilities": {c: float(p) for c, p in zip(self.class_names, self.probabilities, strict=True)},
            "predicted_class": self.predicted_class,
            "model": self.model,
            "extractor": self.extractor,
            "clinical": self.clinical,
            "clinical_notes": list(self.clinical_notes),
            "n_tiles": int(self.attention.size),
            "mpp": self.mpp,
            "tile_size_level0": self.tile_size_level0,
            "stride_level0": self.stride_level0,
            "origin_level0": list(self.origin_level0),
            "grid_shape": list(self.attention_grid.shape),
            "attention_grid": "attention.npy: float32 (rows, cols), attention / max over the slide, NaN off-tissue",
            "top_tiles": self.top_tiles(),
            "runtime_s": self.runtime_s,
        }


def attention_grid(attention: np.ndarray, grid_rc: np.ndarray, grid_shape: tuple[int, int]) -> np.ndarray:
    """Scatter per-tile attention into a NaN float32 ``grid_shape`` grid, scaled to max 1."""
    grid = np.full(tuple(int(v) for v in grid_shape), np.nan, dtype=np.float32)
    if attention.size:
        peak = float(attention.max())
        grid[grid_rc[:, 0], grid_rc[:, 1]] = attention / peak if peak > 0 else attention
    return grid


def predict_slide(
    slide_path: str | os.PathLike[str],
    extractor: Extractor | str | os.PathLike[str],
    aggregator: Aggregator | str | os.PathLike[str],
    clinical: Mapping[str, Any] | None = None,
    *,
    roi: str | os.PathLike[str] | None = None,
    slide_mpp: float | None = None,
    device: str = "auto",
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SlidePrediction:
    """Predict the slide-level class of one slide (onnxruntime only).

    Args:
        slide_path: the slide.
        extractor: the feature extractor package (or a loaded :class:`~engine.mil.features.Extractor`);
            must be the one the aggregator was trained on.
        aggregator: the ``mil_aggregator`` package (or a loaded :class:`Aggregator`).
        clinical: clinical values by column name (e.g. ``{"age": 45, "er": "positive"}``); absent
            values are treated as missing, unseen categories as unknown.
        roi: optional GeoJSON restricting the tiles.
        slide_mpp: level-0 resolution for slides that do not record one.
        device: onnxruntime device for the extractor.
        batch_size: tiles per extractor call.
        progress: ``ProgressEvent("features", tiles_done, tiles_total)`` per batch.
        cancel: checked per batch.

    Raises:
        SlideOpenError, NoTissueError, ModelPackageError (wrong extractor), Cancelled.
    """
    from engine.mil.features import extract_slide, load_extractor
    from engine.slides.open import open_slide

    t0 = time.perf_counter()
    agg = aggregator if isinstance(aggregator, Aggregator) else load_aggregator(aggregator)
    ex = extractor if not isinstance(extractor, (str, os.PathLike)) else load_extractor(extractor, device)
    agg.check_extractor(ex)
    num, codes, notes = agg.encode(clinical)
    # tile exactly as the training bags were: tile size, mpp, tissue settings and tile cap
    cfg = agg.feature_config(batch_size=batch_size, device=device, slide_mpp=slide_mpp)
    with open_slide(slide_path, mpp=slide_mpp) as reader:
        bag = extract_slide(reader, ex, cfg, roi=roi, progress=progress, cancel=cancel)
    report(progress, ProgressEvent("aggregate", 0, 1, "scoring the slide"))
    probs, attention = agg.run(bag.features, num, codes)
    report(progress, ProgressEvent("aggregate", 1, 1, "done"))
    a = bag.attrs
    return SlidePrediction(
        slide_path=str(slide_path),
        slide_dimensions=tuple(int(v) for v in a["slide_dimensions"]),  # type: ignore[arg-type]
        class_names=tuple(agg.class_names),
        probabilities=probs,
        attention=attention,
        attention_grid=attention_grid(attention, bag.grid_rc, tuple(a["grid_shape"])),  # type: ignore[arg-type]
        coords=bag.coords,
        grid_rc=bag.grid_rc,
        tile_size_level0=int(a["tile_size_level0"]),
        stride_level0=int(a["stride_level0"]),
        origin_level0=(int(a["origin_level0"][0]), int(a["origin_level0"][1])),
        mpp=float(a["mpp"]),
        model={"name": agg.name, "sha256": agg.session.sha256, "path": str(agg.session.path)},
        extractor={"name": ex.name, "sha256": ex.sha256},
        clinical={k: v for k, v in dict(clinical or {}).items()},
        clinical_notes=tuple(notes),
        runtime_s=time.perf_counter() - t0,
    )


def write_prediction(
    pred: SlidePrediction, out_dir: str | os.PathLike[str], thumbnail: np.ndarray | None = None
) -> Path:
    """Write ``prediction.json``, ``attention.npy`` (the grid), ``attention.png`` (overlay on the
    thumbnail when given, else the map alone) and ``tiles.csv`` (x, y, width, height, attention)
    into ``out_dir`` atomically (all or nothing).

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "prediction.json", pred.to_dict())
        with atomic_path(tmp / "attention.npy") as p, open(p, "wb") as fh:
            np.save(fh, pred.attention_grid)
        _attention_png(pred, tmp / "attention.png", thumbnail)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["x", "y", "width", "height", "row", "col", "attention"])
        s = pred.tile_size_level0
        for (x, y), (r, c), att in zip(pred.coords, pred.grid_rc, pred.attention, strict=True):
            w.writerow([int(x), int(y), s, s, int(r), int(c), f"{float(att):.6g}"])
        (tmp / "tiles.csv").write_text(buf.getvalue(), encoding="utf-8")
    return out


def write_prediction_for_slide(
    pred: SlidePrediction, out_dir: str | os.PathLike[str], slide_mpp: float | None = None
) -> Path:
    """:func:`write_prediction` with ``attention.png`` over the slide's thumbnail (the slide is
    reopened for it), as the CLI and the app export a prediction.

    Raises:
        OutputError: the folder cannot be written; SlideOpenError: the slide can no longer be read.
    """
    from engine.slides.open import open_slide

    with open_slide(pred.slide_path, mpp=slide_mpp) as reader:
        thumbnail = reader.thumbnail(1024)
    return write_prediction(pred, out_dir, thumbnail)


def _attention_png(pred: SlidePrediction, path: Path, thumbnail: np.ndarray | None) -> None:
    """Attention grid coloured (viridis-like via matplotlib) and blended over the thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image

    grid = pred.attention_grid
    rgba = colormaps["inferno"](np.nan_to_num(grid, nan=0.0))
    rgba[..., 3] = np.where(np.isnan(grid), 0.0, 0.65)
    heat = Image.fromarray((rgba * 255).astype(np.uint8), "RGBA")
    w0, h0 = pred.slide_dimensions
    if thumbnail is not None:
        base = Image.fromarray(thumbnail).convert("RGBA")
    else:
        longer = 1024
        scale = longer / max(w0, h0)
        base = Image.new("RGBA", (max(1, round(w0 * scale)), max(1, round(h0 * scale))), (255, 255, 255, 255))
    sx = base.width / w0
    sy = base.height / h0
    rows, cols = grid.shape
    # the grid's level-0 footprint, scaled to the thumbnail
    gx0, gy0 = pred.origin_level0
    gw = cols * pred.stride_level0
    gh = rows * pred.stride_level0
    heat = heat.resize((max(1, round(gw * sx)), max(1, round(gh * sy))), Image.NEAREST)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    layer.paste(heat, (round(gx0 * sx), round(gy0 * sy)))
    Image.alpha_composite(base, layer).convert("RGB").save(path, format="PNG")
