"""Genomics benchmark (issue 11): patient-grouped 5-fold CV on msk_met_2021 (shared half).

For each model (gbm, dense, dense_embed) and feature set (clinical, mutations, all): pooled
out-of-fold AUC with a bootstrap 95% CI resampled by patient, and accuracy. Uses the engine's
features, preprocessing, models and folds (the same code as ``metascope train genomics``), without
the run-folder bookkeeping. Writes the table into benchmarks/RESULTS.md (section "Genomics").

    .venv/bin/python benchmarks/genomics.py [--models gbm,dense,dense_embed] [--sets clinical,mutations,all]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from engine.genomics.data import prepare  # noqa: E402
from engine.genomics.encode import Preprocessor  # noqa: E402
from engine.genomics.metrics import grouped_ci95  # noqa: E402
from engine.genomics.train import GenomicsTrainConfig, make_folds  # noqa: E402
from engine.train.metrics import roc_auc  # noqa: E402

STUDY = ROOT.parent / "shared" / "data" / "cbioportal" / "msk_met_2021"
ENSEMBLE = "gbm+dense mean (ablation)"
SECTION = "## Genomics: primary vs metastasis (issue 11)"
END_MARK = "<!-- genomics:end -->"


def _loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def fit_gbm(cfg, pre, num, codes, y, tr, va, te):
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(learning_rate=cfg.gbm_learning_rate, max_iter=cfg.gbm_iter_per_epoch * cfg.n_epochs,
                                         max_leaf_nodes=cfg.gbm_max_leaf_nodes, min_samples_leaf=cfg.gbm_min_samples_leaf,
                                         l2_regularization=cfg.gbm_l2, early_stopping=False, random_state=cfg.seed,
                                         # as the engine's build_gbm: category codes split natively (set membership)
                                         categorical_features=[False] * len(pre.numeric) + [True] * len(pre.categorical)
                                         if pre.categorical else None)
    x = pre.tree_matrix(num, codes)
    clf.fit(x[tr], y[tr])
    losses = [_loss(y[va], p[:, 1]) for p in clf.staged_predict_proba(x[va])]
    best = int(np.argmin(losses))
    for k, p in enumerate(clf.staged_predict_proba(x[te])):
        if k == best:
            return p[:, 1], best + 1
    raise RuntimeError("unreachable")


def fit_dense(cfg, pre, num, codes, y, tr, va, te, model, embed_col, epochs=30):
    import torch

    from engine.genomics.models import build_net

    torch.manual_seed(cfg.seed)
    net = build_net(pre, model, embed_col, tuple(cfg.hidden), cfg.dropout, cfg.embed_dim)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    lossf = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(cfg.seed)
    tn, tc = torch.from_numpy(num), torch.from_numpy(codes)
    ty = torch.from_numpy(y)

    def predict(rows):
        net.eval()
        with torch.no_grad():
            return torch.softmax(net(tn[rows], tc[rows]), 1)[:, 1].numpy().astype(np.float64)

    best, best_state, best_ep = np.inf, None, 0
    for ep in range(epochs):
        net.train()
        order = tr[rng.permutation(len(tr))]
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            loss = lossf(net(tn[b], tc[b]), ty[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        vl = _loss(y[va], predict(va))
        if vl < best:
            best, best_ep = vl, ep + 1
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        elif ep + 1 - best_ep >= cfg.patience:
            break
    net.load_state_dict(best_state)
    return predict(te), best_ep


def run_one(data, folds, which: str, model: str, cfg, oofs: dict | None = None) -> dict:
    table = data.table.select(which)
    y = data.y
    pos = {s: i for i, s in enumerate(data.samples)}
    oof = np.full(len(y), np.nan)
    t0 = time.perf_counter()
    iters = []
    for f in folds:
        tr, va, te = (np.array([pos[s] for s in getattr(f, k)]) for k in ("train", "val", "test"))
        pre = Preprocessor.fit(table.frame.iloc[tr], table.numeric, table.categorical, y[tr])
        num, codes = pre.transform(table.frame)
        if model == "gbm":
            p, it = fit_gbm(cfg, pre, num, codes, y, tr, va, te)
        else:
            embed_col = table.roles.get("detailed_type")
            if embed_col not in pre.categorical:
                embed_col = table.roles.get("tumour_type")
            p, it = fit_dense(cfg, pre, num, codes, y, tr, va, te, model, embed_col)
        oof[te] = p
        iters.append(it)
    if oofs is not None:
        oofs[(model, which)] = oof
    return score_oof(data, oof, model, which, time.perf_counter() - t0, len(table.columns), iters)


def score_oof(data, oof, model, which, seconds, n_features, iters) -> dict:
    y = data.y
    ok = np.isfinite(oof)
    probs = np.column_stack([1 - oof[ok], oof[ok]])
    ci = grouped_ci95(y[ok], probs, np.asarray(data.patients)[ok], n_boot=500)
    return {"model": model, "features": which, "n": int(ok.sum()), "auc": roc_auc(y[ok] == 1, oof[ok]),
            "auc_ci95": ci["auc"], "accuracy": float(((oof[ok] >= 0.5) == (y[ok] == 1)).mean()),
            "accuracy_ci95": ci["accuracy"], "seconds": round(seconds, 1),
            "n_features": n_features, "best_iterations_or_epochs": iters}


def write_results(rows: list[dict], seconds: float) -> None:
    lines = [SECTION, "",
             f"Patient-grouped 5-fold CV on `msk_met_2021` (shared half: {rows[0]['n']} samples, one per patient), "
             "pooled out-of-fold predictions; AUC 95% CI = bootstrap over patients (500 resamples). "
             "Label SAMPLE_TYPE (Metastasis = positive); METASTATIC_SITE, MET_COUNT, MET_SITE_COUNT and "
             "OS_* dropped as leaks. `benchmarks/genomics.py`, "
             f"machine: {cpu_name()} (2 cores shared with other jobs, one thread per model), "
             f"{seconds / 60:.1f} min of model fitting in all.", "",
             "| model | features | n features | AUC (95% CI) | accuracy (95% CI) | time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["auc_ci95"]
        alo, ahi = r["accuracy_ci95"]
        lines.append(f"| {r['model']} | {r['features']} | {r['n_features']} | {r['auc']:.3f} ({lo:.3f}-{hi:.3f}) | "
                     f"{r['accuracy']:.3f} ({alo:.3f}-{ahi:.3f}) | {r['seconds']:.0f} |")
    best = max((r for r in rows if r["model"] != ENSEMBLE), key=lambda r: r["auc"])
    lines += ["", f"Best: {best['model']} on {best['features']} features, CV AUC {best['auc']:.3f} "
              f"({'reaches' if best['auc'] >= 0.78 else 'does not reach'} the 0.78 target in CV).", "",
              "Settings: gbm = HistGradientBoosting (learning rate 0.1, 15 leaves, min 40 per leaf, l2 10, native "
              "categorical splits, iterations chosen on a patient-grouped validation share); dense = 128-64 MLP, "
              "dropout 0.5, weight decay 1e-3, Adam 1e-3, epoch chosen on validation loss; dense_embed = the same "
              "with a 16-d learned embedding of the detailed type. Features: clinical = tumour type, subtype, "
              "primary site, TMB, FGA, purity, panel, sex, age, race; mutations = MAF summaries (count, SNV / "
              "DNP / ONP / INS / DEL from the alleles, substitution classes, mean t_ref / t_alt / depth, VAF, "
              "end-start span) + indicators of genes mutated in >= 2% of samples (missing where inferred "
              "absent from the sample's panel). Exploration on folds 1-2 (not in the table): target-rate "
              "encoding of categories instead of native splits -0.009 AUC; networks with standardised 0/1 gene "
              "indicators 0.67 (a rare mutation becomes a huge input; now kept 0/1: 0.72); genes >= 0.5% "
              "instead of >= 2% -0.01 for the networks, no change for gbm; VAF / purity ratios no change.", "",
              "Changes and ablations (issue 11 follow-up): (1) the benchmark's gbm now splits the category codes "
              "natively, as the engine's `build_gbm` always did (before, this script fed the codes as ordered "
              "numbers: gbm all 0.729 -> 0.743 with the same folds); gbm is now the default model of `metascope "
              "train genomics` (was dense, 0.738). (2) Tried with a 3-fold patient-grouped gbm CV (baseline 0.740), "
              "none kept (all within +-0.003, the fold-to-fold noise): recurrent positions (gene + start seen in "
              ">= 5 samples, count per sample, and indicators of positions seen in >= 30) 0.740; per-gene "
              "insertion / deletion indicators (a truncation proxy without HGVSp) 0.739; per-gene mutation counts "
              "0.740; mutations per panel gene + median depth + summed alt reads 0.741; VAF spread (std / min / "
              "median) + max VAF of 9 driver genes 0.742; learning rate 0.05 0.741; 31 leaves / min 20 per leaf "
              "0.738. (3) The mean of gbm and dense probabilities (row above) is not the default: about +0.003 "
              "AUC, and one ONNX package for both models is not built yet. (4) Lead, not built: averaging the raw "
              "scores of 5 gbm fits that differ only in their early-stopping validation share (still one tree "
              "ensemble, so exportable as one ONNX TreeEnsemble) gave 0.746 vs 0.740 in the 3-fold CV.", ""]
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text(encoding="utf-8")
    lines.append(END_MARK)
    if SECTION in text:
        # the generated block ends at END_MARK (hand-written notes and other markers after it are kept)
        start = text.index(SECTION)
        end = text.find(END_MARK, start)
        nxt = end + len(END_MARK) if end >= 0 else text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(lines) + (text[nxt:] if nxt >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    path.write_text(text, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="gbm,dense,dense_embed")
    ap.add_argument("--sets", default="clinical,mutations,all")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "genomics_results.json"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # OpenMP spin-waits make scikit-learn 25x slower on a busy shared CPU
    cfg = GenomicsTrainConfig(study=str(STUDY), folds=5, final_fit=False)
    data = prepare(cfg)
    folds = make_folds(data, cfg)
    # results accumulate in the JSON file: a run replaces the rows of the models / sets it ran
    store = Path(args.json)
    rows = json.loads(store.read_text()) if store.is_file() else []
    oofs: dict = {}
    for model in args.models.split(","):
        for which in args.sets.split(","):
            r = run_one(data, folds, which, model, cfg, oofs)
            rows = [x for x in rows if (x["model"], x["features"]) != (model, which)] + [r]
            print(json.dumps(r), flush=True)
            store.write_text(json.dumps(rows, indent=2))
    # ablation: mean of the gbm and dense probabilities (same folds), when both ran on all features
    if ("gbm", "all") in oofs and ("dense", "all") in oofs:
        mean = (oofs[("gbm", "all")] + oofs[("dense", "all")]) / 2
        r = score_oof(data, mean, ENSEMBLE, "all", sum(x["seconds"] for x in rows if x["model"] in ("gbm", "dense")
                                                       and x["features"] == "all"),
                      len(data.table.columns), [])
        rows = [x for x in rows if x["model"] != ENSEMBLE] + [r]
        print(json.dumps(r), flush=True)
        store.write_text(json.dumps(rows, indent=2))
    order = {m: i for i, m in enumerate(("gbm", "dense", "dense_embed", ENSEMBLE))}
    rows.sort(key=lambda x: (order.get(x["model"], 9), ("all", "clinical", "mutations").index(x["features"])))
    if not args.no_write:
        write_results(rows, sum(x["seconds"] for x in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
