"""Calibration and the operating threshold of a patch classifier, fitted on validation data.

A model's raw softmax is rarely calibrated, and 0.5 is rarely the right place to call a tile
positive: on real lymph-node tissue a model that looks good by AUC may flag a third of the
tumour-free tiles at 0.5. This module fits, on the validation split's raw outputs:

- a **temperature** ``T`` (softmax of ``logits / T``, minimising the validation negative log
  likelihood; one parameter, keeps the ranking and so the AUC), optionally followed by an
  **isotonic** map of the positive-class probability (stored as a piecewise-linear table);
- the **operating threshold** on the calibrated positive-class probability, by a rule:
  ``specificity`` (default: the lowest threshold that flags at most ``1 - target`` of the
  negatives, i.e. specificity >= 0.95), ``sensitivity`` (the highest threshold keeping
  sensitivity >= target), ``youden`` (max sensitivity + specificity - 1) or ``fixed``
  (``target`` is the threshold).

The result lives in the model package's metadata (:func:`calibration_extra`):
``extra["calibration"]`` (read by :func:`engine.infer.preprocess.to_probabilities`, so every
consumer gets calibrated probabilities), ``extra["operating_threshold"]`` (the default threshold
of heatmaps, lesions, the app and the CLI: :func:`engine.infer.lesions.operating_threshold`) and
``extra["threshold_rule"]`` (how it was chosen, with the validation sensitivity / specificity).

Public entry points: :func:`fit_calibration` (arrays in, result out), :func:`calibrate_package`
(re-fit and re-embed into an existing ``.onnx``), :func:`package_outputs` (a package's raw,
uncalibrated outputs on a dataset), :func:`calibrate_package_on_data` (both in one call) and
:func:`calibrate_package_on_run` (on the validation split of the run the package came from, e.g.
after ``export --tta8``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DatasetError

RULES = ("specificity", "sensitivity", "youden", "fixed")
METHODS = ("temperature", "isotonic", "none")
DEFAULT_RULE = "specificity"
DEFAULT_TARGET = 0.95
DEFAULT_METHOD = "temperature"
#: search range of the temperature (beyond it the model is broken, not miscalibrated)
T_RANGE = (0.02, 50.0)
#: most points kept in a stored isotonic table
MAX_ISOTONIC_POINTS = 512
CALIBRATION_FILE = "calibration.json"


def check_rule(rule: str, target: float | None) -> float:
    """Validate a threshold rule and return its target (the default for the rule when ``None``).

    Raises:
        ConfigError: unknown rule, target outside (0, 1).
    """
    if rule not in RULES:
        raise ConfigError(f"threshold rule must be one of {', '.join(RULES)}, got {rule!r}")
    t = DEFAULT_TARGET if target is None else target
    if rule == "fixed" and target is None:
        t = 0.5
    if not (isinstance(t, (int, float)) and math.isfinite(t) and 0.0 < t < 1.0):
        raise ConfigError(f"threshold target must be in (0, 1), got {target!r}")
    return float(t)


def as_logits(outputs: np.ndarray, kind: str = "auto") -> np.ndarray:
    """Raw model outputs as ``(N, C)`` float64 logits.

    Args:
        outputs: ``(N, C)`` logits or softmax probabilities, or ``(N,)`` positive-class
            probabilities / single logits of a binary model.
        kind: ``"logits"``, ``"probs"`` or ``"auto"`` (probabilities when every value is in
            [0, 1] and, for 2-D input, the rows sum to 1).

    Probabilities become log-probabilities, which are logits up to a per-row constant (softmax
    of ``log p / T`` is exactly temperature scaling of the underlying logits).
    """
    x = np.asarray(outputs, dtype=np.float64)
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise DatasetError(f"validation outputs must be (N,) or (N, C) with N > 0, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DatasetError("validation outputs contain NaN or infinite values")
    if kind == "auto":
        in_unit = bool(x.min() >= 0.0 and x.max() <= 1.0)
        kind = "probs" if in_unit and (x.ndim == 1 or np.allclose(x.sum(1), 1.0, atol=1e-3)) else "logits"
    if kind not in ("logits", "probs"):
        raise ConfigError(f"outputs kind must be logits, probs or auto, got {kind!r}")
    if x.ndim == 1:
        if kind == "probs":
            p = np.clip(x, 1e-12, 1 - 1e-12)
            return np.log(np.stack([1 - p, p], axis=1))
        return np.stack([np.zeros_like(x), x], axis=1)  # sigmoid(z) == softmax([0, z])[1]
    if x.shape[1] < 2:
        return as_logits(x[:, 0], kind)
    return np.log(np.clip(x, 1e-12, 1.0)) if kind == "probs" else x


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y: np.ndarray, beta: float) -> float:
    z = logits * beta
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(y.size), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)``.

    The NLL is convex in ``1 / T``, so a golden-section search on ``log(1 / T)`` over
    :data:`T_RANGE` finds the optimum to ~1e-6 relative precision.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    lo, hi = math.log(1 / T_RANGE[1]), math.log(1 / T_RANGE[0])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(z, y, math.exp(b))
    return float(1.0 / math.exp((lo + hi) / 2))


def fit_isotonic(score: np.ndarray, y_pos: np.ndarray) -> tuple[list[float], list[float]]:
    """Isotonic regression of the positive label on ``score``, as a piecewise-linear table ``(x, y)``
    (at most :data:`MAX_ISOTONIC_POINTS` points; ``np.interp(score, x, y)`` applies it)."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(np.asarray(score, dtype=np.float64), np.asarray(y_pos, dtype=np.float64))
    x = np.asarray(iso.X_thresholds_, dtype=np.float64)
    y = np.asarray(iso.y_thresholds_, dtype=np.float64)
    if x.size > MAX_ISOTONIC_POINTS:
        keep = np.unique(np.linspace(0, x.size - 1, MAX_ISOTONIC_POINTS).round().astype(np.int64))
        x, y = x[keep], y[keep]
    if x.size == 1:  # a constant map still needs two points for np.interp
        x, y = np.array([0.0, 1.0]), np.array([y[0], y[0]])
    return [float(v) for v in x], [float(v) for v in y]


