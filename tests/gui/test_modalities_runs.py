"""Run kinds of the new modalities in the shared run machinery: generic metrics, resume, curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from engine.fileio import atomic_write_json  # noqa: E402
from engine.runs import COMMAND_NAME, RunHistory, launch_dir, resume_args, train_args  # noqa: E402
from gui.widgets.plot_canvas import PlotCanvas, draw_curves  # noqa: E402


def wgan_events() -> list[dict]:
    ev = [{"event": "run_started", "epochs": 3, "steps_per_epoch": 2, "device": "cpu"}]
    for epoch in (1, 2, 3):
        ev.append({"event": "epoch_started", "epoch": epoch, "epochs": 3})
        for step in (1, 2):
            ev.append({"event": "step", "epoch": epoch, "step": step, "steps": 2,
                       "critic_loss": -1.0 / epoch, "generator_loss": 0.5 * epoch})
        ev.append({"event": "epoch_ended", "epoch": epoch, "critic_loss": -1.0 / epoch, "generator_loss": 0.5,
                   "gamma": 0.5 + 0.1 * epoch, "epoch_s": 1.2, "lr": 1e-4})
    ev.append({"event": "finished", "status": "finished"})
    return ev


def test_history_keeps_every_numeric_metric_of_any_run_kind(qtbot) -> None:  # noqa: ANN001
    h = RunHistory()
    h.apply_all(wgan_events())
    assert h.status == "finished"
    assert [round(v, 2) for _, v in h.extra_points["gamma"]] == [0.6, 0.7, 0.8]
    assert set(h.extra_points) == {"gamma", "critic_loss", "generator_loss"}  # not lr, not epoch_s
    assert len(h.step_points["critic_loss"]) == 6
    assert h.latest("gamma") == pytest.approx(0.8)
    canvas = PlotCanvas()
    qtbot.addWidget(canvas)
    canvas.show()
    draw_curves(canvas, h)
    labels = {line.get_label() for ax in canvas.figure.axes for line in ax.get_lines()}
    assert {"gamma", "critic loss", "generator loss"} <= labels


def test_resume_repeats_the_starting_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    atomic_write_json(run / "config.json", {"kind": "siamese", "config": {}})
    # started elsewhere: the kind names the command
    assert resume_args(run) == ["train", "siamese", "--out", str(run), "--resume"]
    args = ["train", "siamese", "--matrix", "m.tsv", "--samples", "s.tsv", "--label-column", "type", "--out", str(run)]
    launch_dir(run).mkdir()
    (launch_dir(run) / COMMAND_NAME).write_text(json.dumps({"argv": [], "args": args}), encoding="utf-8")
    assert train_args(run, resume=True) == [*args, "--resume"]
    patch = tmp_path / "patch"
    patch.mkdir()
    assert resume_args(patch) == ["train", "patches", "--out", str(patch), "--resume"]


def test_folds_continue_one_after_another() -> None:
    h = RunHistory()
    for fold in (1, 2, 0):  # two CV folds, then the final fit on all patients
        for epoch in (1, 2, 3):
            h.apply({"event": "epoch_ended", "epoch": epoch, "fold": fold, "val_auc": 0.5 + epoch / 10})
    xs = [x for x, _ in h.val_points["auc"]]
    assert xs == [1, 2, 3, 4, 5, 6, 7, 8, 9]
