"""CancerSiamese: tiny training run, run folder contract, ONNX package, onnxruntime-only oneshot
and classify, markers, resume / STOP, bad input. A real-data run on the shared TCGA set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.errors import ConfigError
from engine.expression.oneshot import evaluate_oneshot, make_trials, pearson_score, wilson_ci
from engine.expression.siamese_train import SiameseTrainConfig, train_siamese
from engine.modelpkg import read_metadata
from engine.train.runfolder import read_events

ROOT = Path(__file__).resolve().parents[2]
TCGA = ROOT.parent / "shared" / "data" / "expression" / "tcga_mrna_11types"
TINY = {"genes": 24, "pretrain_epochs": 1, "epochs": 1, "steps_per_epoch": 3, "batch_size": 16, "embed_dim": 16,
        "head_dim": 8, "channels": (4, 8), "val_trials": 40, "eval_trials": 60, "cpu_threads": 1}


def _write_data(tmp: Path, n_types: int = 7, per_type: int = 8, n_genes: int = 40) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    rows, labels = [], []
    for t in range(n_types):
        sig = rng.normal(0, 1.5, n_genes)
        for _ in range(per_type + t):  # imbalanced types
            rows.append(6 + sig + rng.normal(0, 0.6, n_genes))
            labels.append(f"T{t}")
    samples = [f"S{i:03d}" for i in range(len(rows))]
    genes = [f"GENE{j}" for j in range(n_genes)]
    pd.DataFrame(np.array(rows), index=pd.Index(samples, name="sample"), columns=genes).to_csv(
        tmp / "m.tsv.gz", sep="\t")
    pd.DataFrame({"sample": samples, "type": labels}).to_csv(tmp / "s.tsv", sep="\t", index=False)
    return tmp / "m.tsv.gz", tmp / "s.tsv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("siamese")
    m, s = _write_data(tmp)
    cfg = SiameseTrainConfig(matrix=str(m), samples=str(s), label_column="type", test_types=("T4", "T5", "T6"),
                             eval_ways=(2, 3, 6), **TINY)
    res = train_siamese(cfg, tmp / "run")
    return tmp, res


def test_trials_and_ci():
    labels = np.array(["a"] * 3 + ["b"] * 2 + ["c"] * 4)
    tr = make_trials(labels, ["a", "b", "c"], 3, 50, seed=3)
    assert (labels[tr.query] == tr.types[np.arange(50), tr.truth]).all()
    assert (tr.query != tr.support[np.arange(50), tr.truth]).all()  # support is another sample
    again = make_trials(labels, ["a", "b", "c"], 3, 50, seed=3)
    assert (again.support == tr.support).all()
    lo, hi = wilson_ci(90, 100)
    assert lo < 0.9 < hi and hi - lo < 0.15
    x = np.repeat(np.eye(3), [3, 2, 4], axis=0) + 0.01 * np.arange(9)[:, None]
    metrics, preds = evaluate_oneshot(labels, [f"s{i}" for i in range(9)], {"nn1": pearson_score(x)},
                                      ["a", "b", "c"], [2, 3, 5], 40)
    assert metrics["ways"]["3"]["nn1"] == 1.0 and "5" in metrics["skipped_ways"]


def test_run_folder_contract(trained):
    tmp, res = trained
    run = res.run_dir
    for name in ("config.json", "events.jsonl", "state.json", "model.onnx", "metrics.json", "predictions.csv",
                 "accuracy_vs_n.png", "markers.csv", "markers_curve.csv", "saliency.png", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["kind"] == "siamese"
    events, _ = read_events(run)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "finished" and "best" in kinds
    ended = [e for e in events if e["event"] == "epoch_ended"]
    assert [e["phase"] for e in ended] == ["pretrain", "siamese"]
    assert ended[-1]["val_ways"] >= 2 and 0 <= ended[-1]["val_accuracy"] <= 1 and "loss" in ended[-1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["ways"]) == {"2", "3"} and "6" in metrics["skipped_ways"]
    w = metrics["ways"]["3"]
    assert {"siamese", "nn1", "nn1_euclidean", "ci", "trials"} <= set(w) and w["trials"] == 60
    preds = pd.read_csv(run / "predictions.csv")
    assert {"sample", "truth", "predicted", "score", "group", "correct", "ways", "trial"} <= set(preds.columns)
    assert set(preds["truth"]) <= {"T4", "T5", "T6"} and len(preds) == 120
    meta = read_metadata(run / "model.onnx")
    assert meta.task == "expression_embedding" and len(meta.extra["preprocessing"]["genes"]) == 24
    _check_onnx_matches_torch(run, tmp)
    markers = pd.read_csv(run / "markers.csv")
    assert list(markers.columns[:5]) == ["rank", "gene", "saliency", "saliency_norm", "top_type"]


def _check_onnx_matches_torch(run: Path, tmp: Path) -> None:
    import torch

    from engine.expression.markers import _load_net
    from engine.expression.matrix import read_matrix
    from engine.expression.siamese_export import load_package

    pkg = load_package(run)
    m = read_matrix(tmp / "m.tsv.gz", tmp / "s.tsv")
    raw, rep = pkg.prepare(m.subset(samples=list(range(6))))
    assert rep["missing"] == 0
    emb = pkg.embed(raw)
    sim = pkg.similarity(emb[:3], emb[3:])
    net = _load_net(run)
    with torch.no_grad():
        e = net.encoder(torch.from_numpy(pkg.prep.transform(raw)))
        ref = torch.sigmoid(net.head(e[:3], e[3:])).numpy()
    np.testing.assert_allclose(emb, e.numpy(), atol=1e-4)
    np.testing.assert_allclose(sim, ref, atol=1e-4)


def test_oneshot_and_classify_with_onnxruntime_only(trained, tmp_path):
    tmp, res = trained
    (tmp_path / "support.tsv").write_text("sample\ttype\nS000\tT0\nS010\tT1\nS020\tT2\n")
    code = f"""
