"""``metascope mil ...`` / ``metascope train mil`` end to end on the generated cohort, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main


def test_cli_validate_features_train_evaluate_export_predict(
    mil_cohort, mil_features, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    features, _ = mil_features
    assert main(["mil", "validate", str(mil_cohort.manifest)]) == 0
    out = capsys.readouterr().out
    assert "42 usable" in out and "er (categorical)" in out and "missing" in out

    # features resume: the shared folder is complete, so every slide is skipped (bad ones retried and reported)
    assert (
        main(
            [
                "mil",
                "features",
                str(mil_cohort.manifest),
                "--extractor",
                str(mil_cohort.extractor),
                "--out",
                str(features),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "40 already done" in out and "1 without tissue" in out and "1 failed" in out

    run = tmp_path / "run"
    args = ["train", "mil", "--manifest", str(mil_cohort.manifest), "--features", str(features), "--out", str(run)]
    assert main([*args, "--clinical", "age,er", "--epochs", "3", "--device", "cpu"]) == 0
    assert "run folder" in capsys.readouterr().out
    assert (
        main(
            [
                "mil",
                "evaluate",
                str(run),
                "--manifest",
                str(mil_cohort.manifest),
                "--features",
                str(features),
                "--out",
                str(tmp_path / "ev"),
                "--subgroup",
                "age<50",
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "AUC" in out and "subgroup age<50" in out
    sub = json.loads((tmp_path / "ev" / "subgroup.json").read_text())
    assert sub["in"]["n"] + sub["out"]["n"] == 40

    model = tmp_path / "mil.onnx"
    assert main(["mil", "export", str(run), "--out", str(model)]) == 0
    capsys.readouterr()
    slide = mil_cohort.root / "slides" / "case01.svs"
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "mil",
                "predict",
                str(slide),
                "--extractor",
                str(mil_cohort.extractor),
                "--model",
                str(model),
                "--clinical",
                "age=44,er=unheard",
                "--out",
                str(pred),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "case01.svs" in captured.out and "not seen in training" in captured.err
    for name in ("prediction.json", "attention.npy", "attention.png", "tiles.csv"):
        assert (pred / name).is_file()
    # without --extractor the model's extractor is found in the model library by sha256
    from engine.library import ModelLibrary

    monkeypatch.setenv("METASCOPE_HOME", str(tmp_path / "home"))
    short = ["mil", "predict", str(slide), "--model", str(model), "--out", str(tmp_path / "pred2"), "--device", "cpu"]
    assert main(short) == 2
    assert "not in the model library" in capsys.readouterr().err
    ModelLibrary().add(mil_cohort.extractor)
    assert main(short) == 0
    capsys.readouterr()
    first, second = (json.loads((d / "prediction.json").read_text()) for d in (pred, tmp_path / "pred2"))
    assert first["n_tiles"] == second["n_tiles"] and first["extractor"]["sha256"] == second["extractor"]["sha256"]
    assert (
        main(
            [
                "mil",
                "evaluate",
                str(model),
                "--manifest",
                str(mil_cohort.manifest),
                "--features",
                str(features),
                "--out",
                str(tmp_path / "ev2"),
                "--bootstrap",
                "20",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["mil", "validate", "{root}/nope.csv"], "manifest not found"),
        (
            ["mil", "features", "{manifest}", "--extractor", "{root}/slides/broken.svs", "--out", "{tmp}/f"],
            "not an ONNX model",
        ),
        (
            ["train", "mil", "--manifest", "{manifest}", "--features", "{tmp}/none", "--out", "{tmp}/r"],
            "features folder not found",
        ),
        (
            [
                "train",
                "mil",
                "--manifest",
                "{manifest}",
                "--features",
                "{features}",
                "--out",
                "{tmp}/r",
                "--clinical",
                "height",
            ],
            "not in the manifest",
        ),
        (["mil", "export", "{tmp}", "--out", "{tmp}/m.onnx"], "not a training run"),
        (
            [
                "mil",
                "predict",
                "{root}/slides/blank.svs",
                "--extractor",
                "{extractor}",
                "--model",
                "{extractor}",
                "--out",
                "{tmp}/p",
            ],
            "not a MIL",
        ),
        (
            [
                "mil",
                "evaluate",
                "{tmp}",
                "--manifest",
                "{manifest}",
                "--features",
                "{features}",
                "--out",
                "{tmp}/e",
                "--subgroup",
                "age",
            ],
            "COLUMN OP VALUE",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, mil_cohort, mil_features, tmp_path: Path, capsys) -> None:
    features, _ = mil_features
    fmt = {
        "root": mil_cohort.root,
        "manifest": mil_cohort.manifest,
        "tmp": tmp_path,
        "features": features,
        "extractor": mil_cohort.extractor,
    }
    assert main([a.format(**fmt) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
