"""Turning uint8 tile batches into model input, as a model package's metadata says.

Everything works on whole batches with numpy (no per-tile Python loops), because this runs on the
read threads of the heatmap pipeline, overlapped with inference on the same cores.
"""

from __future__ import annotations

import numpy as np

from engine.modelpkg import ModelMetadata


class Preprocessor:
    """uint8 RGB tiles -> float32 model input.

    ``x = (pixel / 255 - mean) / std`` per channel, fused into one multiply-add; channels reversed
    for ``BGR`` models; laid out ``NCHW`` or ``NHWC``; tiles resized (area-averaged, then
    bilinear) when their side differs from the model's ``input_size``; stain-normalised first when
    the package records a stain normalisation (``extra["stain_norm"]``, :mod:`engine.infer.stain`).

    Raises:
        ModelPackageError: a malformed stain normalisation or calibration entry.
    """

    __slots__ = ("_bgr", "_nchw", "_offset", "_scale", "size", "stain")

    def __init__(self, metadata: ModelMetadata) -> None:
        std = np.asarray(metadata.std, dtype=np.float64)
        mean = np.asarray(metadata.mean, dtype=np.float64)
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)  # per RGB channel
        self._offset = (-mean / std).astype(np.float32)
        self._bgr = metadata.channel_order == "BGR"
        self._nchw = metadata.input_layout == "NCHW"
        self.size = int(metadata.input_size)
        from engine.infer.stain import check_target

        extra = metadata.extra if isinstance(metadata.extra, dict) else {}
        self.stain = check_target(extra.get("stain_norm"))
        if metadata.task == "patch_classification":
            calibration_of(metadata)  # a malformed calibration fails here, before any tile is read

    def __call__(self, tiles: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Preprocess a batch.

        Args:
            tiles: uint8 ``(N, H, W, 3)`` RGB (a single ``(H, W, 3)`` tile is accepted too).
            out: optional float32 buffer of the output shape to fill (avoids an allocation).

        Returns:
            float32 ``(N, 3, S, S)`` (NCHW) or ``(N, S, S, 3)`` (NHWC), ``S = input_size``, C-contiguous.
        """
        if tiles.ndim == 3:
            tiles = tiles[None]
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"expected tiles of shape (N, H, W, 3), got {tiles.shape}")
        if tiles.shape[1] != self.size or tiles.shape[2] != self.size:
            tiles = resize_batch(tiles, self.size)
        if self.stain is not None:
            from engine.infer.stain import normalise

            tiles = normalise(tiles, self.stain)
        n = tiles.shape[0]
        s = self.size
        shape = (n, 3, s, s) if self._nchw else (n, s, s, 3)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise ValueError(f"out buffer must be float32 {shape}, got {out.dtype} {out.shape}")
        for c in range(3):
            src = 2 - c if self._bgr else c  # model channel c comes from RGB channel src
            dst = out[:, c] if self._nchw else out[..., c]
            # uint8 -> float32 and scale in one pass, then the offset in place
            np.multiply(tiles[..., src], self._scale[src], out=dst, casting="unsafe")
            dst += self._offset[src]
        return out


def resize_batch(tiles: np.ndarray, size: int) -> np.ndarray:
    """Resize square-or-not uint8 tiles ``(N, H, W, 3)`` to ``(N, size, size, 3)``.

    Downscaling by an integer factor >= 2 is first done by block averaging (no aliasing of the
    nuclear texture); the remainder is separable bilinear interpolation with pixel-centre alignment.
    """
    n, h, w, _ = tiles.shape
    fy, fx = h // size, w // size
    arr = tiles
    if fy >= 2 and fx >= 2:
        hh, ww = h // fy * fy, w // fx * fx
        arr = tiles[:, :hh, :ww].reshape(n, hh // fy, fy, ww // fx, fx, 3).mean(axis=(2, 4), dtype=np.float32)
    else:
        arr = tiles.astype(np.float32)
    h2, w2 = arr.shape[1], arr.shape[2]
    if (h2, w2) != (size, size):
        arr = _bilinear_axis(arr, size, axis=1)
        arr = _bilinear_axis(arr, size, axis=2)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _bilinear_axis(arr: np.ndarray, size: int, axis: int) -> np.ndarray:
    n_in = arr.shape[axis]
    if n_in == size:
        return arr
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    wt = (pos - lo).astype(np.float32)
    shape = [1] * arr.ndim
    shape[axis] = size
    wt = wt.reshape(shape)
    a = np.take(arr, lo, axis=axis)
    b = np.take(arr, hi, axis=axis)
    return a + (b - a) * wt


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax; float32 ``(N, C)`` in, probabilities summing to 1 out."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def to_probabilities(outputs: np.ndarray, metadata: ModelMetadata, calibrated: bool = True) -> np.ndarray:
    """Model outputs ``(N, C)`` -> class probabilities ``(N, C)`` float32.

    A single-logit binary model (``C == 1`` with two class names) gives ``[1 - p, p]``. With
    ``calibrated`` (the default) the package's calibration (``extra["calibration"]``, fitted on
    validation data by :mod:`engine.train.calibration`) is applied, so every consumer (heatmaps,
    ``evaluate``, ``predict``) reads calibrated probabilities that the package's operating
    threshold refers to. ``calibrated=False`` gives the raw softmax (for fitting a calibration).

    Raises:
        ModelPackageError: a malformed calibration entry.
    """
    out = np.asarray(outputs, dtype=np.float32)
    if out.ndim == 1:
        out = out[:, None]
    cal = calibration_of(metadata) if calibrated else None
    if cal is None:
        if out.shape[1] == 1 and len(metadata.class_names) == 2:
            p = out[:, 0] if metadata.output == "probabilities" else 1.0 / (1.0 + np.exp(-out[:, 0]))
            return np.stack([1.0 - p, p], axis=1).astype(np.float32)
        return out if metadata.output == "probabilities" else softmax(out)
    # calibrated: float64 throughout, so an isotonic table's steep steps map exactly
    x = out.astype(np.float64)
    if metadata.output == "probabilities":
        p = np.clip(x, 1e-12, 1.0)
        x = np.log(np.stack([1.0 - p[:, 0], p[:, 0]], axis=1)) if x.shape[1] == 1 else np.log(p)
    elif x.shape[1] == 1:
        x = np.stack([np.zeros_like(x[:, 0]), x[:, 0]], axis=1)  # sigmoid(z) == softmax([0, z])[1]
    x = x / cal["temperature"]
    x -= x.max(axis=1, keepdims=True)
    probs = np.exp(x)
    probs /= probs.sum(axis=1, keepdims=True)
    if cal.get("isotonic") is not None and probs.shape[1] == 2:
        tx, ty = cal["isotonic"]
        k = int(metadata.positive_class)
        pk = np.interp(probs[:, k], tx, ty)
        probs[:, k] = pk
        probs[:, 1 - k] = 1.0 - pk
    return probs.astype(np.float32)


#: calibration methods a package may name in ``extra["calibration"]["method"]``
CALIBRATION_METHODS = ("none", "temperature", "isotonic")


def calibration_of(metadata: ModelMetadata) -> dict[str, object] | None:
    """The package's calibration as ``{"temperature": T, "isotonic": (x, y) or None}``, or
    ``None`` when it has none.

    ``extra["calibration"]`` is ``{"method": "temperature", "temperature": T, ...}`` (softmax of
    ``logits / T``) or ``{"method": "isotonic", "temperature": T, "isotonic": {"x": [...],
    "y": [...]}}`` (then the positive-class probability is mapped through the piecewise-linear
    table; binary models only).

    Raises:
        ModelPackageError: a malformed entry (unknown method, T not positive, a bad table).
    """
    from engine.errors import ModelPackageError

    extra = metadata.extra if isinstance(metadata.extra, dict) else {}
    cal = extra.get("calibration")
    if cal is None:
        return None
    if not isinstance(cal, dict) or cal.get("method") not in CALIBRATION_METHODS:
        raise ModelPackageError(f"model calibration must name a method ({', '.join(CALIBRATION_METHODS)}), got {cal!r:.80}")
    if cal["method"] == "none":
        return None
    try:
        t = float(cal.get("temperature", 1.0))
    except (TypeError, ValueError):
        t = float("nan")
    if not (np.isfinite(t) and 1e-3 <= t <= 1e3):
        raise ModelPackageError(f"model calibration temperature must be a positive number, got {cal.get('temperature')!r}")
    table = None
    if cal["method"] == "isotonic":
        iso = cal.get("isotonic")
        try:
            x = np.asarray(iso["x"], dtype=np.float64)  # type: ignore[index]
            y = np.asarray(iso["y"], dtype=np.float64)  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            raise ModelPackageError("isotonic calibration needs a table {'x': [...], 'y': [...]}") from None
        ok = x.ndim == 1 and x.shape == y.shape and x.size >= 2 and np.all(np.diff(x) >= 0)
        if not ok or not np.all(np.isfinite(y)) or y.min() < 0 or y.max() > 1:
            raise ModelPackageError("isotonic calibration table must be sorted x with probabilities y of equal length")
        if len(metadata.class_names) != 2:
            raise ModelPackageError("isotonic calibration applies to binary models only")
        table = (x, y)
    return {"temperature": t, "isotonic": table}
