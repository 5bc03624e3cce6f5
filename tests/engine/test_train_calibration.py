"""Training-side calibration, operating threshold, EMA, stain normalisation and TTA export:
fitted during training, carried into the package, applied wherever the package runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.export import export_onnx
from engine.modelpkg import read_metadata
from engine.train import TrainConfig, train
from tests.fixtures.datasets import make_folder_dataset, toy_patch


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calrun")
    data = make_folder_dataset(root / "data", per_class=32, size=32)
    cfg = TrainConfig(data=str(data), mpp=0.5, epochs=2, batch_size=16, lr=3e-3, seed=2, ema=0.9, stain_norm="reinhard")
    train(cfg, root / "run")
    return root / "run", data


@pytest.fixture(scope="module")
def package(run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calpkg") / "m.onnx"
    export_onnx(run[0], out, exporter="torchscript")
    return out


def test_training_fits_calibration_threshold_stain_and_ema(run: tuple[Path, Path]) -> None:
    from engine.train.runfolder import load_checkpoint, read_events

    run_dir = run[0]
    cal = json.loads((run_dir / "calibration.json").read_text())
    assert 0.0 <= cal["operating_threshold"] <= 1.0
    assert cal["calibration"]["method"] == "temperature" and cal["calibration"]["temperature"] > 0
    rule = cal["threshold_rule"]
    assert rule["rule"] == "specificity" and rule["target"] == 0.95 and rule["specificity"] >= 0.95
    assert rule["n_val"] == rule["n_pos"] + rule["n_neg"] > 0
    events = [e["event"] for e in read_events(run_dir)[0]]
    assert "calibrated" in events and "stain_fitted" in events
    best = load_checkpoint(run_dir / "best.pt")
    assert best["calibration"]["operating_threshold"] == cal["operating_threshold"]
    assert best["stain_norm"]["method"] == "reinhard" and len(best["stain_norm"]["mean"]) == 3
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    assert ck["ema"]["updates"] > 0 and ck["stain_norm"] == best["stain_norm"]


def test_package_carries_threshold_calibration_and_stain(run: tuple[Path, Path], package: Path) -> None:
    from engine.infer.lesions import operating_threshold
    from engine.modelcard import write_model_card

    meta = read_metadata(package)
    cal = json.loads((run[0] / "calibration.json").read_text())
    assert operating_threshold(meta) == cal["operating_threshold"]
    assert meta.extra["calibration"] == cal["calibration"] and meta.extra["threshold_rule"] == cal["threshold_rule"]
    assert meta.extra["stain_norm"]["method"] == "reinhard"
    card = write_model_card(run[0], package).read_text()
    assert "## Operating threshold" in card and f"{cal['operating_threshold']:.4f}" in card
    assert "specificity >= 0.95" in card


def test_evaluate_and_predict_use_the_package_threshold(run: tuple[Path, Path], package: Path, tmp_path: Path) -> None:
    from engine.train.evaluate import evaluate, predict

    thr = read_metadata(package).extra["operating_threshold"]
    res = evaluate(package, run[1], tmp_path / "ev", device="cpu")
    assert res.metrics["threshold"] == thr and res.metrics["threshold_source"] == "model operating threshold"
    assert res.metrics["calibration"] == "temperature"
    assert evaluate(package, run[1], tmp_path / "ev2", device="cpu", threshold=0.3).metrics["threshold"] == 0.3
    out = predict(package, run[1], tmp_path / "p.csv", device="cpu", threshold=1.0)
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert out.n == len(rows) and all(",normal," in r for r in rows if float(r.split(",")[2]) < 1.0)


def test_stain_normalisation_is_applied_by_the_package_preprocessing(package: Path) -> None:
    from engine.infer.preprocess import Preprocessor
    from engine.infer.stain import normalise

    meta = read_metadata(package)
    rng = np.random.default_rng(3)
    tiles = np.stack([toy_patch(lv, rng, 32) for lv in (0.0, 0.5, 1.0)])
    tiles[..., 0] = np.clip(tiles[..., 0].astype(int) + 40, 0, 255)  # a redder stain
    plain = Preprocessor(replace(meta, extra={}))
    np.testing.assert_array_equal(Preprocessor(meta)(tiles), plain(normalise(tiles, meta.extra["stain_norm"])))
    assert not np.allclose(Preprocessor(meta)(tiles), plain(tiles))


def test_reinhard_and_macenko_map_a_patch_to_the_target() -> None:
    from engine.infer.stain import fit_target, lab_to_rgb, macenko_stains, normalise, reinhard_stats, rgb_to_lab

    rng = np.random.default_rng(4)
    ref = np.stack([toy_patch(lv, rng, 48) for lv in (0.3, 0.6, 0.9)])
    other = ref.astype(np.int32)
    other[..., 1] -= 35  # a different stain: less green, more magenta
    other = np.clip(other, 0, 255).astype(np.uint8)
    target = fit_target(ref, "reinhard")
    mean, std, ok = reinhard_stats(normalise(other, target))
    assert ok.all()
    np.testing.assert_allclose(mean, np.tile(target["mean"], (3, 1)), atol=1.5)
    np.testing.assert_allclose(std, np.tile(target["std"], (3, 1)), rtol=0.15, atol=0.5)
    assert np.abs(lab_to_rgb(rgb_to_lab(ref)).astype(int) - ref).max() <= 1
    m_target = fit_target(ref, "macenko")
    he, cmax, ok = macenko_stains(normalise(other, m_target))
    assert ok.all()
    np.testing.assert_allclose(he, np.tile(m_target["stain_matrix"], (3, 1, 1)), atol=0.08)
    # glass (no tissue) is left as it is
    glass = np.full((1, 32, 32, 3), 242, np.uint8)
    np.testing.assert_array_equal(normalise(glass, target), glass)
    np.testing.assert_array_equal(normalise(glass, m_target), glass)
    with pytest.raises(ConfigError):
        fit_target(glass, "reinhard")


def test_tta8_export_equals_the_mean_of_8_transformed_predictions(run: tuple[Path, Path], package: Path, tmp_path: Path) -> None:
    from engine.infer.preprocess import Preprocessor, to_probabilities
    from engine.infer.session import load_model
    from engine.train.evaluate import dihedral

    out = tmp_path / "tta.onnx"
    rep = export_onnx(run[0], out, exporter="torchscript", tta8=True)
    assert rep.max_abs_diff < 1e-4
    tta, plain = load_model(out, device="cpu"), load_model(package, device="cpu")
    assert tta.metadata.extra["tta"]["views"] == 8
    rng = np.random.default_rng(6)
    tiles = np.stack([toy_patch(lv, rng, 32) for lv in (0.1, 0.5, 0.9, 0.7)])
    pre = Preprocessor(plain.metadata)
    raw = replace(plain.metadata, extra={})  # uncalibrated: compare the graphs themselves
    mean = np.mean([to_probabilities(plain.run(pre(dihedral(tiles, k))), raw) for k in range(8)], axis=0)
    got = to_probabilities(tta.run(pre(tiles)), raw)
    np.testing.assert_allclose(got, mean, atol=1e-5)
    with pytest.raises(ConfigError):
        export_onnx(run[0], tmp_path / "f.onnx", features=True, tta8=True)
    # refit on the run's own validation split, through the TTA graph
    from engine.train.calibration import calibrate_package_on_run

    res = calibrate_package_on_run(out, run[0], device="cpu")
    meta = read_metadata(out)
    assert meta.extra["tta"]["calibration_fitted_with_tta"] is True
    assert meta.extra["operating_threshold"] == pytest.approx(res.operating_threshold, abs=1e-6)
    assert res.threshold.n_val == json.loads((run[0] / "config.json").read_text())["data"]["n_val"]


def test_run_evaluation_applies_the_run_stain_normalisation(run: tuple[Path, Path]) -> None:
    from engine.train.run_evaluation import evaluate_run

    res = evaluate_run(run[0])
    assert res["metrics"]["auc"] > 0.9


def test_training_run_validation_patches_open_in_patch_review(run: tuple[Path, Path]) -> None:
    """After the run's evaluation its validation patches are reviewable like `metascope evaluate`
    output: the run folder opens in the review, at the run's operating threshold."""
    from engine.infer.review import PatchImages, load_review
    from engine.train.run_evaluation import evaluate_run

    res = evaluate_run(run[0])
    review = load_review(run[0])
    cal = json.loads((run[0] / "calibration.json").read_text())
    assert review.folder == run[0] / "validation"
    assert len(review.rows) == res["n_val"]
    assert review.threshold == pytest.approx(cal["operating_threshold"])
    assert review.metrics["source"] == "validation split of a training run"
    assert {r.truth for r in review.rows} == set(res["class_names"])
    assert all(Path(r.source).is_file() for r in review.rows)
    images = PatchImages(review)
    try:
        assert images.read(review.rows[0]).ndim == 3
    finally:
        images.close()


