"""The training wizard's "Model quality" group: EMA, stain normalisation, hard negatives, threshold rule.

Every option set in the wizard must give the same ``TrainConfig`` fields as the matching
``train patches`` options, and an untouched group the same config as before the group existed.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QWizard  # noqa: E402

from engine.train.config import TrainConfig  # noqa: E402
from gui.wizard import TrainingWizard  # noqa: E402
from gui.wizard.quality import QualityGroup  # noqa: E402
from tests.fixtures.datasets import make_folder_dataset  # noqa: E402

WAIT_MS = 30_000
QUALITY_FIELDS = ("ema", "stain_norm", "hard_negatives", "threshold_rule", "threshold_target")


def _cli_config(data: str, options: list[str]) -> TrainConfig:
    """The config ``metascope train patches --data DATA OPTIONS`` would train."""
    from engine.cli import build_parser
    from engine.cli.patches import _train_config

    return _train_config(
        build_parser().parse_args(["train", "patches", "--data", data, "--out", "unused-run", *options])
    )


def _quality(cfg: TrainConfig) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in QUALITY_FIELDS}


def _next(qtbot, wizard: TrainingWizard) -> None:  # noqa: ANN001
    page = wizard.currentPage()
    qtbot.waitUntil(page.isComplete, timeout=WAIT_MS)
    wizard.next()
    assert wizard.currentPage() is not page


@pytest.fixture
def wizard(qtbot, tmp_path: Path) -> TrainingWizard:  # noqa: ANN001
    """A wizard on its settings page for a tiny two-class folder dataset."""
    root = make_folder_dataset(tmp_path / "tiny", per_class=6, size=32)
    wiz = TrainingWizard()
    qtbot.addWidget(wiz)
    wiz.resize(800, 640)
    wiz.show()
    wiz.dataset_page.set_dataset(str(root), "auto", 0.5)
    _next(qtbot, wiz)  # -> split
    _next(qtbot, wiz)  # -> model
    qtbot.waitUntil(lambda: wiz.model_page.arch() is not None, timeout=WAIT_MS)
    assert wiz.model_page.select("seed_cnn")
    _next(qtbot, wiz)  # -> settings
    assert wiz.currentPage() is wiz.settings_page
    return wiz


def test_untouched_quality_group_gives_the_previous_config_and_the_cli_defaults(qtbot, wizard: TrainingWizard) -> None:  # noqa: ANN001
    group = wizard.settings_page.quality
    assert group.title() == "Model quality"
    assert not group.ema_spin.isEnabled() and not group.hard_spin.isEnabled()
    assert "fitted on the training patches" in group.stain_combo.toolTip()
    assert "wherever the model runs" in group.stain_combo.toolTip()
    cfg = wizard.review_page.build_config()
    # the config the wizard built before the group existed: the five fields left at their defaults
    before = {k: v for k, v in cfg.to_dict().items() if k not in QUALITY_FIELDS}
    assert cfg == TrainConfig.from_dict(before)
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in QUALITY_FIELDS}
    assert _quality(cfg) == defaults
    assert _quality(cfg) == _quality(_cli_config(cfg.data, []))


CASES = [
    ("ema", lambda g: (g.ema_check.setChecked(True), g.ema_spin.setValue(0.99)), ["--ema", "0.99"]),
    ("ema default decay", lambda g: g.ema_check.setChecked(True), ["--ema", "0.999"]),
    (
        "reinhard",
        lambda g: g.stain_combo.setCurrentIndex(g.stain_combo.findData("reinhard")),
        ["--stain-norm", "reinhard"],
    ),
    (
        "macenko",
        lambda g: g.stain_combo.setCurrentIndex(g.stain_combo.findData("macenko")),
        ["--stain-norm", "macenko"],
    ),
    ("hard negatives", lambda g: g.hard_check.setChecked(True), ["--hard-negatives"]),
    ("hard negatives 5", lambda g: (g.hard_check.setChecked(True), g.hard_spin.setValue(5)), ["--hard-negatives", "5"]),
    ("specificity 0.98", lambda g: g.target_spin.setValue(0.98), ["--threshold-target", "0.98"]),
    ("sensitivity", lambda g: g.set_rule("sensitivity"), ["--threshold-rule", "sensitivity"]),
    (
        "sensitivity 0.9",
        lambda g: (g.set_rule("sensitivity"), g.target_spin.setValue(0.9)),
        ["--threshold-rule", "sensitivity", "--threshold-target", "0.9"],
    ),
    ("youden", lambda g: g.set_rule("youden"), ["--threshold-rule", "youden"]),
    ("fixed", lambda g: g.set_rule("fixed"), ["--threshold-rule", "fixed"]),
    (
        "fixed 0.7",
        lambda g: (g.set_rule("fixed"), g.target_spin.setValue(0.7)),
        ["--threshold-rule", "fixed", "--threshold-target", "0.7"],
    ),
]


def test_each_option_lands_in_the_train_config_as_the_cli_sets_it(qtbot, wizard: TrainingWizard) -> None:  # noqa: ANN001
    settings = wizard.settings_page
    base = wizard.review_page.build_config()
    for name, set_ui, cli_options in CASES:
        group = QualityGroup()
        qtbot.addWidget(group)
        settings.quality = group  # a fresh, untouched group per case
        set_ui(group)
        cfg = wizard.review_page.build_config()
        assert _quality(cfg) == _quality(_cli_config(cfg.data, cli_options)), name
        # nothing else changes
        assert {k: v for k, v in cfg.to_dict().items() if k not in QUALITY_FIELDS} == {
            k: v for k, v in base.to_dict().items() if k not in QUALITY_FIELDS
        }, name


def test_target_spin_follows_the_rule(qtbot, wizard: TrainingWizard) -> None:  # noqa: ANN001
    group = wizard.settings_page.quality
    assert group.target_spin.isVisible() and group.target_spin.value() == pytest.approx(0.95)
    group.set_rule("youden")
    assert not group.target_spin.isVisible() and group.values()["threshold_target"] is None
    group.set_rule("fixed")
    assert group.target_spin.isVisible() and group.target_spin.value() == pytest.approx(0.5)
    group.set_rule("sensitivity")
    assert group.target_spin.value() == pytest.approx(0.95) and group.values()["threshold_target"] is None
    group.ema_check.setChecked(True)
    group.hard_check.setChecked(True)
    assert group.ema_spin.isEnabled() and group.hard_spin.isEnabled()


def test_review_summary_lists_the_options_and_finish_emits_them(qtbot, wizard: TrainingWizard) -> None:  # noqa: ANN001
    group = wizard.settings_page.quality
    group.ema_check.setChecked(True)
    group.stain_combo.setCurrentIndex(group.stain_combo.findData("macenko"))
    group.hard_check.setChecked(True)
    group.hard_spin.setValue(4)
    group.set_rule("sensitivity")
    group.target_spin.setValue(0.9)
    _next(qtbot, wizard)  # -> review
    text = wizard.review_page.details.toPlainText()
    assert "Weight averaging" in text and "EMA, decay 0.999" in text
    assert "Stain normalisation" in text and "Macenko" in text
    assert "Hard-negative mining" in text and "strength 4" in text
    assert "Operating threshold" in text and "sensitivity ≥ 0.9" in text

    started: list[tuple[TrainConfig, Path]] = []
    wizard.start_requested.connect(lambda c, r: started.append((c, r)))
    wizard.button(QWizard.WizardButton.FinishButton).click()
    assert len(started) == 1
    cfg = started[0][0]
    assert _quality(cfg) == {
        "ema": 0.999,
        "stain_norm": "macenko",
        "hard_negatives": 4.0,
        "threshold_rule": "sensitivity",
        "threshold_target": 0.9,
    }
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_review_summary_of_an_untouched_group(qtbot, wizard: TrainingWizard) -> None:  # noqa: ANN001
    _next(qtbot, wizard)  # -> review
    text = wizard.review_page.details.toPlainText()
    assert "Weight averaging" in text and "Hard-negative mining" in text
    assert "specificity ≥ 0.95 on validation" in text
    rows = dict(wizard.settings_page.quality.summary_rows())
    assert rows["Weight averaging"] == "off" and rows["Hard-negative mining"] == "off"
    assert rows["Stain normalisation"] == "none"
