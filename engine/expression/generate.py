"""Synthetic expression profiles from an exported generator, with onnxruntime only (no torch).

Covariates per profile come from, in order of precedence: a table (one row per profile, cycled
to ``n``), fixed values (``--set sex=female,age=60``) over rows drawn from the training
distribution stored in the package, or the training distribution alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DatasetError, ModelPackageError


@dataclass(slots=True)
class Synthetic:
    """Generated profiles: ``values`` (n x genes, on the training matrix's scale: log values stay
    log, counts / linear values are written back as such), ids, genes, covariates, notes."""

    values: np.ndarray
    samples: list[str]
    genes: list[str]
    covariates: pd.DataFrame
    notes: list[str]


def resolve_model(path: str | os.PathLike[str]) -> Path:
    """A model package path from ``RUN_DIR`` (its ``model.onnx``) or ``MODEL.onnx``.

    Raises:
        ModelPackageError: nothing usable there.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "model.onnx").is_file():
            return p / "model.onnx"
        raise ModelPackageError(
            f"{p} has no model.onnx (training not finished? export with: metascope export {p} --out MODEL.onnx)"
        )
    if not p.is_file():
        raise ModelPackageError(f"model not found: {p}")
    return p


def parse_set(text: str) -> dict[str, str]:
    """``sex=female,age=60`` -> ``{"sex": "female", "age": "60"}``.

    Raises:
        ConfigError: malformed text.
    """
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs NAME=VALUE pairs separated by commas, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def covariate_rows(
    extra: dict[str, Any],
    n: int | None,
    table: pd.DataFrame | None,
    fixed: dict[str, str],
    seed: int,
) -> tuple[pd.DataFrame, list[str]]:
    """The covariate rows of the profiles to generate (see the module docstring)."""
    from engine.expression.wgan import CovariateSpec

    spec = CovariateSpec.from_dict(extra.get("covariates", {}))
    names = spec.names
    notes: list[str] = []
    unknown = sorted(set(fixed) - set(names))
    if unknown:
        raise ConfigError(
            f"--set names covariates the model does not use: {', '.join(unknown)} (model covariates: {', '.join(names) or 'none'})"
        )
    rng = np.random.default_rng(seed)
    if table is not None:
        if len(table) == 0:
            raise DatasetError("the covariate table has no rows")
        absent = [c for c in names if c not in table.columns]
        if absent:
            notes.append(f"covariate table lacks {', '.join(absent)}: treated as missing")
        count = n or len(table)
        rows = table.reindex(columns=names).iloc[np.arange(count) % len(table)].reset_index(drop=True)
    else:
        if not n:
            raise ConfigError("give --n (number of profiles) or a --covariates table")
        pool = pd.DataFrame(extra.get("training_covariates") or [], columns=names)
        if len(pool) and names:
            rows = pool.iloc[rng.integers(0, len(pool), size=n)].reset_index(drop=True)
        else:
            rows = pd.DataFrame(index=range(n), columns=names)
    for key, value in fixed.items():
        rows[key] = value
    return rows.astype(object), notes


def generate(
    model: str | os.PathLike[str],
    n: int | None = None,
    covariates: pd.DataFrame | None = None,
    fixed: dict[str, str] | None = None,
    seed: int = 0,
    batch: int = 4096,
) -> Synthetic:
    """``n`` synthetic profiles from a generator package (``RUN_DIR`` or ``MODEL.onnx``).

    Raises:
        ModelPackageError: not a generator package; ConfigError / DatasetError: bad covariates.
    """
    import onnxruntime as ort

    from engine.expression.wgan import CovariateSpec
    from engine.modelpkg import read_metadata

    path = resolve_model(model)
    meta = read_metadata(path)
    if meta.task != "expression_generator":
        raise ModelPackageError(f"{path.name} is a {meta.task} model, not an expression generator")
    if n is not None and n < 1:
        raise ConfigError("--n must be >= 1")
    extra = meta.extra
    spec = CovariateSpec.from_dict(extra.get("covariates", {}))
    rows, notes = covariate_rows(extra, n, covariates, fixed or {}, seed)
    numeric, codes, enc_notes = spec.encode(rows)
    notes += enc_notes
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = list(extra.get("inputs") or [i.name for i in sess.get_inputs()])
    rng = np.random.default_rng(seed)
    total = len(rows)
    out = np.empty((total, len(extra["genes"])), dtype=np.float32)
    for start in range(0, total, batch):
        stop = min(total, start + batch)
        feed = {"noise": rng.standard_normal((stop - start, int(extra["noise_dim"]))).astype(np.float32)}
        if "numeric" in inputs:
            feed["numeric"] = numeric[start:stop]
        if "codes" in inputs:
            feed["codes"] = codes[start:stop]
        out[start:stop] = sess.run(["expression"], feed)[0]
    from engine.expression.matrix import inverse_value_transform

    # back on the training matrix's own scale (e.g. counts or TPM when it was read as such)
    out = inverse_value_transform(out, extra.get("value_transform"))
    width = max(4, len(str(total)))
    samples = [f"synthetic_{i + 1:0{width}d}" for i in range(total)]
    rows.index = pd.Index(samples, name="sample")
    return Synthetic(out, samples, list(extra["genes"]), rows, notes)


def read_covariate_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A TSV/CSV of covariate values, one row per profile (a ``sample`` id column is allowed).

    Raises:
        DatasetError: missing or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"covariate table not found: {p}")
    try:
        sep = "," if p.suffix.lower() == ".csv" else "\t"
        return pd.read_csv(p, sep=sep, dtype=str, keep_default_na=True)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read covariate table {p}: {exc}") from exc


def write_synthetic(result: Synthetic, out: str | os.PathLike[str]) -> Path:
    """Write the profiles as a samples x genes TSV with the covariate columns first."""
    from engine.expression.matrix import write_matrix

    write_matrix(out, result.values, result.samples, result.genes, extra_columns=result.covariates)
    return Path(out)