def expected_calibration_error(score: np.ndarray, y_pos: np.ndarray, bins: int = 10) -> float:
    """ECE of the positive-class probability over ``bins`` equal-width bins."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(y_pos, dtype=np.float64)
    which = np.clip((s * bins).astype(np.int64), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(float(s[sel].mean()) - float(y[sel].mean()))
    return float(total / max(1, s.size))


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    """An operating threshold and what it achieves on the data it was chosen on."""

    rule: str
    target: float
    threshold: float
    sensitivity: float
    specificity: float
    n_val: int
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "target": self.target, "threshold": round(self.threshold, 6),
            "sensitivity": round(self.sensitivity, 6), "specificity": round(self.specificity, 6),
            "n_val": self.n_val, "n_pos": self.n_pos, "n_neg": self.n_neg,
        }


def choose_threshold(score: np.ndarray, y_pos: np.ndarray, rule: str = DEFAULT_RULE, target: float | None = None) -> ThresholdChoice:
    """Choose the operating threshold on positive-class probabilities.

    Candidate thresholds lie midway between consecutive distinct scores (plus one below the
    lowest and one above the highest); a tile is positive when ``score >= threshold``.

    Raises:
        DatasetError: no positives or no negatives (no threshold rule is defined).
        ConfigError: unknown rule or bad target.
    """
    t_goal = check_rule(rule, target)
    s = np.asarray(score, dtype=np.float64).ravel()
    y = np.asarray(y_pos, dtype=bool).ravel()
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    if pos.size == 0 or neg.size == 0:
        raise DatasetError(
            f"choosing a threshold needs validation patches of both kinds ({pos.size} positive, {neg.size} negative)"
        )
    u = np.unique(s)
    cands = np.concatenate([[max(0.0, u[0] - 1e-6)], (u[:-1] + u[1:]) / 2, [min(1.0, np.nextafter(u[-1], np.inf))]])
    if rule == "fixed":
        cands = np.array([t_goal])
    # positives at or above t / negatives below t, for every candidate at once
    sens = (pos.size - np.searchsorted(pos, cands, side="left")) / pos.size
    spec = np.searchsorted(neg, cands, side="left") / neg.size
    if rule == "specificity":
        ok = np.flatnonzero(spec >= t_goal - 1e-12)
        i = int(ok[0]) if ok.size else cands.size - 1  # lowest such threshold = best sensitivity
    elif rule == "sensitivity":
        ok = np.flatnonzero(sens >= t_goal - 1e-12)
        i = int(ok[-1]) if ok.size else 0  # highest such threshold = best specificity
    elif rule == "youden":
        i = int(np.argmax(sens + spec - 1.0))
    else:
        i = 0
    return ThresholdChoice(rule, t_goal, float(np.clip(cands[i], 0.0, 1.0)), float(sens[i]), float(spec[i]),
                           int(s.size), int(pos.size), int(neg.size))


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """A fitted calibration and operating threshold.

    Attributes:
        calibration: the ``extra["calibration"]`` entry (method, temperature, optional isotonic
            table, validation NLL / ECE before and after).
        threshold: the chosen :class:`ThresholdChoice` (on calibrated probabilities).
    """

    calibration: dict[str, Any]
    threshold: ThresholdChoice

    @property
    def operating_threshold(self) -> float:
        return self.threshold.threshold

    def extra(self) -> dict[str, Any]:
        """The package metadata ``extra`` keys this result sets."""
        return calibration_extra(self)


def calibration_extra(result: CalibrationResult) -> dict[str, Any]:
    """``{"operating_threshold", "calibration", "threshold_rule"}`` for a package's ``extra``."""
    return {
        "operating_threshold": round(result.threshold.threshold, 6),
        "calibration": dict(result.calibration),
        "threshold_rule": result.threshold.to_dict(),
    }


