"""Stain normalisation of H&E patches: Reinhard (LAB statistics) and Macenko (stain vectors).

A model trained with ``--stain-norm`` records its target in the package metadata
(``extra["stain_norm"]``) and :class:`engine.infer.preprocess.Preprocessor` normalises every
tile with it before the model sees it, so heatmaps, ``evaluate`` and ``predict`` apply exactly the
normalisation training used. Everything is vectorised over whole batches ``(N, H, W, 3)`` uint8.

Only tissue pixels (optical density above :data:`OD_TISSUE` in every channel) define an image's
statistics; a tile with less than :data:`MIN_TISSUE_FRACTION` tissue (glass, background) is
returned unchanged instead of being stretched into false colours.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import ConfigError, ModelPackageError

METHODS = ("reinhard", "macenko")
OD_TISSUE = 0.15
MIN_TISSUE_FRACTION = 0.05
#: Macenko et al.'s reference haematoxylin and eosin OD vectors (unit length)
_HE_REFERENCE = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
_HE_REFERENCE = _HE_REFERENCE / np.linalg.norm(_HE_REFERENCE, axis=1, keepdims=True)
# sRGB (D65) <-> XYZ
_M_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_M_RGB = np.linalg.inv(_M_XYZ)
_WHITE = np.array([0.950456, 1.0, 1.088754])


_LINEAR_LUT = np.where(
    np.arange(256) / 255.0 > 0.04045, ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4, np.arange(256) / 255.0 / 12.92
).astype(np.float32)
#: linear light quantised to 16 bits -> the nearest 8-bit sRGB code
_SRGB_LUT = np.searchsorted((_LINEAR_LUT[1:] + _LINEAR_LUT[:-1]) / 2, np.arange(65536) / 65535.0).astype(np.uint8)
#: f(X/Xn), f(Y/Yn), f(Z/Zn) @ _F_LAB + (-16, 0, 0) == (L, a, b)
_F_LAB = np.array([[0.0, 500.0, 0.0], [116.0, -500.0, 200.0], [0.0, 0.0, -200.0]], dtype=np.float32)
_LAB_F = np.linalg.inv(_F_LAB.astype(np.float64)).astype(np.float32)
_L_OFFSET = np.array([16.0, 0.0, 0.0], dtype=np.float32)
_OD_LUT = (-np.log(np.maximum(np.arange(256), 1.0) / 255.0)).astype(np.float32)
_XYZ_N = (_M_XYZ / _WHITE[:, None]).T.astype(np.float32)  # rgb_linear @ _XYZ_N == xyz / white
_RGB_N = (np.diag(_WHITE) @ _M_RGB.T).astype(np.float32)  # (xyz / white) @ _RGB_N == rgb_linear


def _f(t: np.ndarray) -> np.ndarray:
    out = np.cbrt(t)
    low = t <= 0.008856
    if low.any():
        out[low] = 7.787 * t[low] + 16 / 116
    return out


def _f_inv(f: np.ndarray) -> np.ndarray:
    out = f * f * f
    low = f <= 0.206893
    if low.any():
        out[low] = (f[low] - 16 / 116) / 7.787
    return out


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` -> CIE-LAB float32 (D65; L in 0..100)."""
    lin = _LINEAR_LUT[np.asarray(rgb, dtype=np.uint8)]
    lab = _f(lin @ _XYZ_N) @ _F_LAB
    lab -= _L_OFFSET
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE-LAB ``(..., 3)`` -> uint8 RGB (clipped to the gamut)."""
    f = (np.asarray(lab, dtype=np.float32) + _L_OFFSET) @ _LAB_F
    lin = _f_inv(f) @ _RGB_N
    np.clip(lin, 0.0, 1.0, out=lin)
    lin *= 65535.0
    return _SRGB_LUT[lin.astype(np.uint16)]


def optical_density(tiles: np.ndarray) -> np.ndarray:
    """``-log(I / 255)`` per channel (I clipped to >= 1), float32."""
    return _OD_LUT[np.asarray(tiles, dtype=np.uint8)]


def tissue_mask(tiles: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` bool: pixels whose optical density exceeds :data:`OD_TISSUE` in every channel."""
    return (optical_density(tiles) > OD_TISSUE).all(axis=-1)


def _batch(tiles: np.ndarray) -> tuple[np.ndarray, bool]:
    t = np.asarray(tiles)
    single = t.ndim == 3
    t = t[None] if single else t
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected tiles (N, H, W, 3), got {np.asarray(tiles).shape}")
    return t, single


