"""MIL training on the generated cohort: both models learn the label on held-out slides, clinical
fusion helps, attention finds the tumour, export/predict run on onnxruntime, cancel + resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import Cancelled, ConfigError, ModelPackageError
from engine.jobs import CancelToken
from engine.mil.train import MILTrainConfig, train_mil

CLINICAL = ("age", "er", "tumour_size_mm")


def _cfg(mil_cohort, features: Path, **kw) -> MILTrainConfig:
    base = dict(
        manifest=str(mil_cohort.manifest),
        features_dir=str(features),
        epochs=20,
        lr=2e-3,
        test_fraction=0.3,
        device="cpu",
        n_boot=200,
        seed=0,
    )
    base.update(kw)
    return MILTrainConfig(**base)


@pytest.fixture(scope="module")
def mil_runs(mil_cohort, mil_features, tmp_path_factory) -> dict:
    """An image-only and an image + clinical run on the same patient-level split."""
    features, _ = mil_features
    root = tmp_path_factory.mktemp("mil-runs")
    image = train_mil(_cfg(mil_cohort, features), root / "image")
    fused = train_mil(_cfg(mil_cohort, features, clinical=CLINICAL), root / "fused")
    return {"image": image, "fused": fused, "root": root}


def test_mil_alone_and_with_clinical_learn_the_label_on_held_out_slides(mil_runs, mil_cohort) -> None:
    image, fused = mil_runs["image"].metrics, mil_runs["fused"].metrics
    assert image["evaluated_on"] == "test" and image["n"] >= 10
    assert image["auc"] >= 0.9, image
    assert fused["auc"] >= 0.9, fused
    # the label depends on age: fusing it must help (same split, same seed)
    split_image = json.loads((mil_runs["image"].run_dir / "splits.json").read_text())["folds"]
    split_fused = json.loads((mil_runs["fused"].run_dir / "splits.json").read_text())["folds"]
    assert split_image == split_fused

    def p_true(run) -> dict[str, float]:
        out = {}
        for r in (run.run_dir / "predictions.csv").read_text().splitlines()[1:]:
            f = r.split(",")
            out[f[0]] = float(f[5] if f[2] == "N+" else f[4])
        return out

    p_image, p_fused = p_true(mil_runs["image"]), p_true(mil_runs["fused"])
    loss_image = -np.mean(np.log(np.clip(list(p_image.values()), 1e-6, 1)))
    loss_fused = -np.mean(np.log(np.clip(list(p_fused.values()), 1e-6, 1)))
    assert fused["auc"] >= image["auc"] and loss_fused < loss_image
    # where the tumour amount alone is ambiguous (0.3-0.6), age decides: fusion is surer and right
    band = [s for s in p_image if 0.3 < mil_cohort.tumour[s] < 0.6]
    assert band
    assert np.mean([p_fused[s] for s in band]) > np.mean([p_image[s] for s in band])
    for name in (
        "metrics.json",
        "predictions.csv",
        "roc.png",
        "confusion.png",
        "config.json",
        "events.jsonl",
        "state.json",
    ):
        assert (mil_runs["image"].run_dir / name).is_file(), name
    state = json.loads((mil_runs["image"].run_dir / "state.json").read_text())
    assert state["status"] == "finished"
    kinds = [
        json.loads(line)["event"] for line in (mil_runs["image"].run_dir / "events.jsonl").read_text().splitlines()
    ]
    assert kinds[0] == "run_started" and kinds[-1] == "finished" and kinds.count("epoch_ended") == 20


def test_export_and_predict_with_onnxruntime_attention_on_tumour(mil_runs, mil_cohort, tmp_path: Path) -> None:
    import torch

    from engine.mil.bags import bag_path, read_bag
    from engine.mil.export import export_run, load_run_model
    from engine.mil.predict import load_aggregator, predict_slide, write_prediction

    model_path = export_run(mil_runs["fused"].run_dir, tmp_path / "mil.onnx")
    agg = load_aggregator(model_path)
    assert agg.session.metadata.task == "mil_aggregator"
    assert agg.extractor_sha256 and agg.clinical.columns == ("age", "tumour_size_mm", "er")
    meta = agg.session.metadata
    # numbers say what they were measured on; the manifest is named, not located
    assert meta.metrics["split"] and ("test" in meta.metrics or "selection" in meta.metrics)
    assert not meta.training_data["manifest"].startswith("/")
    # the feature settings of the training bags travel with the model
    assert meta.extra["feature_settings"] == {"min_tissue_fraction": 0.25, "max_tiles": None, "mask_px_per_tile": 16}
    assert agg.feature_config().max_tiles is None and agg.feature_config().tile_size == 32

    # ONNX (any bag size) matches torch
    model, _ = load_run_model(mil_runs["fused"].run_dir)
    sid = sorted(mil_cohort.slides)[1]
    feats = read_bag(bag_path(mil_cohort.root / "features", sid)).features
    num, codes, _ = agg.encode({"age": 44, "er": "positive", "tumour_size_mm": 20})
    for n in (1, 5, feats.shape[0]):
        p, att = agg.run(feats[:n], num, codes)
        with torch.no_grad():
            logits, att_t = model(torch.from_numpy(feats[:n]), torch.from_numpy(num), torch.from_numpy(codes))
        assert np.allclose(p, torch.softmax(logits, 1)[0].numpy(), atol=1e-5)
        assert np.allclose(att, att_t.numpy(), atol=1e-5) and att.shape == (n,)

    # attention is higher on tumour tiles than on the rest of the tissue (positive slides)
    ratios = []
    positives = [s for s in sorted(mil_cohort.slides) if mil_cohort.labels[s] == 1 and mil_cohort.tumour[s] > 0.3][:4]
    for s in positives:
        pred = predict_slide(
            mil_cohort.root / "slides" / f"{s}.svs", mil_cohort.extractor, agg, {"age": mil_cohort.age[s]}, device="cpu"
        )
        frac = mil_cohort.slides[s].tumour_fraction(pred.coords, pred.tile_size_level0)
        tumour, other = pred.attention[frac > 0.5], pred.attention[frac < 0.05]
        ratios.append(tumour.mean() / other.mean())
        grid = pred.attention_grid
        assert grid.dtype == np.float32 and np.isnan(grid).any()
        r, c = pred.grid_rc[np.argmax(pred.attention)]
        assert grid[r, c] == pytest.approx(1.0)
    assert min(ratios) > 2.0, ratios

    # unseen category and missing values are handled and reported
    pred = predict_slide(
        mil_cohort.root / "slides" / f"{positives[0]}.svs", mil_cohort.extractor, agg, {"er": "equivocal"}, device="cpu"
    )
    notes = " ".join(pred.clinical_notes)
    assert "not seen in training" in notes and "imputed" in notes
    out = write_prediction(pred, tmp_path / "pred")
    d = json.loads((out / "prediction.json").read_text())
    assert set(d["probabilities"]) == {"N0", "N+"} and d["tile_size_level0"] == 64
    assert np.load(out / "attention.npy").shape == tuple(d["grid_shape"])
    assert (out / "attention.png").is_file() and (out / "tiles.csv").is_file()

    # prediction tiles the slide with the model's recorded settings, not defaults
    agg.feature_settings = {"min_tissue_fraction": 0.5, "max_tiles": 6, "mask_px_per_tile": 16}
    capped = predict_slide(mil_cohort.root / "slides" / f"{positives[0]}.svs", mil_cohort.extractor, agg, device="cpu")
    assert capped.attention.size == 6
    agg.feature_settings = {"max_tiles": 0}
    with pytest.raises(ModelPackageError, match="feature settings"):
        agg.feature_config()

    # an aggregator refuses features of another extractor
    from engine.mil.extractor import build_stats_extractor

    other = build_stats_extractor(tmp_path / "other.onnx", input_size=48)
    with pytest.raises(ModelPackageError, match="trained on features"):
        predict_slide(mil_cohort.root / "slides" / f"{positives[0]}.svs", other, agg, device="cpu")


def test_training_cancels_and_resumes(mil_cohort, mil_features, tmp_path: Path) -> None:
    features, _ = mil_features
    cfg = _cfg(mil_cohort, features, epochs=3, folds=2)
    token = CancelToken()

    def progress(ev) -> None:
        if ev.step == 2:  # after the second epoch of the first fold
            token.cancel()

    run = tmp_path / "run"
    with pytest.raises(Cancelled):
        train_mil(cfg, run, progress=progress, cancel=token)
    assert json.loads((run / "state.json").read_text())["status"] == "cancelled"
    assert (run / "checkpoints" / "fold_1_last.pt").is_file()
    with pytest.raises(Exception, match="not empty"):
        train_mil(cfg, run)
    result = train_mil(cfg, run, resume=True)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "run_started" and e.get("resumed")]
    assert resumed and resumed[0]["start_epoch"] == 2 and resumed[0]["fold"] == 1
    assert [e["epoch"] for e in events if e["event"] == "epoch_ended" and e["fold"] == 1] == [1, 2, 3]
    assert result.metrics["evaluated_on"] == "out-of-fold test" and result.metrics["n"] == 40


def test_config_validation_and_roundtrip(mil_cohort, mil_features) -> None:
    features, _ = mil_features
    cfg = _cfg(mil_cohort, features, clinical=("age",))
    assert MILTrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"epochs": 0}, {"labels": "what"}, {"device": "tpu"}, {"val_fraction": 0.6, "test_fraction": 0.4}):
        with pytest.raises(ConfigError):
            _cfg(mil_cohort, features, **bad)
    with pytest.raises(ConfigError, match="unknown"):
        MILTrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_metrics_multiclass_auc_and_ci() -> None:
    from engine.mil.metrics import classification_metrics

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    probs = np.eye(3)[y] * 0.6 + rng.uniform(0, 0.4, (60, 3))
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(y, probs, ("N0", "N+(1-2)", "N+(>2)"), n_boot=200)
    assert m["auc"] > 0.95 and m["auc_ci95"][0] <= m["auc"] <= m["auc_ci95"][1]
    assert set(m["auc_per_class"]) == {"N0", "N+(1-2)", "N+(>2)"}
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0


@pytest.mark.slow
def test_five_fold_cross_validation_all_slides_held_out_once(mil_cohort, mil_features, tmp_path: Path) -> None:
    """The full flow on every slide: 5-fold patient-level CV, out-of-fold AUC of both models."""
    features, _ = mil_features
    image = train_mil(_cfg(mil_cohort, features, folds=5, epochs=30, n_boot=1000), tmp_path / "image").metrics
    fused = train_mil(_cfg(mil_cohort, features, folds=5, epochs=30, n_boot=1000, clinical=CLINICAL), tmp_path / "fused").metrics
    print(f"\nMIL 5-fold OOF AUC image {image['auc']:.3f} {image['auc_ci95']}, fused {fused['auc']:.3f} {fused['auc_ci95']}")
    print(f"accuracy image {image['accuracy']:.3f} fused {fused['accuracy']:.3f}")
    assert image["n"] == fused["n"] == 40
    assert image["auc"] >= 0.9 and fused["auc"] >= 0.9
    # clinical fusion helps: never worse, and better in AUC or accuracy (40 slides: ties in AUC happen)
    assert fused["auc"] >= image["auc"] and fused["accuracy"] >= image["accuracy"]
    assert fused["auc"] > image["auc"] or fused["accuracy"] > image["accuracy"]
