"""Tiny generated genomics / expression inputs for the GUI tests (shaped like the real ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_expression(folder: Path, n_per_type: int = 6, types: tuple[str, ...] = ("BRCA", "LUAD", "KIRC", "COAD"),
                     n_genes: int = 30, seed: int = 0) -> tuple[Path, Path]:
    """A samples x genes log-expression TSV and a sample table (type, age, sex, stage)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genes = [f"GENE{i}" for i in range(n_genes)]
    rows, table = [], ["sample\ttype\tage\tsex\tstage"]
    for t_i, t in enumerate(types):
        centre = rng.normal(0, 2, n_genes) + 5
        for k in range(n_per_type):
            sid = f"{t}-{k:02d}"
            values = centre + rng.normal(0, 0.5, n_genes) + (t_i == 0) * 0.1
            rows.append(sid + "\t" + "\t".join(f"{v:.4f}" for v in values))
            table.append(f"{sid}\t{t}\t{40 + 3 * k}\t{'MF'[k % 2]}\t{'I' if k < 3 else 'II'}")
    matrix = folder / "matrix.tsv"
    matrix.write_text("sample\t" + "\t".join(genes) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    samples = folder / "samples.tsv"
    samples.write_text("\n".join(table) + "\n", encoding="utf-8")
    return matrix, samples


def write_run(run: Path, kind: str, status: str = "finished", events: list[dict] | None = None,
              metrics: dict | None = None, predictions: bool = True, pid: int = 0) -> Path:
    """A run folder shaped like the genomics / expression trainers write it (no training)."""
    import json

    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"kind": kind, "config": {"study": "/data/study"}}), encoding="utf-8")
    events = events if events is not None else [
        {"event": "run_started", "epochs": 2, "steps_per_epoch": 1, "device": "cpu"},
        {"event": "epoch_ended", "epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_auc": 0.6},
        {"event": "epoch_ended", "epoch": 2, "train_loss": 0.5, "val_loss": 0.55, "val_auc": 0.75},
        {"event": status},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    (run / "state.json").write_text(json.dumps({"status": status, "pid": pid, "epoch": 2, "epochs": 2}),
                                    encoding="utf-8")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    if predictions:
        (run / "predictions.csv").write_text(
            "sample,truth,predicted,score,group,correct\nS1,Metastasis,Metastasis,0.9,Lung,1\n"
            "S2,Primary,Metastasis,0.7,Lung,0\n", encoding="utf-8")
    return run


def write_study(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """A tiny cBioPortal study in the datahub layout (clinical sample table + reduced MAF)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cols = ["SAMPLE_ID", "PATIENT_ID", "ONCOTREE_CODE_GROUP", "TUMOR_PURITY", "SAMPLE_TYPE", "MET_COUNT",
            "GENE_PANEL", "SEX", "TMB_NONSYNONYMOUS", "FGA", "AGE_AT_SEQUENCING"]
    header = ["#" + "\t".join(c.title().replace("_", " ") for c in cols)] * 2
    header += ["#" + "\t".join(["STRING"] * len(cols)), "#" + "\t".join(["1"] * len(cols)), "\t".join(cols)]
    rows, maf = [], ["Hugo_Symbol\tChromosome\tStart_Position\tEnd_Position\tReference_Allele\tTumor_Seq_Allele2\t"
                     "Tumor_Sample_Barcode\tt_depth\tt_alt_count\tt_ref_count\tVAF"]
    genes = ["TP53", "KRAS", "PIK3CA", "APC", "EGFR"]
    for i in range(n):
        met = i % 2 == 1
        sid = f"P-{i:07d}"
        rows.append("\t".join([sid, sid, ["BRCA", "LUAD", "COAD"][i % 3], f"{rng.uniform(0.2, 0.9):.2f}",
                               "Metastasis" if met else "Primary", f"{rng.integers(1, 5) if met else 0}",
                               "IMPACT468", "Female" if i % 3 else "Male", f"{rng.gamma(2, 3 + 3 * met):.2f}",
                               f"{rng.uniform(0, 0.5):.3f}", f"{rng.uniform(35, 80):.1f}"]))
        for g in rng.choice(genes, size=int(rng.integers(1, 4)), replace=False):
            depth = int(rng.integers(200, 900))
            alt = int(depth * rng.uniform(0.05, 0.5))
            pos = int(rng.integers(1_000_000, 9_000_000))
            maf.append(f"{g}\t1\t{pos}\t{pos}\tG\tA\t{sid}\t{depth}\t{alt}\t{depth - alt}\t{alt / depth:.4f}")
    (folder / "data_clinical_sample.txt").write_text("\n".join(header + rows) + "\n", encoding="utf-8")
    (folder / "data_mutations.txt").write_text("\n".join(maf) + "\n", encoding="utf-8")
    return folder
