"""Conditional WGAN-GP: covariates, scaling, a tiny training run, resume, export and generation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.errors import Cancelled, ConfigError, DatasetError
from engine.expression.wgan import CovariateSpec, GeneScaler, GroupScaler
from engine.jobs import CancelToken
from engine.train.runfolder import RunFolderError, read_events

ROOT = Path(__file__).resolve().parents[2]
@pytest.fixture(autouse=True)
def _small_c2st(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.expression import realism

    monkeypatch.setattr(realism, "C2ST_TREES", 10)
    monkeypatch.setattr(realism, "C2ST_REPEATS", 1)
    monkeypatch.setattr("engine.expression.wgan_loop.REALISM_DRAWS", 2)


TINY = {"epochs": 2, "steps_per_epoch": 3, "batch_size": 16, "hidden": (16,), "noise_dim": 4, "gamma_every": 1}


def write_tiny(folder: Path, n: int = 40, genes: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """A samples x genes matrix with correlated genes and a sample table with covariates."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["female", "male"], size=n)
    age = rng.normal(60, 10, size=n).round()
    latent = rng.normal(size=(n, 2))
    values = 6 + latent @ rng.normal(size=(2, genes)) + 0.3 * rng.normal(size=(n, genes))
    values[:, 0] += (sex == "male") * 2.0
    samples = [f"S{i:03d}" for i in range(n)]
    names = [f"G{j}" for j in range(genes)]
    pd.DataFrame(values, index=pd.Index(samples, name="sample"), columns=names).to_csv(folder / "m.tsv", sep="\t")
    table = pd.DataFrame(
        {"sample": samples, "patient": [f"P{i // 2}" for i in range(n)], "sex": sex, "age": age,
         "stage": rng.choice(["i", "ii", "iii", None], size=n), "kind": ["tumour"] * (n - 4) + ["normal"] * 4}
    )
    table.loc[3, "age"] = np.nan
    table.to_csv(folder / "s.tsv", sep="\t", index=False)
    (folder / "genes.txt").write_text("\n".join(names[:6]) + "\n")
    return folder / "m.tsv", folder / "s.tsv"


def test_covariate_spec_encodes_missing_unseen_and_numeric() -> None:
    table = pd.DataFrame({"sex": ["f", "m", None, "f"], "age": [50, 60, None, 70], "grade": [1, 2, 3, 2]})
    spec = CovariateSpec.fit(table, ["sex", "age", "grade"])
    kinds = {c["name"]: c["kind"] for c in spec.columns}
    assert kinds == {"sex": "categorical", "age": "categorical", "grade": "categorical"}  # <= 5 values
    table = pd.DataFrame({"sex": ["f", "m", None, "f", "m", "f", "m"], "age": [50, 60, None, 70, 55, 65, 45]})
    spec = CovariateSpec.fit(table, ["sex", "age"])
    assert spec.numeric_dim == 2 and spec.cardinalities == [3]
    num, codes, notes = spec.encode(pd.DataFrame({"sex": ["m", "x", None], "age": [57.5, None, "60"]}))
    assert codes[:, 0].tolist() == [2, 0, 0] and "x" in notes[0]
    age = spec.numeric[0]
    assert num[0, 0] == pytest.approx((57.5 - age["mean"]) / age["std"])
    assert num[1, 0] == pytest.approx((age["median"] - age["mean"]) / age["std"]) and num[1, 1] == 1.0
    assert CovariateSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(DatasetError, match="not a column"):
        CovariateSpec.fit(table, ["stage"])


def test_gene_scaler_inverse_is_exact() -> None:
    x = np.random.default_rng(1).normal(5, 3, size=(30, 7)).astype(np.float32)
    x[:, 3] = 2.0  # a constant gene
    s = GeneScaler.fit(x)
    np.testing.assert_allclose(s.inverse(s.transform(x)), x, rtol=1e-6, atol=1e-5)
    s2 = GeneScaler.from_dict(s.to_dict())
    np.testing.assert_array_equal(s2.mean, s.mean)


def test_detect_floor() -> None:
    from engine.expression.wgan import detect_floor

    x = np.random.default_rng(0).normal(3, 1, size=(50, 10))
    assert detect_floor(x) is None  # no point mass at the minimum (microarray-like)
    x[:5, :3] = -2.0
    assert detect_floor(x) == -2.0  # 3 % of the values at a floor (floored log2 RNA-seq)
    x[7, 7] = -7.0
    assert detect_floor(x) == -2.0  # a rare value below the floor does not move it
    assert detect_floor(np.log2(np.random.default_rng(1).poisson(0.5, size=(40, 8)) + 1.0)) == 0.0


def _cfg(folder: Path, **kw: object):
    from engine.expression.wgan_train import WganTrainConfig

    m, s = write_tiny(folder)
    return WganTrainConfig(matrix=str(m), samples=str(s), genes=str(folder / "genes.txt"),
                           covariates=("sex", "age", "stage"), where=("kind=tumour",), **{**TINY, **kw})


