"""Evaluation pieces of the PCam starter model build (issue 14), used by ``benchmarks/train_starter.py``.

- :func:`score_patches`: a model package's calibrated positive-class probabilities on a labelled
  patch folder, plain or with 8-fold TTA (the exact ONNX package the app ships).
- :func:`patch_metrics`: AUC with a bootstrap 95 % CI, and sensitivity / specificity at 0.5 and at
  the package's operating threshold.
- :func:`negative_slide` / :func:`slide_run`: a tumour-free slide tiled from real negative
  PatchCamelyon patches, and the fraction of its tiles a model flags at its operating threshold,
  with the heatmap speed (tiles/s).

Run on its own to compare two packages side by side::

    .venv/bin/python benchmarks/starter_eval.py NEW.onnx [OLD.onnx]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PCAM = ROOT.parent / "shared" / "data" / "pcam"
PATCH_MPP = 0.972


def load_package(path: str | os.PathLike[str]) -> Any:
    from engine.infer.session import load_model

    return load_model(path, "cpu")


def operating_threshold(session: Any) -> float:
    from engine.infer.lesions import operating_threshold as op

    return op(session.metadata)


def score_patches(model: str | os.PathLike[str], data: Path, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(y_pos, score)``: positive labels and calibrated positive-class probabilities."""
    from engine.data import open_dataset
    from engine.train.evaluate import _label_map, predict_probabilities

    session = load_package(model)
    meta = session.metadata
    ds = open_dataset(data, fmt="folders", mpp=PATCH_MPP, labelled=True)
    mapping, _ = _label_map(tuple(ds.class_names), tuple(meta.class_names))
    y = mapping[np.asarray(ds.labels, dtype=np.int64)]
    probs = predict_probabilities(session, ds, tta=tta)
    return y == int(meta.positive_class), probs[:, int(meta.positive_class)].astype(np.float64)


def _rates(y_pos: np.ndarray, score: np.ndarray, thr: float) -> dict[str, float]:
    pred = score >= thr
    return {
        "threshold": round(float(thr), 6),
        "sensitivity": float(pred[y_pos].mean()),
        "specificity": float((~pred[~y_pos]).mean()),
        "accuracy": float((pred == y_pos).mean()),
    }


def patch_metrics(y_pos: np.ndarray, score: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUC, bootstrap 95 % CI (patches resampled), rates at 0.5 and at ``threshold``."""
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y_pos, score))
    rng = np.random.default_rng(seed)
    boots = []
    n = y_pos.size
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if y_pos[i].all() or not y_pos[i].any():
            continue
        boots.append(roc_auc_score(y_pos[i], score[i]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"auc": auc, "auc_ci95": [float(lo), float(hi)], "n": int(n), "n_pos": int(y_pos.sum()),
            "at_0.5": _rates(y_pos, score, 0.5), "at_operating": _rates(y_pos, score, threshold)}


def negative_slide(out: Path, grid: int = 30, seed: int = 100) -> Path:
    """A tumour-free slide of ``grid`` x ``grid`` real negative patches from ``pcam/valid/0``
    (96 px at 0.972 um/px laid 1:1 on white, so one 96 px model tile is one patch)."""
    from benchmarks.froc_slides import build_slide

    build_slide(out, "negative", [], grid, seed=seed)
    return out / "negative.tif"


def slide_run(model: str | os.PathLike[str], slide: Path, repeats: int = 2) -> dict[str, Any]:
    """Heatmap of ``slide``: flagged fraction at the package's operating threshold (and at 0.5),
    and the median inference speed over ``repeats`` runs."""
    from engine.infer.pipeline import InferenceConfig, compute_heatmap

    session = load_package(model)
    thr = operating_threshold(session)
    rates, walls = [], []
    res = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = compute_heatmap(slide, session, InferenceConfig(device="cpu", read_workers=1))
        walls.append(time.perf_counter() - t0)
        rates.append(float(res.timing["tiles_per_s"]))
    p = res.probabilities[:, res.positive_class]
    return {
        "tiles": int(p.size), "operating_threshold": round(thr, 6),
        "flagged_at_operating": float((p >= thr).mean()), "flagged_at_0.5": float((p >= 0.5).mean()),
        "tiles_per_s": float(np.median(rates)), "wall_s": float(np.median(walls)),
        "input": f"{session.metadata.input_size} px at {session.metadata.input_mpp:.3f} um/px",
    }


def main() -> int:
    models = [Path(a) for a in sys.argv[1:]]
    if not models:
        raise SystemExit(__doc__)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="starter-slide-") as tmp:
        slide = negative_slide(Path(tmp))
        for m in models:
            thr = operating_threshold(load_package(m))
            out[m.name] = {
                "plain": patch_metrics(*score_patches(m, PCAM / "valid"), thr),
                "slide": slide_run(m, slide),
            }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
