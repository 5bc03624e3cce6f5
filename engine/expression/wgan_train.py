"""Training the conditional WGAN-GP on expression profiles, in a run folder like patch training.

A run folder (``--out RUN_DIR``) holds:

- ``config.json``: ``{"kind": "wgan", "config": WganTrainConfig.to_dict()}``;
- ``split.json``: the training and held-out sample ids (held-out samples are never used in
  training: realism is measured on them), the covariate spec and the gene list;
- ``events.jsonl``: ``run_started``, ``epoch_started``, ``step`` (critic_loss, generator_loss,
  gradient_penalty, wasserstein), ``epoch_ended`` (the same averaged over the epoch, plus
  ``val_gamma`` on the held-out samples every ``gamma_every`` epochs), ``checkpoint``,
  ``finished`` / ``cancelled`` / ``failed``;
- ``state.json``; ``checkpoints/last.pt`` (every epoch);
- at the end ``metrics.json`` (gamma, c2st_auc of the generator, the Gaussian baseline and
  real-vs-real on the held-out samples), ``realism/`` (plots, report.html), ``model.onnx``.

One epoch is ``steps_per_epoch`` generator steps, each after ``n_critic`` critic steps on random
minibatches (so an epoch costs the same for 50 or 5,000 samples). torch is imported lazily.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DatasetError
from engine.fileio import atomic_write_json, ensure_writable_dir
from engine.jobs import CancelToken, ProgressCallback
from engine.train.runfolder import (
    CONFIG_NAME,
    EventLog,
    RunFolderError,
    config_from_dict,
    is_running,
    load_kind_config,
    prepare_new_run,
    recorded_outcome,
    run_lock,
    write_state,
)

RUN_KIND = "wgan"
SPLIT_NAME = "split.json"
MAX_GENES_WITHOUT_LIST = 2000
MAX_ABSENT_GENES = 0.1  # listed genes that may be absent from the matrix (left out, with a note)


@dataclass(frozen=True, slots=True)
class WganTrainConfig:
    """Everything a WGAN-GP run needs; saved as ``config.json``.

    Attributes:
        matrix, samples: expression matrix and sample table (paths).
        genes: gene list file (one per line, or a ``deg.csv``); empty: all genes (at most 2,000).
        covariates: sample-table columns the generator is conditioned on.
        categorical: covariates forced to be categorical (e.g. a grade coded 1/2/3).
        where: ``COL=VALUE`` (or ``COL=V1,V2``) filters: train on that subset only.
        patient_column: held-out split by this column when present (``patient``).
        holdout: fraction of real samples (patients) held out of training for realism.
        epochs, steps_per_epoch: length of training (generator steps = epochs * steps_per_epoch);
            ``epochs`` 0 (the default): :func:`auto_epochs` of the training sample count.
        batch_size, n_critic, gp_lambda, lr, beta1, beta2: WGAN-GP settings (Gulrajani et al.).
        noise_dim, hidden, embed_dim: model sizes.
        ema: exponential moving average of the generator weights (0: off); the average is exported.
        group_scale: standardise each gene within the groups of one categorical covariate
            ("auto": the one explaining most of the expression variance, when its mean adjusted
            R^2 >= 0.1, e.g. cancer type in a pan-cancer cohort; a covariate name; "off").
        floor_clip: when the matrix has a detection floor (e.g. -2 or 0, see
            :func:`engine.expression.wgan.detect_floor`), clip generated values there during
            training too (straight-through gradient); generated profiles are always clipped.
        time_budget_s: stop at the end of the epoch where the optimisation time (CPU seconds of
            the training process, over resumes: wall time on an idle machine, not stretched by
            other programs' load) reaches this many seconds, even before ``epochs`` (0: no
            budget); calibration, the realism report and export follow as usual.
        calibrate: after training, match the generated per-gene mean and standard deviation to
            the training samples' (within each group when ``group_scale`` found one), folded into
            the inverse standardisation (:func:`engine.expression.wgan_loop.calibrate_moments`).
        dequantize: on counts, train on log2(count + U(0, 1) + 1) (fresh uniform noise every batch)
            and generate ``floor(2^y - 1)``: generated counts are whole numbers with the real
            distribution over them (no floor clipping then).
        gamma_every: a live gamma on the held-out samples every this many epochs (0: never).
        seed, cpu_threads: random seed and torch threads.
    """

    matrix: str
    samples: str = ""
    genes: str = ""
    covariates: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    where: tuple[str, ...] = ()
    patient_column: str = "patient"
    holdout: float = 0.2
    epochs: int = 0
    steps_per_epoch: int = 50
    batch_size: int = 64
    n_critic: int = 5
    gp_lambda: float = 10.0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.9
    noise_dim: int = 64
    hidden: tuple[int, ...] = (128, 128)
    embed_dim: int = 4
    ema: float = 0.999
    floor_clip: bool = True
    group_scale: str = "auto"
    time_budget_s: float = 420.0
    calibrate: bool = True
    dequantize: bool = True
    gamma_every: int = 5
    seed: int = 0
    cpu_threads: int = 1

    def __post_init__(self) -> None:
        if not self.matrix:
            raise ConfigError("train wgan needs --matrix")
        if not 0.0 < self.holdout < 0.9:
            raise ConfigError(f"--holdout must be in (0, 0.9), got {self.holdout}")
        if self.epochs < 0:
            raise ConfigError("epochs must be >= 1 (or 0: chosen from the sample count)")
        for name in ("steps_per_epoch", "batch_size", "n_critic", "noise_dim", "embed_dim", "cpu_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError("hidden widths must be >= 1")
        if not self.lr > 0 or self.gp_lambda < 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("lr must be > 0, gp_lambda >= 0, betas in [0, 1)")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError("ema must be in [0, 1)")
        if self.time_budget_s < 0:
            raise ConfigError("time_budget_s must be >= 0")
        if self.gamma_every < 0:
            raise ConfigError("gamma_every must be >= 0")
        if len(set(self.covariates)) != len(self.covariates):
            raise ConfigError("a covariate is listed twice")
        for w in self.where:
            parse_where(w)

    def model_config(self) -> dict[str, Any]:
        return {"noise_dim": self.noise_dim, "hidden": list(self.hidden), "embed_dim": self.embed_dim}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("covariates", "categorical", "where", "hidden"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WganTrainConfig:
        return config_from_dict(cls, d, "WGAN", _TUPLE_FIELDS)


_TUPLE_FIELDS = {"covariates": str, "categorical": str, "where": str, "hidden": int}


#: Epochs chosen by :func:`auto_epochs` (``epochs`` 0): small cohorts, cohorts of several hundred.
AUTO_EPOCHS = (60, 120)
AUTO_EPOCHS_LARGE = 200  # training samples from which the longer schedule is used


def auto_epochs(n_train: int) -> int:
    """The default training length: 60 epochs under 200 training samples, 120 from 200 on (a
    bigger cohort, often of several groups, keeps improving longer; the time budget caps it)."""
    return AUTO_EPOCHS[1] if n_train >= AUTO_EPOCHS_LARGE else AUTO_EPOCHS[0]


def parse_where(text: str) -> tuple[str, list[str]]:
    """``COL=VALUE`` or ``COL=V1,V2`` -> ``(COL, [values])``.

    Raises:
        ConfigError: malformed filter.
    """
    col, sep, rest = text.partition("=")
    values = [v.strip() for v in rest.split(",") if v.strip()]
    if not sep or not col.strip() or not values:
        raise ConfigError(f"--where must look like COLUMN=VALUE, got {text!r}")
    return col.strip(), values


def load_wgan_config(run: Path) -> WganTrainConfig:
    """The configuration of a WGAN run folder.

    Raises:
        RunFolderError / ConfigError: not a run folder, or not a WGAN run.
    """
    return load_kind_config(run, RUN_KIND, WganTrainConfig, "WGAN", _TUPLE_FIELDS)


# -- data ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class WganData:
    """The training subset: values (samples x genes, log scale), covariate table, split."""

    values: np.ndarray
    samples: list[str]
    genes: list[str]
    covariates: pd.DataFrame
    train_idx: np.ndarray
    heldout_idx: np.ndarray
    notes: list[str]
    #: how the reader put the matrix on a log scale (:func:`engine.expression.matrix.value_transform`)
    transform: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})


def match_genes(have: list[str], wanted: list[str]) -> tuple[list[int], list[str]]:
    """Positions in ``have`` of the ``wanted`` genes, matched exactly, then without an Ensembl
    version / ``|ENTREZ`` part, then ignoring case; ``(positions, absent)``."""
    from engine.expression.matrix import clean_gene_id

    exact = {g: i for i, g in enumerate(have)}
    loose: dict[str, int] = {}
    for i, g in enumerate(have):
        loose.setdefault(clean_gene_id(g).upper(), i)
    cols: list[int] = []
    absent: list[str] = []
    for g in wanted:
        i = exact.get(g, loose.get(clean_gene_id(g).upper()))
        if i is None:
            absent.append(g)
        else:
            cols.append(i)
    return cols, absent


def load_subset(cfg: WganTrainConfig) -> tuple[np.ndarray, list[str], list[str], pd.DataFrame, list[str]]:
    """Read the matrix, apply ``--where`` and the gene list; ``(values, samples, genes, table, notes)``;
    ``notes[0]`` is the reader's scale report (how values were put on a log scale).

    Raises:
        DatasetError / ConfigError: unreadable input, unknown columns, genes absent, no sample left.
    """
    from engine.expression.deg import read_gene_list
    from engine.expression.matrix import read_matrix

    m = read_matrix(cfg.matrix, cfg.samples or None)
    notes: list[str] = [str(m.report.get("scale", ""))]
    keep = np.ones(len(m.samples), dtype=bool)
    for w in cfg.where:
        col, values = parse_where(w)
        keep &= np.isin(m.labels(col), values)
        if not keep.any():
            raise DatasetError(f"no sample left after --where {w}")
    if cfg.covariates and m.sample_table is None:
        raise ConfigError("covariates need a sample table (--samples) or annotation columns in the matrix")
    if cfg.genes:
        wanted = list(dict.fromkeys(read_gene_list(cfg.genes)))
        cols, absent = match_genes(m.genes, wanted)
        if absent and len(absent) <= MAX_ABSENT_GENES * len(wanted) and len(cols) >= 3:
            # a list made on another platform: a few of its genes are missing here
            notes.append(f"{len(absent)} of {len(wanted)} listed genes are not in the matrix and were left out "
                         f"(e.g. {', '.join(absent[:5])})")
        elif absent:
            raise DatasetError(
                f"{len(absent)} of {len(wanted)} listed genes are not in the matrix (e.g. {', '.join(absent[:5])}; "
                f"matrix genes e.g. {', '.join(m.genes[:3])})"
            )
        cols = list(dict.fromkeys(cols))
    else:
        if len(m.genes) > MAX_GENES_WITHOUT_LIST:
            raise ConfigError(
                f"the matrix has {len(m.genes)} genes; choose at most {MAX_GENES_WITHOUT_LIST} with --genes "
                "(e.g. genes.txt of 'metascope expression deg')"
            )
        cols = list(range(len(m.genes)))
    sub = m.subset(samples=np.flatnonzero(keep), genes=cols)
    table = sub.sample_table if sub.sample_table is not None else pd.DataFrame(index=sub.samples)
    return sub.values.astype(np.float32), sub.samples, sub.genes, table, notes


def holdout_split(
    table: pd.DataFrame, samples: list[str], fraction: float, seed: int, patient_column: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """Seeded split into training and held-out indices; by patient when that column exists."""
    rng = np.random.default_rng(seed)
    n = len(samples)
    if patient_column and patient_column in table.columns:
        groups = table[patient_column].reindex(samples).astype(str).to_numpy()
        groups = np.where(pd.isna(table[patient_column].reindex(samples)).to_numpy(), np.array(samples), groups)
        unique = np.array(sorted(set(groups.tolist())))
        held = set(rng.permutation(unique)[: max(1, int(round(fraction * len(unique))))].tolist())
        mask = np.array([g in held for g in groups])
        how = f"by {patient_column}"
    else:
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: max(1, int(round(fraction * n)))]] = True
        how = "by sample"
    return np.flatnonzero(~mask), np.flatnonzero(mask), how


def prepare_data(cfg: WganTrainConfig, run: Path, resume: bool) -> tuple[WganData, dict[str, Any]]:
    """Load the subset and make (or, resuming, reload) the held-out split in ``split.json``."""
    values, samples, genes, table, notes = load_subset(cfg)
    split_path = run / SPLIT_NAME
    if resume and split_path.is_file():
        split = json.loads(split_path.read_text(encoding="utf-8"))
        pos = {s: i for i, s in enumerate(samples)}
        if any(s not in pos for s in split["train"] + split["heldout"]):
            raise DatasetError("the matrix no longer holds the samples this run was started with")
        train_idx = np.array([pos[s] for s in split["train"]], dtype=int)
        held_idx = np.array([pos[s] for s in split["heldout"]], dtype=int)
    else:
        train_idx, held_idx, how = holdout_split(table, samples, cfg.holdout, cfg.seed, cfg.patient_column)
        split = {
            "how": how,
            "train": [samples[i] for i in train_idx],
            "heldout": [samples[i] for i in held_idx],
            "genes": genes,
        }
    if len(train_idx) < 8 or len(held_idx) < 2:
        raise DatasetError(
            f"{len(samples)} samples are too few to train a generator and hold some out "
            f"({len(train_idx)} training, {len(held_idx)} held out); need at least 10"
        )
    from engine.expression.wgan import check_training_values

    check_training_values(values, genes)
    absent = [c for c in cfg.covariates if c not in table.columns]
    if absent:
        raise DatasetError(
            f"covariate(s) {', '.join(absent)} not a column of the sample table (columns: {', '.join(map(str, table.columns))})"
        )
    covs = table.reindex(samples)[list(cfg.covariates)] if cfg.covariates else pd.DataFrame(index=samples)
    from engine.expression.matrix import value_transform

    data = WganData(values, samples, genes, covs, train_idx, held_idx, notes, value_transform(notes[0]))
    return data, split


# -- training ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WganResult:
    """What :func:`train_wgan` returns: the run folder, realism metrics and the package path."""

    run_dir: Path
    metrics: dict[str, Any]
    model_path: Path | None


def train_wgan(
    cfg: WganTrainConfig | None,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    export: bool = True,
) -> WganResult:
    """Train the conditional WGAN-GP; see the module docstring for the run folder.

    Args:
        cfg: the configuration (ignored when resuming: the run's saved config is used).
        run_dir: run folder; must be empty or absent for a new run.
        resume: continue an interrupted run from its last checkpoint.
        progress: ``ProgressEvent("train", epoch, epochs, ...)`` per epoch.
        cancel: checked every step; a ``STOP`` file in the run folder works the same way.
        export: write ``RUN_DIR/model.onnx`` at the end.

    Raises:
        DatasetError / ConfigError: bad input; RunFolderError: folder used or still running;
        Cancelled: stopped (checkpoint kept, resume with ``resume=True``).
    """
    run = Path(run_dir)
    if resume:
        if is_running(run):
            raise RunFolderError(f"{run} is being trained by another process")
        cfg = load_wgan_config(run)
        ensure_writable_dir(run)
    else:
        if cfg is None:
            raise ConfigError("a new WGAN run needs a configuration")
        prepare_new_run(run)
    with run_lock(run):  # no second process trains into this folder meanwhile
        return _train_locked(cfg, run, resume, progress, cancel, export)


def _train_locked(
    cfg: WganTrainConfig,
    run: Path,
    resume: bool,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    export: bool,
) -> WganResult:
    """:func:`train_wgan` once the run folder is prepared and locked."""
    from engine.expression.wgan_loop import WganLoop

    log = EventLog(run)
    write_state(run, "running", epoch=0, epochs=cfg.epochs)
    with recorded_outcome(log, run):
        data, split = prepare_data(cfg, run, resume)
        if cfg.epochs == 0:  # saved resolved in config.json, so a resume trains to the same length
            cfg = replace(cfg, epochs=auto_epochs(len(data.train_idx)))
        if not (resume and (run / SPLIT_NAME).is_file()):
            atomic_write_json(run / CONFIG_NAME, {"kind": RUN_KIND, "config": cfg.to_dict()})
        loop = WganLoop(cfg, data, run, log)
        split["covariate_spec"] = loop.spec.to_dict()
        split["train_covariates"] = training_rows(data)
        split["value_transform"] = loop.transform
        atomic_write_json(run / SPLIT_NAME, split)
        loop.train(progress, cancel)
        loop.calibrate()
        metrics = loop.final_realism()
        model_path = None
        if export:
            from engine.expression.wgan_export import export_run

            model_path = export_run(run, run / "model.onnx")
        log.write("finished", metrics={k: metrics.get(k) for k in ("gamma", "c2st_auc")})
        write_state(run, "finished", epoch=loop.last_epoch, epochs=cfg.epochs, message=_summary(metrics))
        return WganResult(run, metrics, model_path)


def training_rows(data: WganData, limit: int = 2000) -> list[dict[str, Any]]:
    """Covariate values of (at most ``limit``, seeded sample of) the training samples, JSON-ready:
    the default covariate distribution of ``expression generate``."""
    rows = data.covariates.iloc[data.train_idx]
    if len(rows) > limit:
        rows = rows.iloc[np.sort(np.random.default_rng(0).choice(len(rows), limit, replace=False))]
    out = []
    for rec in rows.to_dict(orient="records"):
        out.append({str(k): (None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)) for k, v in rec.items()})
    return out


def _summary(m: dict[str, Any]) -> str:
    from engine.expression.realism import summary_line

    return summary_line(m)


def finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None

