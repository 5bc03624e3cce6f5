"""From a study folder to what training needs: labelled samples, patients, subgroups, features.

Shared by training, the study report and prediction, so the three see the same label, the same
dropped leak columns and the same features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.genomics.features import FeatureTable, build_features, summary
from engine.genomics.leaks import Label, detect_leaks, leak_table, make_label
from engine.genomics.study import Study, load_study


@dataclass
class Prepared:
    """Labelled samples in a fixed order with their features.

    Attributes:
        samples, patients, groups: per sample (group = tumour type).
        y: 0/1 labels; class_names: ``(negative, positive)``.
        table: the feature table restricted to these samples.
        leaks: dropped column -> reason.
        report: a JSON summary (label balance, leaks, features).
    """

    study: Study
    label: Label
    samples: list[str]
    patients: list[str]
    groups: list[str]
    y: np.ndarray
    class_names: tuple[str, str]
    table: FeatureTable
    leaks: dict[str, str]
    report: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prepare(cfg: Any, study: Study | None = None) -> Prepared:
    """Read the study of ``cfg`` (a :class:`GenomicsTrainConfig`) and build its features.

    Raises:
        DatasetError: unreadable study, label problems (one class only, no such column).
    """
    study = study or load_study(cfg.study)
    label = make_label(study, cfg.label_column, cfg.positive)
    leaks = detect_leaks(study, label, tuple(cfg.drop_columns))
    table = build_features(study, leaks, cfg.features, cfg.min_gene_freq, cfg.max_genes)
    ids = list(label.y.index)
    if cfg.max_samples and len(ids) > cfg.max_samples:
        rng = np.random.default_rng(cfg.seed)
        ids = sorted(rng.choice(ids, cfg.max_samples, replace=False).tolist())
    frame = table.frame.loc[ids]
    table = FeatureTable(frame, table.numeric, table.categorical, table.groups, table.roles, table.not_computed,
                         table.notes, table.genes, table.patients)
    y = label.y.loc[ids].to_numpy(dtype=np.int64)
    groups = table.group_values().tolist()
    patients = study.samples.loc[ids, "PATIENT_ID"].astype(str).tolist()
    notes = list(study.notes)
    if label.excluded:
        notes.append("samples without a usable label left out: " + ", ".join(f"{k} {v}" for k, v in label.excluded.items()))
    report = {
        "study": str(study.path), "layout": study.layout, "label_column": label.column,
        "class_names": list(label.class_names), "label_counts": label.counts(), "label_excluded": label.excluded,
        "samples_used": len(ids), "patients_used": len(set(patients)),
        "dropped_columns": leak_table(leaks), "features": summary(table), "notes": notes,
    }
    return Prepared(study, label, ids, patients, groups, y, label.class_names, table, leaks, report, notes)