def calibrated_probabilities(logits: np.ndarray, calibration: dict[str, Any], positive_class: int) -> np.ndarray:
    """``(N, C)`` probabilities of ``logits`` under a calibration entry, exactly as
    :func:`engine.infer.preprocess.to_probabilities` applies it to a package's outputs."""
    method = calibration.get("method", "none")
    t = float(calibration.get("temperature", 1.0)) if method != "none" else 1.0
    p = _softmax(np.asarray(logits, dtype=np.float64) / t)
    if method == "isotonic":
        iso = calibration["isotonic"]
        pk = np.interp(p[:, positive_class], iso["x"], iso["y"])
        p = np.stack([1 - pk, pk], axis=1) if positive_class == 1 else np.stack([pk, 1 - pk], axis=1)
    return p


def fit_calibration(
    outputs: np.ndarray,
    labels: np.ndarray,
    positive_class: int = 1,
    *,
    method: str = DEFAULT_METHOD,
    rule: str = DEFAULT_RULE,
    target: float | None = None,
    kind: str = "auto",
) -> CalibrationResult:
    """Fit a calibration and choose the operating threshold on validation outputs.

    Args:
        outputs: the model's RAW (uncalibrated) validation outputs: ``(N, C)`` logits or softmax
            probabilities, or ``(N,)`` positive-class probabilities (see :func:`as_logits`).
        labels: ``(N,)`` class indices (0..C-1).
        positive_class: the class whose probability is thresholded.
        method: ``"temperature"``, ``"isotonic"`` (temperature, then an isotonic map; binary
            only) or ``"none"`` (threshold only).
        rule, target: the threshold rule (see :func:`choose_threshold`).
        kind: what ``outputs`` are (``"logits"``, ``"probs"``, ``"auto"``).

    Raises:
        ConfigError: bad method / rule / target; DatasetError: bad shapes, one class only.
    """
    if method not in METHODS:
        raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    z = as_logits(outputs, kind)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.size != z.shape[0]:
        raise DatasetError(f"{z.shape[0]} validation outputs but {y.size} labels")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise DatasetError(f"labels must be class indices 0..{z.shape[1] - 1}")
    if not 0 <= positive_class < z.shape[1]:
        raise ConfigError(f"positive class {positive_class} is not one of the model's {z.shape[1]} outputs")
    if method == "isotonic" and z.shape[1] != 2:
        raise ConfigError("isotonic calibration applies to binary models only; use temperature")
    check_rule(rule, target)
    y_pos = y == positive_class
    raw = _softmax(z)
    cal: dict[str, Any] = {"method": method, "temperature": 1.0}
    if method != "none":
        cal["temperature"] = round(fit_temperature(z, y), 6)
    if method == "isotonic":
        x_tab, y_tab = fit_isotonic(_softmax(z / cal["temperature"])[:, positive_class], y_pos)
        cal["isotonic"] = {"x": x_tab, "y": y_tab}
    probs = calibrated_probabilities(z, cal, positive_class)
    eps = 1e-12
    cal.update({
        "n_val": int(y.size),
        "nll_before": round(float(-np.mean(np.log(raw[np.arange(y.size), y] + eps))), 6),
        "nll_after": round(float(-np.mean(np.log(probs[np.arange(y.size), y] + eps))), 6),
        "ece_before": round(expected_calibration_error(raw[:, positive_class], y_pos), 6),
        "ece_after": round(expected_calibration_error(probs[:, positive_class], y_pos), 6),
    })
    return CalibrationResult(cal, choose_threshold(probs[:, positive_class], y_pos, rule, target))


