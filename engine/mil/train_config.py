"""The settings of a MIL training run (:class:`MILTrainConfig`, saved as the run's ``config.json``)
and reading them back from a run folder.

Split out of :mod:`engine.mil.train`, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.mil.cohort import label_scheme
from engine.train.runfolder import config_from_dict, load_kind_config

DEVICES = ("auto", "cpu", "cuda")
#: ``config.json`` of a MIL run is ``{"kind": "mil", "config": MILTrainConfig.to_dict()}``.
RUN_KIND = "mil"


@dataclass(frozen=True, slots=True)
class MILTrainConfig:
    """Everything a MIL training run needs; saved as ``config.json`` in the run folder.

    Attributes:
        manifest: cohort manifest CSV.
        features_dir: folder of per-slide feature bags (``metascope mil features``).
        labels: label scheme: ``"binary"`` (N0 vs N+), ``"three_class"`` or a ``raw=Class,...`` mapping.
        clinical: clinical columns fused into the model (empty: image only).
        categorical: clinical columns forced to be categorical (e.g. a grade coded 1/2/3).
        folds: 0 or 1 for one train/val/test split, K >= 2 for K-fold cross-validation.
        val_fraction, test_fraction: patient shares for validation and test (random splits).
        epochs: epochs per fold.
        lr, weight_decay: Adam settings.
        hidden_dim, attention_dim, dropout, embed_dim, clinical_dim: model sizes.
        max_instances: tiles sampled per bag and step in training (0: all); regularises and
            bounds memory on huge slides.
        class_weighted: weight the loss by inverse class frequency.
        patience: stop a fold after this many epochs without improvement (0: never).
        seed: random seed (splits, initialisation, sampling).
        device: ``auto``, ``cpu`` or ``cuda``.
        n_boot: bootstrap resamples for the AUC confidence interval.
        cpu_threads: torch threads on the CPU. One bag per step is a small computation: extra
            threads mostly wait on each other (10-20x slower on a busy machine), so 1 is default.
        attention: ``"gated"`` (default) or ``"tanh"`` (BALNMP's published attention).
        bag_size: 0 = one bag per slide (all its tiles, ``max_instances`` sampled per step); N > 0
            = BALNMP's bags: every epoch each training slide's tiles are shuffled and cut into
            random bags of N tiles, each bag one step with the slide's label; a slide is scored
            as the mean probability over its bags (fixed bags per slide).
        recipe: the named recipe the settings came from (``balnmp``; empty = none), for the record.
    """

    manifest: str
    features_dir: str
    labels: str = "binary"
    clinical: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    folds: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden_dim: int = 64
    attention_dim: int = 32
    dropout: float = 0.25
    embed_dim: int = 4
    clinical_dim: int = 16
    max_instances: int = 512
    class_weighted: bool = True
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    n_boot: int = 1000
    cpu_threads: int = 1
    attention: str = "gated"
    bag_size: int = 0
    recipe: str = ""

    def __post_init__(self) -> None:
        if self.attention not in ("gated", "tanh"):
            raise ConfigError(f"attention must be gated or tanh, got {self.attention!r}")
        if self.bag_size < 0:
            raise ConfigError(f"bag_size must be >= 0, got {self.bag_size}")
        if not self.manifest or not self.features_dir:
            raise ConfigError("a MIL run needs a manifest and a features folder")
        label_scheme(self.labels)  # raises ConfigError on a bad spec
        if self.folds < 0:
            raise ConfigError(f"folds must be >= 0, got {self.folds}")
        if not (0.0 < self.val_fraction < 1.0) or not (0.0 <= self.test_fraction < 1.0):
            raise ConfigError("val_fraction must be in (0, 1) and test_fraction in [0, 1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("val_fraction + test_fraction leave too little for training (keep their sum < 0.9)")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if self.cpu_threads < 1:
            raise ConfigError("cpu_threads must be >= 1")
        if self.max_instances < 0 or self.patience < 0 or self.n_boot < 0:
            raise ConfigError("max_instances, patience and n_boot must be >= 0")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if len(set(self.clinical)) != len(self.clinical):
            raise ConfigError("clinical columns are listed twice")
        for name in ("hidden_dim", "attention_dim", "embed_dim", "clinical_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)")

    @property
    def n_folds(self) -> int:
        return self.folds if self.folds >= 2 else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clinical"] = list(self.clinical)
        d["categorical"] = list(self.categorical)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MILTrainConfig:
        return config_from_dict(cls, d, "MIL", _TUPLE_FIELDS)


#: fields stored as JSON lists, with their items' type
_TUPLE_FIELDS = {"clinical": str, "categorical": str}


def load_mil_config(run: Path) -> MILTrainConfig:
    """The configuration saved in a MIL run folder.

    Raises:
        RunFolderError: not a run folder; ConfigError: not a MIL run or a damaged config.
    """
    return load_kind_config(run, RUN_KIND, MILTrainConfig, "MIL", _TUPLE_FIELDS)
