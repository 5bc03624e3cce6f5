"""The WGAN-GP on other platforms: scale detection (counts / TPM / microarray logs), the exact
inverse on generated values, gene id styles, and per-group standardisation (pan-cancer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.expression.matrix import _detect_scale, inverse_value_transform, read_matrix, value_transform
from engine.expression.wgan import CovariateSpec, GroupScaler, choose_group_column


@pytest.fixture(autouse=True)
def _small_c2st(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.expression import realism

    monkeypatch.setattr(realism, "C2ST_TREES", 10)
    monkeypatch.setattr(realism, "C2ST_REPEATS", 1)
    monkeypatch.setattr("engine.expression.wgan_loop.REALISM_DRAWS", 2)


def _log_profiles(n: int = 40, genes: int = 8, seed: int = 0) -> np.ndarray:
    """Correlated log2-scale profiles around 2-12 (a microarray-like matrix)."""
    rng = np.random.default_rng(seed)
    x = 7 + rng.normal(size=(n, 2)) @ rng.normal(size=(2, genes)) + 0.4 * rng.normal(size=(n, genes))
    return x + np.linspace(-4, 4, genes)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda x: np.round(np.exp2(x) * 3), "counts"),  # RNA-seq counts
        (lambda x: np.exp2(x) / 10, "linear"),  # TPM-like, not logged
        (lambda x: np.exp2(x - 9), "linear"),  # low TPM of a few genes: max < 30 but heavily skewed
        (lambda x: np.round(np.exp2(x - 9) * 2), "counts"),  # low counts: max < 30, skewed, whole numbers
        (lambda x: x, "log"),  # microarray log2 intensities, no floor
        (lambda x: np.maximum(x - 6, -2), "log"),  # floored log2 RNA-seq (negative values)
    ],
)
def test_scale_detection_and_exact_inverse(make, kind: str) -> None:
    raw = make(_log_profiles())
    logged, scale = _detect_scale(raw.copy(), "auto")
    assert scale.startswith(kind), scale
    t = value_transform(scale)
    assert t["kind"] == ("none" if kind == "log" else "log2p1") and t.get("integer", False) == (kind == "counts")
    np.testing.assert_allclose(inverse_value_transform(logged.astype(np.float32), t), raw, rtol=1e-4, atol=1e-3)


def test_group_scaler_and_choice() -> None:
    rng = np.random.default_rng(0)
    kind = rng.choice(["a", "b", "c"], size=90)
    sex = rng.choice(["f", "m"], size=90)
    x = rng.normal(size=(90, 6)) + (kind == "b")[:, None] * 4.0 - (kind == "c")[:, None] * 3.0
    table = pd.DataFrame({"sex": sex, "kind": kind})
    spec = CovariateSpec.fit(table, ["sex", "kind"])
    _, codes, _ = spec.encode(table)
    assert choose_group_column(x, spec, codes) == 1  # kind explains the variance, sex does not
    assert choose_group_column(rng.normal(size=(90, 6)), spec, codes) is None
    s = GroupScaler.fit(x, codes[:, 1], spec.cardinalities[1], "kind", 1)
    z = s.transform(x, codes)
    assert abs(float(z[kind == "b"].mean())) < 0.3  # standardised within the group (mean shrunk a little)
    np.testing.assert_allclose(s.inverse(z, codes), x, rtol=1e-5, atol=1e-5)
    s2 = GroupScaler.from_dict(json.loads(json.dumps(s.to_dict())))
    np.testing.assert_allclose(s2.inverse(z, codes), x, rtol=1e-5, atol=1e-5)
    unseen = np.zeros_like(codes)  # missing / unseen category: the pooled statistics
    np.testing.assert_allclose(s.inverse(np.zeros((90, 6)), unseen)[0], x.mean(0), rtol=1e-5, atol=1e-5)


def test_counts_platform_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A genes x samples counts matrix with versioned Ensembl ids and a gene list without versions:
    training on log2(x+1), generated profiles written back as whole counts, realism on one scale."""
    from engine.expression import realism

    for name in ("plot_overlays", "plot_moments", "plot_pca", "plot_dendrograms", "plot_correlations"):
        monkeypatch.setattr(realism, name, lambda *a, **k: None)  # the plots are tested elsewhere; slow here
    from engine.cli import main
    from engine.expression.generate import generate, write_synthetic
    from engine.expression.wgan_train import WganTrainConfig, train_wgan

    rng = np.random.default_rng(1)
    n, g = 48, 10
    group = np.array(["x", "y"] * (n // 2))
    logx = _log_profiles(n, g, 2) + (group == "y")[:, None] * 3.0
    counts = rng.poisson(np.exp2(logx - 3)).astype(int)
    counts[:, 0] = rng.poisson(0.4, size=n)  # a gene mostly at zero
    genes = [f"ENSG{j:011d}.{j % 3 + 1}" for j in range(g)]
    samples = [f"S{i:03d}" for i in range(n)]
    pd.DataFrame(counts.T, index=pd.Index(genes, name="gene_id"), columns=samples).to_csv(tmp_path / "m.tsv", sep="\t")
    pd.DataFrame({"sample": samples, "group": group}).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    # the list (made elsewhere) has no versions, other case, and one gene this platform lacks
    (tmp_path / "genes.txt").write_text("\n".join([*(f"ensg{j:011d}" for j in range(g)), "NOTONTHISPLATFORM"]) + "\n")
    cfg = WganTrainConfig(matrix=str(tmp_path / "m.tsv"), samples=str(tmp_path / "s.tsv"), genes=str(tmp_path / "genes.txt"),
                          covariates=("group",), epochs=2, steps_per_epoch=3, batch_size=16, hidden=(16,), noise_dim=4,
                          gamma_every=0)
    run = tmp_path / "run"
    train_wgan(cfg, run)
    split = json.loads((run / "split.json").read_text())
    assert split["value_transform"] == {"kind": "log2p1", "integer": True, "dequantized": True}
    assert len(split["genes"]) == g
    from engine.train.runfolder import read_events

    started = next(e for e in read_events(run)[0] if e["event"] == "run_started")
    assert started["scale"].startswith("counts") and "NOTONTHISPLATFORM" in started["notes"][0]
    syn = generate(run, n=30, fixed={"group": "y"})
    assert syn.values.min() >= 0 and np.array_equal(syn.values, np.round(syn.values))  # whole counts
    assert syn.genes == [f"ENSG{j:011d}" for j in range(g)]
    write_synthetic(syn, tmp_path / "syn.tsv")
    out = tmp_path / "rep"
    assert main(["expression", "realism", "--real", str(tmp_path / "m.tsv"), "--synthetic", str(tmp_path / "syn.tsv"),
                 "--run", str(run), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert any("log2(x+1) applied" in note for note in m["notes"])  # compared on one (log) scale
    assert m["mean_corr"] > 0.5


def test_realism_reads_real_and_synthetic_on_one_scale(tmp_path: Path) -> None:
    from engine.expression.realism_io import same_scale

    real = _log_profiles(30, 6, 3) + 4.0  # log2(x+1) values are never negative
    linear = np.exp2(real[:20]) - 1.0
    logged, note = same_scale(real, linear)
    assert note and np.allclose(logged, real[:20])
    as_is, note = same_scale(real, real[10:])  # already on the same log scale: untouched
    assert note is None and as_is is not None
    m = read_matrix_from(tmp_path, np.round(np.exp2(real)))
    assert m.report["scale"].startswith("counts")


def read_matrix_from(folder: Path, values: np.ndarray):
    pd.DataFrame(values, index=[f"r{i}" for i in range(len(values))],
                 columns=[f"G{j}" for j in range(values.shape[1])]).to_csv(folder / "v.tsv", sep="\t")
    return read_matrix(folder / "v.tsv")


def test_calibrate_moments_matches_training_moments() -> None:
    from engine.expression.wgan_loop import calibrate_moments

    rng = np.random.default_rng(4)
    codes = np.c_[rng.integers(1, 3, size=80)]
    x = rng.normal(size=(80, 5)) * 1.5 + (codes[:, 0] == 2)[:, None] * 3.0
    x = np.maximum(x, -2.0)  # a floor, as in floored RNA-seq
    scaler = GroupScaler.fit(x, codes[:, 0], 3, "kind", 0)

    def off(rows: np.ndarray, seed: int) -> np.ndarray:  # a generator with the wrong location and spread
        return np.random.default_rng(seed).normal(0.5, 1.4, size=(len(rows), 5))

    cal = calibrate_moments(off, codes, x, scaler, -2.0, prior=0.0)
    for g in (1, 2):
        rows = np.flatnonzero(codes[:, 0] == g)
        tiled = np.tile(rows, int(np.ceil(400 / len(rows))))  # the draw the calibration saw (seed + group)
        gen = np.maximum(cal.inverse(off(tiled, g), codes[tiled]), -2.0)
        np.testing.assert_allclose(gen.mean(0), x[rows].mean(0), atol=0.02)
        np.testing.assert_allclose(gen.std(0), x[rows].std(0), rtol=0.03)
        before = np.maximum(scaler.inverse(off(tiled, g), codes[tiled]), -2.0)
        assert np.abs(before.mean(0) - x[rows].mean(0)).mean() > 0.3  # it was off before


def test_time_budget_stops_early(tmp_path: Path) -> None:
    from engine.expression.wgan_train import WganTrainConfig, auto_epochs, train_wgan

    assert auto_epochs(50) == 60 and auto_epochs(400) == 120 and WganTrainConfig(matrix="m").epochs == 0
    from engine.train.runfolder import read_events

    x = _log_profiles(30, 5, 5)
    pd.DataFrame(x, index=pd.Index([f"S{i}" for i in range(30)], name="sample"),
                 columns=[f"G{j}" for j in range(5)]).to_csv(tmp_path / "m.tsv", sep="\t")
    cfg = WganTrainConfig(matrix=str(tmp_path / "m.tsv"), epochs=50, steps_per_epoch=2, batch_size=8, hidden=(8,),
                          noise_dim=4, gamma_every=0, time_budget_s=1e-6)
    result = train_wgan(cfg, tmp_path / "run", export=False)
    assert result.metrics["epochs"] == 1 and result.metrics["epochs_planned"] == 50
    events, _ = read_events(tmp_path / "run")
    assert [e["event"] for e in events if e["event"] in ("time_budget_reached", "calibrated")] == [
        "time_budget_reached", "calibrated"]
