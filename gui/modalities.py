"""The genomics and expression modalities as the app sees them: kinds, labels, files (Qt-free).

A dataset, a run and a model each have a *kind*; this module names them for the views and reads
the files the engines write (``predictions.csv``, ``explanations.csv``, ``metrics.json``, PNGs),
and builds the exact ``metascope`` command lines of PRODUCT.md. Nothing here imports Qt or the
engines' internals: the views run these commands through :mod:`gui.cli_job`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DatasetError

#: Dataset kinds (``kind`` of a Datasets-view entry; entries without one are patch datasets).
PATCHES = "patches"
GENOMICS_STUDY = "genomics_study"
EXPRESSION_MATRIX = "expression_matrix"
DATASET_KIND_LABELS = {
    PATCHES: "Patch images",
    GENOMICS_STUDY: "Mutation study (cBioPortal)",
    EXPRESSION_MATRIX: "Expression matrix",
}

#: Run kinds (``config.json`` "kind") -> (``metascope train`` sub-command, label, dataset kind).
RUN_KINDS: dict[str, tuple[str, str, str]] = {
    "genomics": ("genomics", "Mutations: primary vs metastasis", GENOMICS_STUDY),
    "siamese": ("siamese", "Expression: one-shot tumour type (Siamese)", EXPRESSION_MATRIX),
    "wgan": ("wgan", "Expression: synthetic profiles (WGAN-GP)", EXPRESSION_MATRIX),
}

#: Model package tasks of the new modalities -> label in the model library.
MODEL_TASK_LABELS = {
    "genomics_classifier": "Mutations: primary vs metastasis",
    "expression_embedding": "Expression: one-shot embedding",
    "expression_generator": "Expression: generator",
}

PREDICTION_COLUMNS = ("sample", "truth", "predicted", "score", "group", "correct")
GENOMICS_MODELS = (  # first = the wizard's default (best in the 5-fold CV on MSK-MET, benchmarks/RESULTS.md)
    ("gbm", "Gradient-boosted trees (histogram GBM, native categories)"),
    ("dense", "Dense network (clinical + mutation features)"),
    ("dense_embed", "Dense network + learned tumour-subtype embedding"),
)


def dataset_kind(item: Mapping[str, Any]) -> str:
    return str(item.get("kind") or PATCHES)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_kind(run_dir: str | os.PathLike[str]) -> str:
    """``config.json`` "kind" of a run folder (empty for patch runs, which do not write one)."""
    return str(read_json(Path(run_dir) / "config.json").get("kind") or "")


def is_modality_run(run_dir: str | os.PathLike[str]) -> bool:
    return run_kind(run_dir) in RUN_KINDS


def pngs(folder: str | os.PathLike[str] | None) -> list[Path]:
    """The PNG plots a command wrote into ``folder`` (sorted by name)."""
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(Path(folder).glob("*.png"))


# -- samples ---------------------------------------------------------------------------------------
def _float(text: Any) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


@dataclass(frozen=True, slots=True)
class SampleRow:
    """One row of a ``predictions.csv``: a sample's truth, prediction and score."""

    sample: str
    truth: str
    predicted: str
    score: float | None
    group: str
    correct: bool
    extra: dict[str, str] = field(default_factory=dict)


def _sniff_dialect(head: str) -> str:
    return "\t" if head.count("\t") > head.count(",") else ","


def read_predictions(path: str | os.PathLike[str]) -> list[SampleRow]:
    """Rows of a ``predictions.csv`` (at least ``sample,truth,predicted,score,group,correct``).

    Raises:
        DatasetError: the file is missing or lacks one of the required columns.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read {p}: {exc.strerror or exc}") from exc
    reader = csv.DictReader(text.splitlines(), delimiter=_sniff_dialect(text.split("\n", 1)[0]))
    columns = [c.strip() for c in reader.fieldnames or []]
    # ``genomics predict`` on a study without labels writes no truth: the samples are still listed
    missing = [c for c in ("sample", "predicted") if c not in columns]
    if missing:
        raise DatasetError(f"{p.name} has no column {missing[0]!r} (needs {', '.join(PREDICTION_COLUMNS)})")
    rows = []
    for raw in reader:
        r = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        truth, predicted = r.get("truth", ""), r.get("predicted", "")
        correct_text = r.get("correct", "")
        correct = correct_text.lower() in ("1", "1.0", "true", "yes") if correct_text else truth in ("", predicted)
        extra = {k: v for k, v in r.items() if k not in PREDICTION_COLUMNS}
        rows.append(SampleRow(r.get("sample", ""), truth, predicted, _float(r.get("score")), r.get("group", ""),
                              correct, extra))
    return rows


@dataclass(frozen=True, slots=True)
class Contribution:
    """How much one feature (or support sample) moved a sample's result."""

    feature: str
    value: str
    contribution: float
    method: str = ""