# -- Reinhard ----------------------------------------------------------------------------------
def reinhard_stats(tiles: np.ndarray, lab: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile LAB ``(mean (N, 3), std (N, 3), has_tissue (N,))`` over tissue pixels."""
    t, _ = _batch(tiles)
    n = t.shape[0]
    lab = (rgb_to_lab(t) if lab is None else lab).reshape(n, -1, 3)
    w = tissue_mask(t).reshape(n, -1).astype(np.float32)
    cnt = w.sum(1)
    ok = cnt >= MIN_TISSUE_FRACTION * w.shape[1]
    denom = np.maximum(cnt, 1.0)[:, None]
    mean = np.einsum("np,npc->nc", w, lab) / denom
    var = np.einsum("np,npc->nc", w, lab * lab) / denom - mean * mean
    return mean.astype(np.float64), np.sqrt(np.maximum(var, 1e-6)).astype(np.float64), ok


def reinhard(tiles: np.ndarray, target: dict[str, Any]) -> np.ndarray:
    """Map each tile's tissue LAB mean / std to ``target["mean"]`` / ``target["std"]``.

    Tiles with too little tissue come back unchanged.
    """
    t, single = _batch(tiles)
    lab = rgb_to_lab(t)
    mean, std, ok = reinhard_stats(t, lab)
    tm, ts = np.asarray(target["mean"], dtype=np.float64), np.asarray(target["std"], dtype=np.float64)
    scale = (ts / std).astype(np.float32)[:, None, None, :]
    lab = lab * scale + (tm - mean * (ts / std)).astype(np.float32)[:, None, None, :]
    out = np.where(ok[:, None, None, None], lab_to_rgb(lab), t.astype(np.uint8))
    return out[0] if single else out


# -- Macenko -----------------------------------------------------------------------------------
def macenko_stains(tiles: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile Macenko estimate: ``(stain matrix (N, 2, 3) rows H then E, unit OD vectors;
    99th-percentile concentrations (N, 2); has_tissue (N,))``."""
    t, _ = _batch(tiles)
    n = t.shape[0]
    od = optical_density(t).reshape(n, -1, 3)
    w = tissue_mask(t).reshape(n, -1)
    cnt = w.sum(1)
    ok = cnt >= max(10, MIN_TISSUE_FRACTION * w.shape[1])
    wf = w.astype(np.float64)
    denom = np.maximum(cnt, 1)[:, None]
    mu = np.einsum("np,npc->nc", wf, od) / denom
    cen = (od - mu[:, None]) * wf[..., None]
    cov = np.einsum("npc,npd->ncd", cen, cen) / denom[..., None]
    _, vecs = np.linalg.eigh(cov + 1e-9 * np.eye(3))
    plane = vecs[:, :, 1:3]  # the two largest eigenvectors (N, 3, 2)
    plane = plane * np.where(plane[:, :1, :] < 0, -1.0, 1.0)  # point into positive OD
    proj = np.einsum("npc,nck->npk", od, plane)
    phi = np.where(w, np.arctan2(proj[..., 1], proj[..., 0]), np.nan)
    lo, hi = _masked_percentile(phi, cnt, alpha), _masked_percentile(phi, cnt, 100 - alpha)
    v1 = np.einsum("nck,nk->nc", plane, np.stack([np.cos(lo), np.sin(lo)], 1))
    v2 = np.einsum("nck,nk->nc", plane, np.stack([np.cos(hi), np.sin(hi)], 1))
    h_first = v1[:, 0] > v2[:, 0]  # haematoxylin absorbs more red
    he = np.where(h_first[:, None, None], np.stack([v1, v2], 1), np.stack([v2, v1], 1))
    he = he / np.maximum(np.linalg.norm(he, axis=2, keepdims=True), 1e-9)
    # tiles without tissue (or a degenerate estimate): the reference H&E vectors keep the maths finite
    bad = ~ok | ~np.isfinite(he).all(axis=(1, 2))
    he[bad] = _HE_REFERENCE
    ok = ok & ~bad
    conc = _concentrations(od, he)
    cmax = np.stack([_masked_percentile(np.where(w, conc[..., k], np.nan), cnt, 99) for k in range(2)], 1)
    cmax = np.where(np.isfinite(cmax) & (cmax > 1e-6), cmax, 1.0)
    return he, cmax, ok


def _masked_percentile(values: np.ndarray, count: np.ndarray, q: float) -> np.ndarray:
    """Per-row ``q``-th percentile ``(N,)`` of the non-NaN values of ``(N, P)`` (``count`` of them
    per row; NaN where a row has none), linear interpolation as ``np.percentile``."""
    srt = np.sort(values, axis=1)  # NaNs sort last
    pos = np.maximum(count - 1, 0) * (q / 100.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    a = np.take_along_axis(srt, lo[:, None], 1)[:, 0]
    b = np.take_along_axis(srt, hi[:, None], 1)[:, 0]
    out = a + (b - a) * (pos - lo)
    return np.where(count > 0, out, np.nan)


def _concentrations(od: np.ndarray, he: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations ``(N, P, 2)`` of OD pixels ``(N, P, 3)``."""
    pinv = np.linalg.pinv(np.transpose(he, (0, 2, 1))).astype(np.float32)  # (N, 2, 3)
    return od @ np.transpose(pinv, (0, 2, 1))


def macenko(tiles: np.ndarray, target: dict[str, Any]) -> np.ndarray:
    """Re-render each tile with ``target["stain_matrix"]`` (2 x 3) and concentrations scaled so
    their 99th percentiles match ``target["max_conc"]``. Tiles with too little tissue come back
    unchanged."""
    t, single = _batch(tiles)
    n, h, w_, _ = t.shape
    he, cmax, ok = macenko_stains(t)
    t_he = np.asarray(target["stain_matrix"], dtype=np.float64)
    t_max = np.asarray(target["max_conc"], dtype=np.float64)
    od = optical_density(t).reshape(n, -1, 3)
    conc = _concentrations(od, he) * (t_max / cmax).astype(np.float32)[:, None, :]
    od_new = conc @ t_he.astype(np.float32)
    np.clip(od_new, 0.0, 20.0, out=od_new)
    np.negative(od_new, out=od_new)
    np.exp(od_new, out=od_new)
    rgb = np.clip(np.rint(255.0 * od_new), 0, 255).astype(np.uint8).reshape(n, h, w_, 3)
    out = np.where(ok[:, None, None, None], rgb, t.astype(np.uint8))
    return out[0] if single else out


# -- fitting and applying a package's normalisation ---------------------------------------------
def fit_target(tiles: np.ndarray, method: str) -> dict[str, Any]:
    """The normalisation target fitted on (a sample of) training patches: the median of the
    per-tile statistics over tiles with tissue.

    Raises:
        ConfigError: unknown method, or no patch with enough tissue.
    """
    if method not in METHODS:
        raise ConfigError(f"stain normalisation must be one of {', '.join(METHODS)}, got {method!r}")
    t, _ = _batch(tiles)
    if method == "reinhard":
        mean, std, ok = reinhard_stats(t)
        if not ok.any():
            raise ConfigError("stain normalisation: no training patch has enough tissue to fit a target")
        return {"method": "reinhard", "mean": _r(np.median(mean[ok], 0)), "std": _r(np.median(std[ok], 0)),
                "n_fit": int(ok.sum())}
    he, cmax, ok = macenko_stains(t)
    if not ok.any():
        raise ConfigError("stain normalisation: no training patch has enough tissue to fit a target")
    m = np.median(he[ok], 0)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    return {"method": "macenko", "stain_matrix": [_r(r) for r in m], "max_conc": _r(np.median(cmax[ok], 0)),
            "n_fit": int(ok.sum())}


def _r(v: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in v]


def normalise(tiles: np.ndarray, target: dict[str, Any]) -> np.ndarray:
    """Apply a fitted target (:func:`fit_target`) to uint8 tiles ``(N, H, W, 3)``."""
    return reinhard(tiles, target) if target["method"] == "reinhard" else macenko(tiles, target)


def check_target(entry: Any) -> dict[str, Any] | None:
    """A package's ``extra["stain_norm"]`` validated (``None`` / ``{"method": "none"}``: no normalisation).

    Raises:
        ModelPackageError: a malformed entry.
    """
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("method") not in (*METHODS, "none"):
        raise ModelPackageError(f"model stain_norm must name a method ({', '.join(METHODS)}), got {entry!r:.80}")
    if entry["method"] == "none":
        return None
    try:
        if entry["method"] == "reinhard":
            ok = np.asarray(entry["mean"], float).shape == (3,) and np.asarray(entry["std"], float).shape == (3,)
            ok = ok and bool(np.all(np.asarray(entry["std"], float) > 0))
        else:
            ok = np.asarray(entry["stain_matrix"], float).shape == (2, 3) and np.asarray(entry["max_conc"], float).shape == (2,)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelPackageError(f"model stain_norm {entry['method']} target is incomplete or malformed")
    return entry