def test_train_export_generate_round_trip(tmp_path: Path) -> None:
    from engine.expression.wgan_train import train_wgan

    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    result = train_wgan(cfg, run)
    assert json.loads((run / "config.json").read_text())["kind"] == "wgan"
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) + len(split["heldout"]) == 36 and not set(split["train"]) & set(split["heldout"])
    patients = {s: f"P{int(s[1:]) // 2}" for s in split["train"] + split["heldout"]}
    assert not {patients[s] for s in split["train"]} & {patients[s] for s in split["heldout"]}
    events, _ = read_events(run)
    names = [e["event"] for e in events]
    assert names[0] == "run_started" and names[-1] == "finished" and names.count("epoch_ended") == 2
    ended = [e for e in events if e["event"] == "epoch_ended"]
    assert {"critic_loss", "generator_loss", "gradient_penalty", "wasserstein", "val_gamma"} <= set(ended[0])
    m = json.loads((run / "metrics.json").read_text())
    for key in ("gamma", "c2st_auc"):
        assert key in m and key in m["baseline"] and key in m["real_vs_real"]
    assert (run / "realism" / "report.html").is_file() and result.model_path == run / "model.onnx"

    from engine.expression.wgan_export import load_generator
    from engine.modelpkg import read_metadata

    meta = read_metadata(run / "model.onnx")
    assert meta.task == "expression_generator" and meta.extra["genes"] == [f"G{j}" for j in range(6)]
    assert meta.extra["inputs"] == ["noise", "numeric", "codes"] and meta.extra["training_covariates"]
    # the ONNX graph equals the torch generator followed by the exact inverse scaling
    import onnxruntime as ort
    import torch

    gen, ck = load_generator(run)
    spec = CovariateSpec.from_dict(ck["covariate_spec"])
    num, codes, _ = spec.encode(pd.DataFrame({"sex": ["female", "male"], "age": [50, None], "stage": ["ii", None]}))
    noise = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    onnx_out = ort.InferenceSession(str(run / "model.onnx")).run(
        ["expression"], {"noise": noise, "numeric": num, "codes": codes}
    )[0]
    with torch.no_grad():
        z = gen(torch.from_numpy(noise), torch.from_numpy(num), torch.from_numpy(codes)).numpy()
    np.testing.assert_allclose(onnx_out, GroupScaler.from_dict(ck["group_scaler"]).inverse(z, codes), rtol=1e-4, atol=1e-4)

    # generation runs with onnxruntime only: no torch import in a fresh interpreter
    out = tmp_path / "syn.tsv"
    code = (
        "import sys; from engine.cli import main; "
        f"rc = main(['expression', 'generate', {str(run)!r}, '--n', '25', '--set', 'sex=male', '--out', {str(out)!r}]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    syn = pd.read_csv(out, sep="\t")
    assert list(syn.columns[:4]) == ["sample", "sex", "age", "stage"] and len(syn) == 25
    assert (syn["sex"] == "male").all() and np.isfinite(syn[[f"G{j}" for j in range(6)]].to_numpy()).all()

    from engine.expression.generate import generate, read_covariate_table

    (tmp_path / "cov.tsv").write_text("sex\tage\tstage\nfemale\t45\ti\nmale\t\tiv\n")
    g = generate(run / "model.onnx", n=5, covariates=read_covariate_table(tmp_path / "cov.tsv"), seed=1)
    assert g.covariates["sex"].tolist() == ["female", "male"] * 2 + ["female"] and g.values.shape == (5, 6)
    assert any("iv" in note for note in g.notes)  # stage iv never seen in training: treated as missing
    with pytest.raises(ConfigError, match="does not use"):
        generate(run, n=2, fixed={"grade": "2"})


def test_cancel_then_resume(tmp_path: Path) -> None:
    from engine.expression.wgan_train import train_wgan

    cfg = _cfg(tmp_path, epochs=3)
    run = tmp_path / "run"
    token = CancelToken()

    def stop_after_first(ev):  # progress arrives after epoch 1's checkpoint
        token.cancel()

    with pytest.raises(Cancelled):
        train_wgan(cfg, run, progress=stop_after_first, cancel=token, export=False)
    assert json.loads((run / "state.json").read_text())["status"] == "cancelled"
    with pytest.raises(RunFolderError, match="--resume"):
        train_wgan(cfg, run, export=False)
    result = train_wgan(None, run, resume=True, export=False)
    events, _ = read_events(run)
    started = [e for e in events if e["event"] == "run_started"]
    assert started[-1]["resumed"] and started[-1]["start_epoch"] == 1
    assert [e["epoch"] for e in events if e["event"] == "epoch_ended"] == [1, 2, 3]
    assert "gamma" in result.metrics and result.model_path is None


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m, s = write_tiny(tmp_path)
    base = ["train", "wgan", "--matrix", str(m), "--samples", str(s), "--epochs", "1"]
    cases = [
        ([*base, "--covariates", "nope", "--out", str(tmp_path / "a")], "not a column"),
        ([*base, "--where", "kind=none", "--out", str(tmp_path / "b")], "no sample left"),
        ([*base, "--where", "kind", "--out", str(tmp_path / "c")], "COLUMN=VALUE"),
        ([*base, "--holdout", "0.95", "--out", str(tmp_path / "d")], "holdout"),
        (["train", "wgan", "--out", str(tmp_path / "e"), "--resume"], "nothing to resume"),
        (["expression", "generate", str(tmp_path), "--n", "3", "--out", str(tmp_path / "x.tsv")], "no model.onnx"),
    ]
    (tmp_path / "g.txt").write_text("G0\nNOTAGENE\n")
    cases.append(([*base, "--genes", str(tmp_path / "g.txt"), "--out", str(tmp_path / "f")], "not in the matrix"))
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err, (argv, err)
    with pytest.raises(ConfigError):
        _cfg(tmp_path, epochs=-1)  # 0 means: chosen from the sample count
