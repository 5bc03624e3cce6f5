"""Genomics training runs: gbm / dense / dense_embed run folders, export, onnxruntime-only
evaluate and predict, explanations, STOP + resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.errors import Cancelled
from engine.genomics.explain import explain_sample, explain_with_model
from engine.genomics.train import GenomicsTrainConfig, train_genomics
from engine.runs import request_stop
from engine.train.runfolder import read_events, read_state
from tests.fixtures.genomics import write_datahub, write_web

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_datahub(tmp_path_factory.mktemp("gx") / "study", n_patients=150, full_maf=True)


@pytest.fixture(scope="module")
def gbm_run(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("gx") / "run"
    rc = main(["train", "genomics", "--study", str(study), "--out", str(run), "--model", "gbm", "--folds", "2",
               "--epochs", "3", "--threads", "1", "--bootstrap", "100"])
    assert rc == 0
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_gbm_run_folder_contract(gbm_run: Path) -> None:
    cfg = json.loads((gbm_run / "config.json").read_text())
    assert cfg["kind"] == "genomics" and cfg["config"]["model"] == "gbm"
    kinds = [e["event"] for e in read_events(gbm_run)[0]]
    for k in ("run_started", "epoch_started", "epoch_ended", "checkpoint", "best", "finished"):
        assert k in kinds, k
    assert read_state(gbm_run)["status"] == "finished"
    m = json.loads((gbm_run / "metrics.json").read_text())
    assert m["evaluated_on"] == "out-of-fold test" and 0 <= m["auc"] <= 1 and len(m["auc_ci95"]) == 2
    assert m["n"] == 180 and m["ci_resampling"] == "patients" and m["calibration"] and m["per_type"]
    preds = _rows(gbm_run / "predictions.csv")
    assert list(preds[0])[:7] == ["sample", "patient", "truth", "predicted", "score", "group", "correct"]
    assert len(preds) == 180 and {p["correct"] for p in preds} <= {"0", "1"}
    # patient-grouped: a patient's samples share a fold
    fold_of: dict[str, set[str]] = {}
    for p in preds:
        fold_of.setdefault(p["patient"], set()).add(p["fold"])
    assert all(len(v) == 1 for v in fold_of.values())
    for f in ("roc.png", "confusion.png", "calibration.png", "per_type_auc.csv", "model.onnx", "explanations.csv"):
        assert (gbm_run / f).is_file(), f
    ex = explain_sample(gbm_run, preds[0]["sample"])
    assert ex and ex[0]["method"] == "occlusion" and ex[0]["rank"] == 1


def test_gbm_package_matches_sklearn_and_predicts_without_torch(gbm_run: Path, study: Path, tmp_path: Path) -> None:
    import pickle

    from engine.genomics.data import prepare
    from engine.genomics.encode import Preprocessor
    from engine.genomics.train import load_genomics_config

    ck = pickle.loads((gbm_run / "checkpoints" / "fold_0_best.pkl").read_bytes())
    pre = Preprocessor.from_dict(ck["preprocessor"])
    data = prepare(load_genomics_config(gbm_run))
    num, codes = pre.transform(data.table.frame)
    want = ck["model"].predict_proba(pre.tree_matrix(num, codes))[:, 1]
    out = tmp_path / "pred.csv"
    code = (
        "import sys; from engine.cli import main; "
        f"rc = main(['genomics', 'predict', {str(gbm_run / 'model.onnx')!r}, '--study', {str(study)!r}, '--out', {str(out)!r}]); "
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = {p["sample"]: float(p["score"]) for p in _rows(out)}
    assert np.allclose([got[s] for s in data.samples], want, atol=1e-5)
    ev = tmp_path / "ev"
    assert main(["genomics", "evaluate", str(gbm_run / "model.onnx"), "--study", str(study), "--out", str(ev),
                 "--bootstrap", "50"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["n"] == 180 and np.isfinite(m["auc"])
    assert (ev / "per_type_auc.csv").is_file() and (ev / "calibration.png").is_file()
    rows = explain_with_model(gbm_run / "model.onnx", study, data.samples[0], top=5)
    assert 0 < len(rows) <= 5 and all(r["method"] == "occlusion" for r in rows)


def test_web_layout_scores_like_datahub(gbm_run: Path, tmp_path: Path) -> None:
    web = write_web(tmp_path / "web", n_patients=150, full_maf=True)
    hub = write_datahub(tmp_path / "hub", n_patients=150, full_maf=True)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["genomics", "predict", str(gbm_run / "model.onnx"), "--study", str(web), "--out", str(a)]) == 0
    assert main(["genomics", "predict", str(gbm_run / "model.onnx"), "--study", str(hub), "--out", str(b)]) == 0
    assert _rows(a) == _rows(b)


@pytest.mark.parametrize("model", ["dense", "dense_embed"])
def test_dense_models_export_matches_torch(study: Path, tmp_path: Path, model: str) -> None:
    import torch

    from engine.genomics.data import prepare
    from engine.genomics.encode import Preprocessor
    from engine.genomics.models import build_net
    from engine.genomics.predict import load_classifier
    from engine.train.runfolder import load_checkpoint

    cfg = GenomicsTrainConfig(study=str(study), model=model, epochs=3, folds=0, cpu_threads=1, n_boot=50,
                              hidden=(32, 16))
    res = train_genomics(cfg, tmp_path / "run")
    assert 0 <= res.metrics["auc"] <= 1 and res.metrics["evaluated_on"] == "test"
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "fold_0_best.pt")
    pre = Preprocessor.from_dict(ck["preprocessor"])
    mc = ck["model_config"]
    net = build_net(pre, model, mc["embed_column"], tuple(mc["hidden"]), mc["dropout"], mc["embed_dim"])
    net.load_state_dict(ck["model"])
    net.eval()
    data = prepare(cfg)
    num, codes = pre.transform(data.table.frame)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(num), torch.from_numpy(codes)), 1).numpy()
    got = load_classifier(tmp_path / "run" / "model.onnx").run(num, codes)
    assert np.allclose(got, want, atol=1e-5)
    ex = _rows(tmp_path / "run" / "explanations.csv")
    assert ex and ex[0]["method"] == "integrated_gradients"


def test_stop_then_resume(study: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = GenomicsTrainConfig(study=str(study), model="gbm", epochs=4, folds=2, cpu_threads=1, n_boot=20,
                              gbm_iter_per_epoch=5)
    request_stop_after = {"n": 0}

    def progress(ev) -> None:
        request_stop_after["n"] += 1
        if request_stop_after["n"] == 2:
            request_stop(run)

    with pytest.raises(Cancelled):
        train_genomics(cfg, run, progress=progress)
    assert read_state(run)["status"] == "cancelled"
    (run / "STOP").unlink(missing_ok=True)
    assert main(["train", "genomics", "--out", str(run), "--resume"]) == 0
    assert read_state(run)["status"] == "finished" and (run / "model.onnx").is_file()
    kinds = [e["event"] for e in read_events(run)[0]]
    assert "cancelled" in kinds and kinds[-1] == "finished"


def test_export_command_dispatches_on_kind(gbm_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", str(gbm_run), "--out", str(out)]) == 0
    from engine.modelpkg import read_metadata

    meta = read_metadata(out)
    assert meta.task == "genomics_classifier" and meta.class_names == ("Primary", "Metastasis")
    assert meta.extra["preprocessing"]["numeric"]


def test_gbm_bag_members_and_one_tree_ensemble(gbm_run: Path) -> None:
    """The default gbm is a bag of members on different patient shares; the package's single
    TreeEnsemble scores the members' mean raw score."""
    import pickle

    from engine.genomics.models import GbmBag

    ck = pickle.loads((gbm_run / "checkpoints" / "fold_0_best.pkl").read_bytes())
    bag = ck["model"]
    assert isinstance(bag, GbmBag) and len(bag.members) == GenomicsTrainConfig(study="x").gbm_members > 1
    groups = np.repeat(np.arange(40), 2)
    shares = [set(groups[bag.member_rows(k, groups, len(groups))]) for k in range(len(bag.members))]
    assert all(len(s) == round(bag.keep * 40) for s in shares) and len({frozenset(s) for s in shares}) == len(shares)
    x = np.random.default_rng(0).normal(size=(5, bag.members[0].n_features_in_))
    if bag.members[0].is_categorical_ is not None:
        x[:, bag.members[0].is_categorical_] = np.nan  # category codes: missing
    raw = np.mean([m.decision_function(x) for m in bag.members], axis=0)
    assert np.allclose(bag.predict_proba(x)[:, 1], 1 / (1 + np.exp(-raw)))
    assert np.allclose(list(bag.staged_decision_function(x))[-1], raw)
