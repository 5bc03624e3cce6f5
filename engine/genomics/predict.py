"""Scoring a study with a ``genomics_classifier`` package: onnxruntime, numpy and pandas only
(no torch, no scikit-learn).

:func:`study_features` rebuilds exactly the columns the model was trained on (same genes, same
MAF summaries, clinical columns by name; absent ones are missing), :func:`evaluate_study` writes
the metrics files of :mod:`engine.genomics.metrics`, :func:`predict_study` a predictions CSV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DatasetError, ModelPackageError
from engine.genomics.encode import Preprocessor, apply_within
from engine.genomics.study import Study, load_study


@dataclass
class GenomicsClassifier:
    """A loaded model package."""

    session: Any
    meta: Any
    pre: Preprocessor
    settings: dict[str, Any]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta.class_names)

    def run(self, num: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """``(N, 2)`` probabilities."""
        out = []
        for s in range(0, max(len(num), 1), 8192):
            feed = {"numeric": np.ascontiguousarray(num[s:s + 8192], dtype=np.float32),
                    "codes": np.ascontiguousarray(codes[s:s + 8192], dtype=np.int64)}
            if not len(feed["numeric"]):
                break
            out.append(self.session.run(["probabilities"], feed)[0])
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 2))


def load_classifier(path: str | os.PathLike[str]) -> GenomicsClassifier:
    """Load and check a genomics model package.

    Raises:
        ModelPackageError: not a model package, or not a genomics classifier.
    """
    from engine.infer.session import load_model

    ms = load_model(path, device="cpu")
    meta = ms.metadata
    if meta.task != "genomics_classifier":
        raise ModelPackageError(f"{Path(path).name} is a {meta.task} model, not a genomics classifier")
    try:
        pre = Preprocessor.from_dict(meta.extra["preprocessing"])
        settings = dict(meta.extra["feature_settings"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelPackageError(f"{Path(path).name}: genomics preprocessing metadata is missing or damaged") from exc
    return GenomicsClassifier(ms.session, meta, pre, settings)


def study_features(clf: GenomicsClassifier, study: str | os.PathLike[str] | Study) -> pd.DataFrame:
    """The model's feature columns for every sample of ``study`` (absent columns left out)."""
    from engine.genomics.features import gene_indicators, mutation_summaries

    st = study if isinstance(study, Study) else load_study(study)
    s = st.samples
    frame = pd.DataFrame(index=s.index)
    for c in clf.pre.numeric:
        if c in s.columns:
            frame[c] = pd.to_numeric(s[c].replace("", np.nan), errors="coerce")
    for c in clf.pre.categorical:
        if c in s.columns:
            frame[c] = s[c].astype(str)
        elif c == "GENE_PANEL" and st.panel_of:
            frame[c] = pd.Series(st.panel_of).reindex(s.index).fillna("").astype(str)
    wants_maf = any(c.startswith(("maf_", "gene_")) for c in clf.pre.numeric)
    if wants_maf and st.mutations is not None:
        maf, _ = mutation_summaries(st)
        genes, _, _ = gene_indicators(st, genes=list(clf.settings.get("genes", [])))
        extra = pd.concat([maf, genes], axis=1)
        frame = frame.join(extra[[c for c in extra.columns if c in clf.pre.numeric and c not in frame.columns]])
    frame = apply_within(frame, clf.pre.within)  # within-tumour-type numbers, with the training statistics
    frame.attrs["study"] = st
    return frame


def score_study(clf: GenomicsClassifier, study: str | os.PathLike[str]) -> tuple[Study, pd.DataFrame, np.ndarray, list[str]]:
    """``(study, features, probabilities (N, 2), notes)`` for every sample of the study."""
    st = load_study(study)
    frame = study_features(clf, st)
    notes = []
    absent = [c for c in clf.pre.numeric + clf.pre.categorical if c not in frame.columns]
    if absent:
        notes.append(f"{len(absent)} of the model's features are absent from this study and count as missing "
                     f"(e.g. {', '.join(absent[:5])})")
    num, codes = clf.pre.transform(frame)
    return st, frame, clf.run(num, codes), notes


def _groups(clf: GenomicsClassifier, st: Study) -> list[str]:
    col = clf.settings.get("roles", {}).get("tumour_type")
    if col and col in st.samples.columns:
        return st.samples[col].astype(str).tolist()
    return [""] * st.n_samples


def evaluate_study(model: str | os.PathLike[str], study: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                   n_boot: int = 1000) -> dict[str, Any]:
    """Metrics of a model package on the labelled samples of a study (files as a run writes them).

    Raises:
        DatasetError: the study has no usable label (one class only, no label column).
    """
    from engine.genomics.leaks import make_label
    from engine.genomics.metrics import write_evaluation

    clf = load_classifier(model)
    st, _, probs, notes = score_study(clf, study)
    label = make_label(st, clf.settings.get("label_column") or "SAMPLE_TYPE", clf.settings.get("positive"))
    if tuple(label.class_names) != clf.class_names:
        raise DatasetError(f"the study's classes {label.class_names} differ from the model's {clf.class_names}")
    pos = {s: i for i, s in enumerate(st.samples.index)}
    rows = [pos[s] for s in label.y.index]
    groups = _groups(clf, st)
    return write_evaluation(
        out_dir, list(label.y.index), st.samples["PATIENT_ID"].iloc[rows].tolist(), label.y.to_numpy(),
        probs[rows], [groups[i] for i in rows], clf.class_names, title=f"{Path(model).stem} on {st.name}",
        n_boot=n_boot, extra={"model": str(model), "study": str(study), "evaluated_on": "study", "notes": notes},
    )


def predict_study(model: str | os.PathLike[str], study: str | os.PathLike[str], out_csv: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a predictions CSV for every sample (``truth`` empty where the study has no label)."""
    from engine.genomics.metrics import write_predictions

    clf = load_classifier(model)
    st, _, probs, notes = score_study(clf, study)
    col = clf.settings.get("label_column") or "SAMPLE_TYPE"
    y = np.full(st.n_samples, -1, dtype=np.int64)
    if col in st.samples.columns:
        values = st.samples[col].astype(str).str.strip()
        for k, name in enumerate(clf.class_names):
            y[(values == name).to_numpy()] = k
    out = Path(out_csv)
    write_predictions(out, list(st.samples.index), st.samples["PATIENT_ID"].tolist(), y, probs, _groups(clf, st),
                      clf.class_names)
    n_pos = int((probs[:, 1] >= 0.5).sum())
    return {"samples": st.n_samples, "predicted": {clf.class_names[1]: n_pos, clf.class_names[0]: st.n_samples - n_pos},
            "out": str(out), "notes": notes}
