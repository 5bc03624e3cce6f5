"""``metascope train patches`` / ``export`` / ``evaluate`` / ``predict`` end to end, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.modelpkg import read_metadata
from tests.fixtures.datasets import make_folder_dataset


def test_train_export_evaluate_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=32, size=32)
    run = tmp_path / "run"
    assert main(["train", "patches", "--data", str(data), "--out", str(run), "--epochs", "2", "--batch-size", "16",
                 "--lr", "3e-3", "--mpp", "0.5", "--hed", "0.02", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "finished" and summary["best"]["val_auc"] > 0.9
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["augment"]["hed"] == 0.02 and cfg["mpp"] == 0.5

    model = tmp_path / "toy.onnx"
    assert main(["export", str(run), "--out", str(model), "--exporter", "torchscript"]) == 0
    assert "verified" in capsys.readouterr().out
    assert read_metadata(model).input_mpp == 0.5
    # the same model card the Training view writes, beside the package, without absolute paths
    card = (tmp_path / "toy.md").read_text(encoding="utf-8")
    assert card.startswith("# run\n") and "Patch classifier trained with MetaScope" in card
    assert "- Dataset: `data`" in card and str(tmp_path) not in card and "seed_cnn" in card
    from engine.modelcard import model_card

    assert card == model_card(run)

    assert main(["evaluate", str(model), "--data", str(data), "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("AUC ") and (tmp_path / "eval" / "metrics.json").is_file()

    assert main(["predict", str(model), "--data", str(data / "tumor"), "--format", "images",
                 "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 33

    # a finished run is not trained again into the same folder
    assert main(["train", "patches", "--data", str(data), "--out", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "patches", "--out", "RUN"], "--data is required"),
        (["train", "patches", "--data", "DATA", "--out", "RUN", "--arch", "alexnet"], "invalid choice"),
        (["train", "patches", "--data", "DATA", "--out", "RUN", "--epochs", "0"], "epochs"),
        (["train", "patches", "--data", "MISSING", "--out", "RUN"], "not found"),
        (["train", "patches", "--out", "RUN", "--resume"], "nothing to resume"),
        (["export", "RUN", "--out", "m.onnx"], "not found"),
        (["evaluate", "BAD.onnx", "--data", "DATA", "--out", "E"], "error"),
        (["predict", "BAD.onnx", "--data", "DATA", "--out", "p.csv"], "error"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "DATA"
    data.mkdir()
    (tmp_path / "BAD.onnx").write_bytes(b"not onnx")
    subst = {"DATA": str(data), "RUN": str(tmp_path / "run"), "MISSING": str(tmp_path / "missing"),
             "BAD.onnx": str(tmp_path / "BAD.onnx"), "E": str(tmp_path / "e"), "m.onnx": str(tmp_path / "m.onnx"),
             "p.csv": str(tmp_path / "p.csv")}
    assert main([subst.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err
    assert "Traceback" not in err
