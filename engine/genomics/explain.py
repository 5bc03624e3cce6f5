"""Per-sample explanations: which features moved a sample's score.

- Boosted trees: occlusion against a reference sample (training medians, most frequent
  category): contribution = logit(sample) - logit(sample with that one feature set to the
  reference). Exact for the model, one prediction per feature and sample.
- Networks: integrated gradients (32 steps) from the same reference, on the network's encoded
  input, summed per feature; contributions add up to logit(sample) - logit(reference).

A run writes the top features of every evaluated sample to ``explanations.csv``
(``sample,feature,value,contribution,rank,method``); :func:`explain_sample` reads one sample's
rows, :func:`explain_with_model` computes them for any sample with a model package (onnxruntime,
occlusion), e.g. for a study the run has not seen.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError
from engine.fileio import atomic_write_text

COLUMNS = ("sample", "feature", "value", "contribution", "rank", "method")
IG_STEPS = 32


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def occlusion(predict: Any, num: np.ndarray, codes: np.ndarray, ref_num: np.ndarray, ref_codes: np.ndarray,
              names: list[str]) -> np.ndarray:
    """``(N, Dn + Kc)`` logit contributions of each numeric column and each categorical column.

    Args:
        predict: ``(num, codes) -> positive-class probability``.
    """
    base = _logit(predict(num, codes))
    out = np.zeros((len(num), num.shape[1] + codes.shape[1]))
    for j in range(num.shape[1]):
        col = num[:, j]
        same = (col == ref_num[j]) | (np.isnan(col) & np.isnan(ref_num[j]))
        if same.all():
            continue
        rows = np.nonzero(~same)[0]
        n2 = num[rows].copy()
        n2[:, j] = ref_num[j]
        out[rows, j] = base[rows] - _logit(predict(n2, codes[rows]))
    for j in range(codes.shape[1]):
        rows = np.nonzero(codes[:, j] != ref_codes[j])[0]
        if not len(rows):
            continue
        c2 = codes[rows].copy()
        c2[:, j] = ref_codes[j]
        out[rows, num.shape[1] + j] = base[rows] - _logit(predict(num[rows], c2))
    return out


def integrated_gradients(net: Any, num: np.ndarray, codes: np.ndarray, ref_num: np.ndarray, ref_codes: np.ndarray,
                         names: list[str]) -> np.ndarray:
    """``(N, len(names))`` integrated-gradient attributions of the logit difference, per feature."""
    import torch

    net.eval()
    blocks = net.blocks()
    col_of = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(num), len(names)))
    with torch.no_grad():
        ref = net.encode(torch.from_numpy(ref_num[None, :].astype(np.float32)), torch.from_numpy(ref_codes[None, :]))
    for s in range(0, len(num), 256):
        with torch.no_grad():
            h = net.encode(torch.from_numpy(num[s:s + 256]), torch.from_numpy(codes[s:s + 256]))
        delta = h - ref
        grads = torch.zeros_like(h)
        for a in (np.arange(IG_STEPS) + 0.5) / IG_STEPS:
            z = (ref + float(a) * delta).requires_grad_(True)
            logits = net.head(z)
            (logits[:, 1] - logits[:, 0]).sum().backward()
            grads += z.grad
        attr = (delta * grads / IG_STEPS).numpy()
        pos = 0
        for name, width in blocks:
            out[s:s + 256, col_of[name]] += attr[:, pos:pos + width].sum(axis=1)
            pos += width
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "missing" if not np.isfinite(v) else f"{float(v):.6g}"
    return str(v)


def top_rows(samples: list[str], names: list[str], values: Any, contrib: np.ndarray, top: int, method: str) -> list[list[Any]]:
    """CSV rows of the ``top`` largest |contribution| features per sample."""
    rows = []
    for i, s in enumerate(samples):
        order = np.argsort(-np.abs(contrib[i]), kind="stable")[:top]
        for r, j in enumerate(order, start=1):
            if contrib[i, j] == 0:
                break
            rows.append([s, names[j], _fmt(values.iloc[i][names[j]]), f"{contrib[i, j]:.6f}", r, method])
    return rows


def write_rows(path: Path, rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def explain_fold(trainer: Any, rows: np.ndarray, path: Path) -> None:
    """Explain the samples ``rows`` of a fold with its trained model (see the module docstring)."""
    pre = trainer.pre
    names = pre.numeric + pre.categorical
    ref_num = np.asarray(pre.median, dtype=np.float32)
    ref_codes = np.array([pre.modes.get(c, 0) for c in pre.categorical], dtype=np.int64)
    num, codes = trainer.num[rows], trainer.codes[rows]
    if trainer.cfg.model == "gbm":
        contrib = occlusion(trainer.predict_rows, num, codes, ref_num, ref_codes, names)
        method = "occlusion"
    else:
        contrib = integrated_gradients(trainer.model, num, codes, ref_num, ref_codes, names)
        method = "integrated_gradients"
    samples = [trainer.data.samples[i] for i in rows]
    values = trainer.data.table.frame.iloc[rows]
    write_rows(path, top_rows(samples, names, values, contrib, trainer.cfg.explain_top, method))


def merge_explanations(run: Path, folds: list[int]) -> None:
    """Join the folds' explanation files into ``explanations.csv``."""
    rows: list[list[str]] = []
    for k in folds:
        p = run / f"fold_{k}_explanations.csv"
        if p.is_file():
            with open(p, encoding="utf-8", newline="") as fh:
                rows += list(csv.reader(fh))[1:]
    write_rows(run / "explanations.csv", rows)


def explain_sample(run_dir: str | os.PathLike[str], sample: str) -> list[dict[str, Any]]:
    """The explanation rows of one sample of a finished run (empty when it was not evaluated)."""
    p = Path(run_dir) / "explanations.csv"
    if not p.is_file():
        raise DatasetError(f"{run_dir} has no explanations.csv (training not finished?)")
    with open(p, encoding="utf-8", newline="") as fh:
        return [
            {**r, "contribution": float(r["contribution"]), "rank": int(r["rank"])}
            for r in csv.DictReader(fh) if r["sample"] == sample
        ]


def explain_with_model(model_path: str | os.PathLike[str], study: str | os.PathLike[str], sample: str,
                       top: int = 10) -> list[dict[str, Any]]:
    """Occlusion explanation of one sample of a study with a model package (onnxruntime only).

    Raises:
        DatasetError: the study does not list ``sample``; ModelPackageError: not a genomics model.
    """
    from engine.genomics.predict import load_classifier, study_features

    clf = load_classifier(model_path)
    frame = study_features(clf, study)
    if sample not in frame.index:
        raise DatasetError(f"sample {sample} is not in the study {study}")
    one = frame.loc[[sample]]
    num, codes = clf.pre.transform(one)
    names = clf.pre.numeric + clf.pre.categorical
    ref_num = np.asarray(clf.pre.median, dtype=np.float32)
    ref_codes = np.array([clf.pre.modes.get(c, 0) for c in clf.pre.categorical], dtype=np.int64)
    contrib = occlusion(lambda n, c: clf.run(n, c)[:, 1], num, codes, ref_num, ref_codes, names)
    rows = top_rows([sample], names, one, contrib, top, "occlusion")
    return [dict(zip(COLUMNS, r, strict=True)) | {"contribution": float(r[3])} for r in rows]