def read_explanations(path: str | os.PathLike[str]) -> dict[str, list[Contribution]]:
    """``explanations.csv`` (``sample,feature,value,contribution``) by sample, largest |effect| first.

    One-shot similarity tables are read the same way: ``query,support,type,similarity`` (or
    ``sample,...``) become contributions named ``support (type)``.
    """
    p = Path(path)
    if not p.is_file():
        return {}
    text = p.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(text.splitlines(), delimiter=_sniff_dialect(text.split("\n", 1)[0]))
    out: dict[str, list[Contribution]] = {}
    for raw in reader:
        r = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        sample = r.get("sample") or r.get("query") or ""
        if "contribution" in r:
            c = Contribution(r.get("feature", ""), r.get("value", ""), _float(r.get("contribution")) or 0.0,
                             r.get("method", ""))
        elif "similarity" in r:
            kind = r.get("support_type") or r.get("type") or ""
            name = r.get("support", "") + (f" ({kind})" if kind else "")
            c = Contribution(name, kind, _float(r.get("similarity")) or 0.0)
        else:
            continue
        out.setdefault(sample, []).append(c)
    for items in out.values():
        items.sort(key=lambda c: abs(c.contribution), reverse=True)
    return out


EXPLANATION_FILES = ("explanations.csv", "similarities.csv")


def explanation_file(predictions: str | os.PathLike[str]) -> Path | None:
    """The per-sample explanation file next to a ``predictions.csv``, if the engine wrote one."""
    folder = Path(predictions).parent
    return next((folder / n for n in EXPLANATION_FILES if (folder / n).is_file()), None)


def groups_of(rows: Iterable[SampleRow]) -> list[str]:
    return sorted({r.group for r in rows if r.group})


def filter_rows(rows: Sequence[SampleRow], group: str | None = None, text: str = "",
                errors_first: bool = False) -> list[SampleRow]:
    """Rows of ``group`` (``None``: all) whose sample, truth or prediction contains ``text``;
    wrong predictions first (each part ordered by how confident the model was) when asked."""
    needle = text.strip().lower()
    out = [
        r for r in rows
        if (group is None or r.group == group)
        and (not needle or needle in r.sample.lower() or needle in r.truth.lower() or needle in r.predicted.lower())
    ]
    if errors_first:
        out.sort(key=lambda r: (r.correct, -(r.score if r.score is not None else 0.0)))
    return out


def accuracy(rows: Sequence[SampleRow]) -> float | None:
    return sum(r.correct for r in rows) / len(rows) if rows else None


# -- command lines ---------------------------------------------------------------------------------
def _csv_arg(values: Iterable[str]) -> str:
    return ",".join(v.strip() for v in values if v.strip())


def genomics_train_args(study: str, run_dir: str | os.PathLike[str], model: str = "gbm", folds: int = 0,
                        epochs: int = 0, extra: Sequence[str] = ()) -> list[str]:
    args = ["train", "genomics", "--study", str(study), "--out", str(run_dir), "--model", model]
    if folds and folds > 1:
        args += ["--folds", str(folds)]
    if epochs and model != "gbm":
        args += ["--epochs", str(epochs)]
    return args + list(extra)


def siamese_train_args(matrix: str, samples: str, label_column: str, run_dir: str | os.PathLike[str],
                       test_types: Sequence[str] = (), epochs: int = 0, extra: Sequence[str] = ()) -> list[str]:
    args = ["train", "siamese", "--matrix", str(matrix), "--samples", str(samples), "--label-column", label_column,
            "--out", str(run_dir)]
    if _csv_arg(test_types):
        args += ["--test-types", _csv_arg(test_types)]
    if epochs:
        args += ["--epochs", str(epochs)]
    return args + list(extra)


