"""Calibration and the operating threshold: fitted on validation outputs, stored in the package,
applied by every consumer (engine.infer.preprocess.to_probabilities)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError, DatasetError, ModelPackageError
from engine.infer.preprocess import to_probabilities
from engine.modelpkg import ModelMetadata, read_metadata
from engine.train.calibration import (
    as_logits,
    calibrate_package,
    calibrated_probabilities,
    choose_threshold,
    fit_calibration,
    fit_temperature,
)


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-class logits whose true temperature is 3 (the model is 3x too confident)."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(np.int64)
    z = np.stack([np.zeros(n), margin * 3.0], axis=1)
    return z, y


def test_temperature_recovers_the_true_scale() -> None:
    z, y = _overconfident()
    assert fit_temperature(z, y) == pytest.approx(3.0, rel=0.12)
    # probabilities in, log-probabilities used: the same temperature
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert fit_temperature(as_logits(p), y) == pytest.approx(fit_temperature(z, y), rel=1e-4)


def test_specificity_rule_flags_at_most_five_percent_of_negatives() -> None:
    rng = np.random.default_rng(1)
    score = np.concatenate([rng.beta(2, 5, 900), rng.beta(5, 2, 100)])
    y = np.r_[np.zeros(900, bool), np.ones(100, bool)]
    c = choose_threshold(score, y, "specificity", 0.95)
    flagged = (score[~y] >= c.threshold).mean()
    assert flagged <= 0.05 and c.specificity == pytest.approx(1 - flagged)
    assert c.sensitivity == pytest.approx((score[y] >= c.threshold).mean())
    # the lowest such threshold: one candidate lower flags more than 5 %
    lower = np.sort(np.unique(score))
    below = lower[lower < c.threshold][-1]
    assert (score[~y] >= below).mean() > 0.05
    assert c.n_val == 1000 and c.n_pos == 100 and c.n_neg == 900


def test_other_rules() -> None:
    rng = np.random.default_rng(2)
    score = np.concatenate([rng.beta(2, 5, 500), rng.beta(5, 2, 500)])
    y = np.r_[np.zeros(500, bool), np.ones(500, bool)]
    sens = choose_threshold(score, y, "sensitivity", 0.9)
    assert (score[y] >= sens.threshold).mean() >= 0.9
    you = choose_threshold(score, y, "youden")
    assert 0.3 < you.threshold < 0.7 and you.sensitivity + you.specificity > 1.6
    fixed = choose_threshold(score, y, "fixed", 0.5)
    assert fixed.threshold == 0.5
    with pytest.raises(ConfigError):
        choose_threshold(score, y, "magic")
    with pytest.raises(ConfigError):
        choose_threshold(score, y, "specificity", 1.5)
    with pytest.raises(DatasetError):
        choose_threshold(score, np.zeros(1000, bool))


def test_isotonic_is_monotone_and_improves_calibration() -> None:
    z, y = _overconfident(3000, seed=3)
    res = fit_calibration(z, y, method="isotonic")
    cal = res.calibration
    assert cal["method"] == "isotonic" and np.all(np.diff(cal["isotonic"]["y"]) >= 0)
    assert cal["ece_after"] < cal["ece_before"] and cal["nll_after"] < cal["nll_before"]
    with pytest.raises(ConfigError):
        fit_calibration(np.zeros((10, 3)), np.arange(10) % 3, method="isotonic")


def _meta(extra: dict) -> ModelMetadata:
    return ModelMetadata(name="m", task="patch_classification", class_names=("normal", "tumor"), positive_class=1,
                         input_size=32, extra=extra)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_to_probabilities_applies_the_stored_calibration(method: str) -> None:
    z, y = _overconfident(2000, seed=4)
    z = z.astype(np.float32).astype(np.float64)  # what an ONNX model outputs
    res = fit_calibration(z, y, method=method)
    meta = _meta(res.extra())
    got = to_probabilities(z.astype(np.float32), meta)
    np.testing.assert_allclose(got, calibrated_probabilities(z, res.calibration, 1), atol=2e-5)
    raw = to_probabilities(z.astype(np.float32), meta, calibrated=False)
    np.testing.assert_allclose(raw, to_probabilities(z.astype(np.float32), _meta({})), atol=1e-7)
    # the threshold refers to the calibrated probabilities
    flagged = (got[y == 0, 1] >= meta.extra["operating_threshold"]).mean()
    assert flagged <= 0.05 + 1e-9
    with pytest.raises(ModelPackageError):
        to_probabilities(z, _meta({"calibration": {"method": "temperature", "temperature": -1}}))


def test_calibrate_package_embeds_threshold_and_updates_the_card(demo_onnx: Path, tmp_path: Path) -> None:
    from engine.infer.lesions import operating_threshold

    pkg = tmp_path / "m.onnx"
    shutil.copy(demo_onnx, pkg)
    pkg.with_suffix(".md").write_text("# m\n\n## Training\n\n- x\n\nClosing remark.\n", encoding="utf-8")
    z, y = _overconfident(1000, seed=5)
    res = calibrate_package(pkg, z, y, rule="specificity", target=0.95)
    meta = read_metadata(pkg)
    assert meta.extra["operating_threshold"] == pytest.approx(res.operating_threshold, abs=1e-6)
    assert operating_threshold(meta) == pytest.approx(res.operating_threshold, abs=1e-6)
    assert meta.extra["calibration"]["method"] == "temperature" and meta.extra["calibration"]["temperature"] > 1
    assert meta.extra["threshold_rule"]["rule"] == "specificity" and meta.extra["threshold_rule"]["n_val"] == 1000
    card = pkg.with_suffix(".md").read_text(encoding="utf-8")
    assert "## Operating threshold" in card and f"{res.operating_threshold:.4f}" in card and "specificity" in card
    # refitting replaces the section instead of adding a second one
    calibrate_package(pkg, z, y, rule="youden")
    card = pkg.with_suffix(".md").read_text(encoding="utf-8")
    assert card.count("## Operating threshold") == 1 and "Youden" in card and "Closing remark." in card
    assert read_metadata(pkg).extra["threshold_rule"]["rule"] == "youden"
    with pytest.raises(DatasetError):
        calibrate_package(pkg, z[:, :1].repeat(3, 1), y)  # 3 outputs, the package has 2 classes
    meta2 = read_metadata(pkg)
    assert replace(meta2, extra={}).name == meta.name


def test_a_malformed_entry_fails_when_the_preprocessor_is_built() -> None:
    from engine.infer.preprocess import Preprocessor

    with pytest.raises(ModelPackageError):
        Preprocessor(_meta({"calibration": {"method": "platt"}}))
    with pytest.raises(ModelPackageError):
        Preprocessor(_meta({"stain_norm": {"method": "reinhard", "mean": [1, 2]}}))
    assert Preprocessor(_meta({"calibration": {"method": "none"}, "stain_norm": {"method": "none"}})).stain is None