def test_ema_averages_weights_with_warmup() -> None:
    import torch

    from engine.train.trainer import _Ema

    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.zero_()
    ema = _Ema(net, 0.5, torch)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # warmup decay min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module.weight, torch.full_like(net.weight, 1 - d))
    state = ema.state_dict()
    ema2 = _Ema(net, 0.5, torch)
    ema2.load_state_dict(state)
    assert ema2.updates == 1 and torch.equal(ema2.module.weight, ema.module.weight)


def test_config_and_cli_options(run: tuple[Path, Path], package: Path, tmp_path: Path) -> None:
    import shutil

    from engine.cli import main

    with pytest.raises(ConfigError):
        TrainConfig(data="x", ema=1.5)
    with pytest.raises(ConfigError):
        TrainConfig(data="x", stain_norm="magic")
    with pytest.raises(ConfigError):
        TrainConfig(data="x", threshold_rule="specificity", threshold_target=1.0)
    cfg = TrainConfig(data="x", threshold_rule="youden", calibration="isotonic", ema=0.999, stain_norm="macenko")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    from engine.cli import build_parser
    from engine.cli.patches import _train_config

    args = build_parser().parse_args(["train", "patches", "--data", "x", "--out", str(tmp_path / "r"), "--ema", "0.99",
                                      "--stain-norm", "reinhard", "--threshold-rule", "sensitivity",
                                      "--threshold-target", "0.9", "--calibration", "none"])
    got = _train_config(args)
    assert (got.ema, got.stain_norm, got.threshold_rule, got.threshold_target, got.calibration) == (
        0.99, "reinhard", "sensitivity", 0.9, "none")
    pkg = tmp_path / "c.onnx"
    shutil.copy(package, pkg)
    assert main(["calibrate", str(pkg), "--data", str(run[1]), "--threshold-rule", "youden", "--device", "cpu"]) == 0
    meta = read_metadata(pkg)
    assert meta.extra["threshold_rule"]["rule"] == "youden" and meta.extra["stain_norm"]["method"] == "reinhard"
    assert main(["calibrate", str(pkg), "--data", str(run[1]), "--threshold-target", "2"]) == 2