def wgan_train_args(matrix: str, samples: str, genes: str, covariates: Sequence[str], run_dir: str | os.PathLike[str],
                    where: str = "", epochs: int = 0) -> list[str]:
    args = ["train", "wgan", "--matrix", str(matrix), "--samples", str(samples), "--genes", str(genes)]
    if _csv_arg(covariates):
        args += ["--covariates", _csv_arg(covariates)]
    args += ["--out", str(run_dir)]
    if where.strip():
        args += ["--where", where.strip()]
    if epochs:
        args += ["--epochs", str(epochs)]
    return args


def deg_args(matrix: str, samples: str, group: str, out: str | os.PathLike[str]) -> list[str]:
    return ["expression", "deg", "--matrix", str(matrix), "--samples", str(samples), "--group", group, "--out", str(out)]


#: Matrix layouts a user can state instead of the detected one (``--orientation``).
ORIENTATIONS = (("auto", "Detect layout"), ("samples_x_genes", "Samples × genes"), ("genes_x_samples", "Genes × samples"))


def matrix_options(item: Mapping[str, Any] | None, command: Sequence[str]) -> list[str]:
    """``--orientation X`` when the user stated the matrix layout and ``metascope COMMAND`` takes it."""
    orientation = str((item or {}).get("orientation") or "auto")
    if orientation == "auto":
        return []
    from gui.cli_job import supported_options

    return ["--orientation", orientation] if "--orientation" in supported_options(command) else []


def report_args(kind: str, path: str, out: str | os.PathLike[str], samples: str = "",
                orientation: str = "auto") -> list[str]:
    """The report command of a dataset kind (``--json``: the app reads the report from stdout)."""
    if kind == GENOMICS_STUDY:
        return ["genomics", "report", str(path), "--out", str(out), "--json"]
    if kind == EXPRESSION_MATRIX:
        extra = matrix_options({"orientation": orientation}, ["expression", "info"])
        return ["expression", "info", str(path), *(["--samples", str(samples)] if samples else []), *extra, "--json"]
    raise DatasetError(f"unknown dataset kind {kind!r}")


def deg_genes_file(deg_dir: str | os.PathLike[str]) -> Path | None:
    """The gene list a ``expression deg`` run selected (``genes.txt``), if it wrote one."""
    folder = Path(deg_dir)
    for name in ("genes.txt", "selected_genes.txt", "deg_genes.txt"):
        if (folder / name).is_file():
            return folder / name
    return None


def write_support_table(path: str | os.PathLike[str], support: Mapping[str, str]) -> Path:
    """``SUPPORT.tsv`` for ``expression classify``: one ``sample<TAB>type`` line per candidate type."""
    from engine.fileio import atomic_write_text

    lines = ["sample\ttype", *(f"{sample}\t{kind}" for kind, sample in support.items())]
    p = Path(path)
    atomic_write_text(p, "\n".join(lines) + "\n")
    return p


def read_sample_table(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a sample table (TSV or CSV; the first column is the sample id)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read {p}: {exc.strerror or exc}") from exc
    reader = csv.DictReader(text.splitlines(), delimiter=_sniff_dialect(text.split("\n", 1)[0]))
    columns = [str(c).strip() for c in reader.fieldnames or []]
    rows = [{str(k).strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    return columns, rows


def oneshot_table(metrics: Mapping[str, Any]) -> list[tuple[int, float | None, float | None, int | None]]:
    """``(N, siamese accuracy, 1-NN accuracy, trials)`` per N of a one-shot ``metrics.json``."""
    ways = metrics.get("ways") if isinstance(metrics.get("ways"), Mapping) else {}
    out = []
    for key, v in ways.items():
        try:
            n = int(key)
        except (TypeError, ValueError):
            continue
        if not isinstance(v, Mapping):
            continue
        trials = v.get("trials")
        out.append((n, _float(_point(v.get("siamese"))), _float(_point(v.get("nn1"))),
                    int(trials) if isinstance(trials, (int, float)) else None))
    return sorted(out)


def _point(value: Any) -> Any:
    """An accuracy written as a number or as ``{"accuracy"|"value": x, "ci": [...]}``."""
    if isinstance(value, Mapping):
        return value.get("accuracy", value.get("value", value.get("mean")))
    return value