def calibrate_package(
    model_path: str | os.PathLike[str],
    outputs: np.ndarray,
    labels: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    rule: str = DEFAULT_RULE,
    target: float | None = None,
    kind: str = "auto",
    out_path: str | os.PathLike[str] | None = None,
    update_card: bool = True,
) -> CalibrationResult:
    """(Re)fit a package's calibration and operating threshold and embed them in its metadata.

    Args:
        model_path: the ``.onnx`` model package (patch classifier).
        outputs: the package's RAW validation outputs (logits, or uncalibrated probabilities:
            :func:`package_outputs` gives them), in the package's class order; probabilities
            from ``metascope evaluate`` of an already calibrated package are NOT raw.
        labels: ``(N,)`` class indices in the package's class order.
        method, rule, target, kind: see :func:`fit_calibration`.
        out_path: write the re-embedded package there instead of replacing ``model_path``.
        update_card: rewrite the threshold section of the model card (``MODEL.md`` beside the
            written package) when the card exists.

    Returns:
        The :class:`CalibrationResult` now stored in the package.

    Raises:
        ModelPackageError: not a patch classifier package; ConfigError / DatasetError: see
        :func:`fit_calibration`.
    """
    from dataclasses import replace

    from engine.errors import ModelPackageError
    from engine.modelpkg import read_metadata, write_metadata

    meta = read_metadata(model_path)
    if meta.task != "patch_classification":
        raise ModelPackageError(f"{Path(model_path).name} is a {meta.task} model; calibration applies to patch classifiers")
    width = np.shape(outputs)[1] if np.ndim(outputs) == 2 else 1
    if width not in (1, len(meta.class_names)):
        raise DatasetError(f"{width} outputs per patch, but {Path(model_path).name} has {len(meta.class_names)} classes")
    result = fit_calibration(outputs, labels, int(meta.positive_class), method=method, rule=rule, target=target, kind=kind)
    extra = {**dict(meta.extra or {}), **result.extra()}
    if isinstance(extra.get("tta"), dict):  # fitted on the TTA graph's own outputs now
        extra["tta"] = {**extra["tta"], "calibration_fitted_with_tta": True}
    dst = write_metadata(model_path, replace(meta, extra=extra), out_path)
    if update_card:
        from engine.modelcard import card_path, update_card_threshold

        if card_path(dst).is_file():
            update_card_threshold(card_path(dst), extra)
    return result