import sys, json
from engine.cli import main
rc1 = main(["expression", "oneshot", r"{res.run_dir / 'model.onnx'}", "--matrix", r"{tmp / 'm.tsv.gz'}",
            "--samples", r"{tmp / 's.tsv'}", "--label-column", "type", "--ways", "2,3,4", "--trials", "50",
            "--out", r"{tmp_path / 'os'}"])
rc2 = main(["expression", "classify", r"{res.run_dir / 'model.onnx'}", "--matrix", r"{tmp / 'm.tsv.gz'}",
            "--query", "S001", "--support", r"{tmp_path / 'support.tsv'}", "--out", r"{tmp_path / 'cl'}"])
print(json.dumps({{"rc": [rc1, rc2], "torch": "torch" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res_line = json.loads(out.stdout.strip().splitlines()[-1])
    assert res_line == {"rc": [0, 0], "torch": False}
    metrics = json.loads((tmp_path / "os" / "metrics.json").read_text())
    assert metrics["test_types"] == ["T4", "T5", "T6"] and "4" in metrics["skipped_ways"]
    sim = pd.read_csv(tmp_path / "cl" / "similarity.csv")
    assert list(sim.columns) == ["support_sample", "type", "similarity", "pearson", "rank"] and len(sim) == 3
    cl = json.loads((tmp_path / "cl" / "classification.json").read_text())
    assert cl["query"] == "S001" and cl["predicted"] in {"T0", "T1", "T2"}
    assert (tmp_path / "cl" / "similarity.png").is_file()


def test_cli_bad_input_and_export(trained, tmp_path, capsys):
    tmp, res = trained
    base = ["expression", "classify", str(res.run_dir / "model.onnx"), "--matrix", str(tmp / "m.tsv.gz"),
            "--out", str(tmp_path / "x")]
    (tmp_path / "sup.tsv").write_text("S000\tT0\nNOPE\tT1\n")
    assert main(base + ["--query", "S001", "--support", str(tmp_path / "sup.tsv")]) == 2
    assert "not in the support matrix" in capsys.readouterr().err
    assert main(base + ["--query", "MISSING", "--support", str(tmp_path / "sup.tsv")]) == 2
    assert main(["train", "siamese", "--matrix", str(tmp / "m.tsv.gz"), "--samples", str(tmp / "s.tsv"),
                 "--label-column", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "available: type" in capsys.readouterr().err
    assert main(["train", "siamese", "--matrix", str(tmp / "m.tsv.gz"), "--samples", str(tmp / "s.tsv"),
                 "--label-column", "type", "--test-types", "T9", "--out", str(tmp_path / "r2")]) == 2
    assert main(["export", str(res.run_dir), "--out", str(tmp_path / "e.onnx")]) == 0
    assert read_metadata(tmp_path / "e.onnx").task == "expression_embedding"
    with pytest.raises(ConfigError):
        SiameseTrainConfig(matrix="m", label_column="t", epochs=-1)


def test_stop_and_resume(tmp_path):
    m, s = _write_data(tmp_path, n_types=4, per_type=6, n_genes=30)
    cfg = SiameseTrainConfig(matrix=str(m), samples=str(s), label_column="type", test_fraction=0.0,
                             markers=False, **{**TINY, "pretrain_epochs": 1, "epochs": 2})
    run = tmp_path / "run"
    from engine.errors import Cancelled
    from engine.jobs import CancelToken

    token = CancelToken()

    def progress(ev):
        if ev.step == 2:  # after the first Siamese epoch
            token.cancel()

    with pytest.raises(Cancelled):
        train_siamese(cfg, run, progress=progress, cancel=token)
    assert json.loads((run / "state.json").read_text())["status"] == "cancelled"
    res = train_siamese(None, run, resume=True)
    events, _ = read_events(run)
    ended = [e["epoch"] for e in events if e["event"] == "epoch_ended"]
    assert ended == [1, 2, 3] and events[-1]["event"] == "finished"
    assert res.metrics["ways"] == {} and (run / "model.onnx").is_file()


@pytest.mark.realdata
@pytest.mark.skipif(not TCGA.is_dir(), reason="shared TCGA expression set absent")
def test_realdata_tcga_info_and_tiny_training(tmp_path, capsys):
    mat, smp = TCGA / "expression.tsv.gz", TCGA / "samples.tsv"
    assert main(["expression", "info", str(mat), "--samples", str(smp), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_samples"] == 1204 and rep["label_columns"]["cancer_type"]["distinct"] == 11
    cfg = SiameseTrainConfig(matrix=str(mat), samples=str(smp), label_column="cancer_type",
                             test_types=("COAD", "KIRP", "LUSC", "STAD", "THCA"), eval_ways=(3, 5), markers=False,
                             **{**TINY, "genes": 200})
    res = train_siamese(cfg, tmp_path / "run")
    w = res.metrics["ways"]["5"]
    assert w["trials"] == 60 and w["nn1"] > 0.5  # 1-NN on 200 genes is far above chance (0.2)
