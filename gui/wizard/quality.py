"""The settings page's "Model quality" group: EMA, stain normalisation, hard negatives, threshold rule.

Mirrors ``train patches --ema / --stain-norm / --hard-negatives / --threshold-rule / --threshold-target``;
an untouched group gives the CLI's defaults (every option off, specificity >= 0.95).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox, QLabel, QWidget

from engine.train.calibration import check_rule
from engine.train.config import DEFAULT_HARD_NEGATIVES, MAX_HARD_NEGATIVES, STAIN_NORMS, THRESHOLD_RULES

DEFAULT_EMA = 0.999
#: the target each rule with one takes when none is given (the engine's own defaults: 0.95, 0.5 for "fixed")
DEFAULT_TARGETS = {rule: check_rule(rule, None) for rule in ("specificity", "sensitivity", "fixed")}
STAIN_LABELS = {"none": "None", "reinhard": "Reinhard", "macenko": "Macenko"}
RULE_LABELS = {
    "specificity": "Specificity at least",
    "sensitivity": "Sensitivity at least",
    "youden": "Youden index",
    "fixed": "Fixed probability",
}
RULE_TIPS = {
    "specificity": "The lowest threshold that flags at most 1 - target of the validation negatives",
    "sensitivity": "The highest threshold that still finds at least this share of the validation positives",
    "youden": "The threshold that maximises sensitivity + specificity - 1 on the validation split",
    "fixed": "Use this probability as the threshold",
}


def _spin(lo: float, hi: float, value: float, decimals: int, step: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setDecimals(decimals)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


class QualityGroup(QGroupBox):
    """Model-quality options; :meth:`values` gives the matching ``TrainConfig`` fields."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model quality", parent)
        self.ema_check = QCheckBox("Average the weights (EMA), decay")
        self.ema_check.setToolTip(
            "Keep an exponential moving average of the weights; it is validated, saved and exported "
            "instead of the last weights (smoother weights from step to step)"
        )
        self.ema_spin = _spin(0.5, 0.9999, DEFAULT_EMA, 4, 0.0005)
        self.ema_spin.setToolTip("Decay of the average: 0.999 averages over about the last 1000 steps")

        self.stain_combo = QComboBox()
        for name in STAIN_NORMS:
            self.stain_combo.addItem(STAIN_LABELS.get(name, name), name)
        self.stain_combo.setToolTip(
            "Stain normalisation: fitted on the training patches, stored in the model and applied wherever the model runs"
        )

        self.hard_check = QCheckBox("Hard-negative mining, strength")
        self.hard_check.setToolTip(
            "After a warm-up epoch, draw the negative patches the model gets most wrong more often "
            "(fewer false alarms on normal tissue); positives and epoch length unchanged"
        )
        self.hard_spin = _spin(0.5, MAX_HARD_NEGATIVES, DEFAULT_HARD_NEGATIVES, 1, 0.5)
        self.hard_spin.setToolTip("The hardest negative is drawn up to 1 + this many times as often as the easiest")

        self.rule_combo = QComboBox()
        for name in THRESHOLD_RULES:
            self.rule_combo.addItem(RULE_LABELS.get(name, name), name)
            self.rule_combo.setItemData(
                self.rule_combo.count() - 1, RULE_TIPS.get(name, ""), Qt.ItemDataRole.ToolTipRole
            )
        self.rule_combo.setToolTip("How the model's operating threshold is chosen on the validation patches")
        self.target_spin = _spin(0.01, 0.99, DEFAULT_TARGETS["specificity"], 3, 0.01)
        self.target_spin.setToolTip("The rule's target")

        grid = QGridLayout(self)
        grid.addWidget(self.ema_check, 0, 0)
        grid.addWidget(self.ema_spin, 0, 1)
        grid.addWidget(QLabel("Stain normalisation:"), 0, 2)
        grid.addWidget(self.stain_combo, 0, 3)
        grid.addWidget(self.hard_check, 1, 0)
        grid.addWidget(self.hard_spin, 1, 1)
        grid.addWidget(QLabel("Operating threshold:"), 1, 2)
        grid.addWidget(self.rule_combo, 1, 3)
        grid.addWidget(self.target_spin, 1, 4)

        self.ema_check.toggled.connect(self.ema_spin.setEnabled)
        self.hard_check.toggled.connect(self.hard_spin.setEnabled)
        self.rule_combo.currentIndexChanged.connect(self._on_rule_changed)
        self.ema_spin.setEnabled(False)
        self.hard_spin.setEnabled(False)

    def rule(self) -> str:
        return str(self.rule_combo.currentData())

    def set_rule(self, rule: str) -> None:
        self.rule_combo.setCurrentIndex(self.rule_combo.findData(rule))

    def _on_rule_changed(self) -> None:
        rule = self.rule()
        self.target_spin.setVisible(rule in DEFAULT_TARGETS)
        if rule in DEFAULT_TARGETS:
            self.target_spin.setValue(DEFAULT_TARGETS[rule])

    def target(self) -> float | None:
        """The rule's target, ``None`` where it is the rule's default (as the CLI without ``--threshold-target``)."""
        rule = self.rule()
        if rule not in DEFAULT_TARGETS:
            return None
        value = round(self.target_spin.value(), self.target_spin.decimals())
        return None if value == DEFAULT_TARGETS[rule] else value

    def values(self) -> dict[str, Any]:
        """``TrainConfig`` keyword arguments: ema, stain_norm, hard_negatives, threshold_rule, threshold_target."""
        return {
            "ema": self.ema_spin.value() if self.ema_check.isChecked() else 0.0,
            "stain_norm": str(self.stain_combo.currentData()),
            "hard_negatives": self.hard_spin.value() if self.hard_check.isChecked() else 0.0,
            "threshold_rule": self.rule(),
            "threshold_target": self.target(),
        }

    def summary_rows(self) -> list[tuple[str, str]]:
        """``(label, value)`` rows for the review page."""
        v = self.values()
        rule = v["threshold_rule"]
        target = v["threshold_target"] if v["threshold_target"] is not None else DEFAULT_TARGETS.get(rule)
        if rule == "specificity":
            threshold = f"specificity ≥ {target:g} on validation"
        elif rule == "sensitivity":
            threshold = f"sensitivity ≥ {target:g} on validation"
        elif rule == "fixed":
            threshold = f"fixed at {target:g}"
        else:
            threshold = "Youden index on validation"
        return [
            ("Weight averaging", f"EMA, decay {v['ema']:g}" if v["ema"] else "off"),
            (
                "Stain normalisation",
                STAIN_LABELS.get(v["stain_norm"], v["stain_norm"]) if v["stain_norm"] != "none" else "none",
            ),
            ("Hard-negative mining", f"on, strength {v['hard_negatives']:g}" if v["hard_negatives"] else "off"),
            ("Operating threshold", threshold),
        ]