def package_outputs(
    model_path: str | os.PathLike[str],
    dataset: Any,
    indices: np.ndarray | None = None,
    *,
    device: str = "auto",
    batch_size: int = 256,
    progress: Any = None,
    cancel: Any = None,
) -> np.ndarray:
    """A package's raw (uncalibrated) softmax probabilities ``(n, C)`` on patches of ``dataset``
    (preprocessing, stain normalisation and any exported TTA exactly as in use)."""
    from engine.infer.preprocess import Preprocessor, to_probabilities
    from engine.infer.session import load_model
    from engine.jobs import ProgressEvent, check_cancel, report

    session = load_model(model_path, device=device)
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    pre = Preprocessor(session.metadata)
    parts = []
    read_many = getattr(dataset, "read_many", None)
    n_batches = max(1, -(-idx.size // batch_size))
    for b, start in enumerate(range(0, idx.size, batch_size)):
        check_cancel(cancel)
        chunk = idx[start : start + batch_size]
        tiles = read_many(chunk) if read_many is not None else np.stack([dataset.read(int(i)) for i in chunk])
        parts.append(to_probabilities(session.run(pre(tiles)), session.metadata, calibrated=False))
        report(progress, ProgressEvent("calibrate", b + 1, n_batches, f"{min(start + batch_size, idx.size)}/{idx.size} patches"))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.float32)


def calibrate_package_on_data(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    dataset: Any = None,
    fmt: str = "auto",
    mpp: float | None = None,
    indices: np.ndarray | None = None,
    method: str = DEFAULT_METHOD,
    rule: str = DEFAULT_RULE,
    target: float | None = None,
    device: str = "auto",
    batch_size: int = 256,
    out_path: str | os.PathLike[str] | None = None,
    progress: Any = None,
    cancel: Any = None,
) -> CalibrationResult:
    """Run the package on labelled validation patches and (re)fit its calibration and threshold.

    ``data`` (a dataset path) or ``dataset`` (an opened PatchDataset); ``indices`` restricts it
    to a validation subset. Dataset classes are matched to the model's by name.
    """
    from engine.modelpkg import read_metadata
    from engine.train.evaluate import _label_map

    if dataset is None:
        if data is None:
            raise ConfigError("calibration needs labelled validation data")
        from engine.data import open_dataset

        dataset = open_dataset(data, fmt=fmt, mpp=mpp, labelled=True)
    labels_all = np.asarray(dataset.labels, dtype=np.int64)
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0 or (labels_all[idx] < 0).any():
        raise DatasetError("calibration needs labelled validation patches (none found, or some unlabelled)")
    meta = read_metadata(model_path)
    mapping, _ = _label_map(tuple(dataset.class_names), tuple(meta.class_names))
    probs = package_outputs(model_path, dataset, idx, device=device, batch_size=batch_size, progress=progress, cancel=cancel)
    return calibrate_package(model_path, probs, mapping[labels_all[idx]], method=method, rule=rule, target=target,
                             kind="probs", out_path=out_path)


def calibrate_package_on_run(
    model_path: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    method: str | None = None,
    rule: str | None = None,
    target: float | None = None,
    device: str = "auto",
    batch_size: int = 256,
    out_path: str | os.PathLike[str] | None = None,
    progress: Any = None,
    cancel: Any = None,
) -> CalibrationResult:
    """(Re)fit a package exported from ``run_dir`` on that run's own validation split.

    For a package whose outputs differ from the run's validation pass (``export --tta8``): the
    split is rebuilt exactly as the trainer made it; method, rule and target default to the run's.

    Raises:
        ConfigError: not a patch-training run folder; DatasetError: the data changed since training.
    """
    from engine.train.trainer import run_validation_split

    cfg, ds, val_idx, _ = run_validation_split(run_dir)
    return calibrate_package_on_data(
        model_path, dataset=ds, indices=val_idx, method=method or cfg.calibration, rule=rule or cfg.threshold_rule,
        target=target if target is not None else cfg.threshold_target, device=device, batch_size=batch_size,
        out_path=out_path, progress=progress, cancel=cancel,
    )


def read_run_calibration(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A training run's fitted calibration and operating threshold (``RUN_DIR/calibration.json``,
    written at its best epoch), or ``None`` when it has none (not fitted, or an unreadable file)."""
    import json

    try:
        data = json.loads((Path(run_dir) / CALIBRATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "operating_threshold" in data else None
