"""Genomics benchmark (issue 11): patient-grouped 5-fold CV on msk_met_2021 (shared half).

For each model (gbm, dense, dense_embed) and feature set (clinical, mutations, all): pooled
out-of-fold AUC with a bootstrap 95% CI resampled by patient, and accuracy. Uses the engine's
features, preprocessing, models and folds (the same code as ``metascope train genomics``), without
the run-folder bookkeeping. Writes the table into benchmarks/RESULTS.md (section "Genomics").
Model names also take the gbm ablations of ``GBM_VARIANTS`` (gbm-single, gbm-all-features, gbm-10,
gbm-lr05-all-features); rows accumulate in the JSON store, ``--write-only`` rewrites the section from it.

    .venv/bin/python benchmarks/genomics.py [--models gbm,dense,dense_embed] [--sets clinical,mutations,all]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name, write_results_section  # noqa: E402
from engine.genomics.data import prepare  # noqa: E402
from engine.genomics.encode import Preprocessor  # noqa: E402
from engine.genomics.metrics import grouped_ci95  # noqa: E402
from engine.genomics.train import GenomicsTrainConfig, make_folds  # noqa: E402
from engine.train.metrics import roc_auc  # noqa: E402

STUDY = ROOT.parent / "shared" / "data" / "cbioportal" / "msk_met_2021"
ENSEMBLE = "gbm+dense mean (ablation)"
#: gbm iterations per member (0: the engine's default, 12 epochs x 25); --gbm-max-iter
MAX_ITER = 0
#: gbm variants: settings that differ from the engine's default config
GBM_VARIANTS = {"gbm": {}, "gbm-single": {"gbm_members": 1, "gbm_max_features": 1.0},
                "gbm-all-features": {"gbm_max_features": 1.0}, "gbm-10": {"gbm_members": 10},
                "gbm-lr05-all-features": {"gbm_learning_rate": 0.05, "gbm_max_features": 1.0}}
SECTION = "## Genomics: primary vs metastasis (issue 11)"
END_MARK = "<!-- genomics:end -->"
#: label-free feature screen of 2026-11-30 (scratch script, same 5 folds, default bag on top; kept out of the model)
SCREEN_2026_11_30 = [
    "2026-11-30, label-free feature screen (helper on issue 11; scratch script /work/scratch/genomics/screen.py, "
    "the same 5 patient-grouped folds, each idea added to all 143 features of the default bag of 5, max 220 "
    "iterations, 1 thread, nice; statistics that need fitting (within-type mean / std / percentiles, SVD, type "
    "frequencies) fitted on the fold's training rows only). Bar for building an idea into the model: >= +0.004 AUC "
    "(mean over folds). AUC = pooled out-of-fold, seed 0 (the table's gbm row: 0.7480); fold mean in brackets; "
    "load = 1-minute load average when the run finished.",
    "",
    "| idea | extra columns | AUC (fold mean) | delta (fold mean) | load |",
    "|---|---|---|---|---|",
    "| (a) FGA, TMB, mutation count, purity, age: percentile within ONCOTREE_CODE_GROUP | 5 | 0.7485 (0.7488) | "
    "+0.0005 (+0.0008) | 7.7 |",
    "| (a) the same as z-scores within ONCOTREE_CODE_GROUP | 5 | 0.7491 (0.7492) | +0.0010 (+0.0013) | 7.6 |",
    "| (a) percentiles within ONCOTREE_CODE_GROUP and within SUBTYPE_ABBREVIATION | 10 | 0.7476 (0.7481) | "
    "-0.0004 (+0.0002) | 4.9 |",
    "| (a) z within type of those 5 + depth / mean / max VAF, and depth / TMB / count within GENE_PANEL | 11 | "
    "0.7495 (0.7495) | +0.0015 (+0.0015) | 1.8 |",
    "| (b) allele states (INCOMMON idea), per sample: share of mutations with VAF/purity < 0.3 (subclonal), "
    "0.3-0.6 (heterozygous), > 0.6 (LOH / amplified mutant), mean / max ratio, LOH count | 6 | 0.7484 (0.7485) | "
    "+0.0004 (+0.0005) | 3.3 |",
    "| (b) the same, depth-aware (binomial posterior of p = purity/4, /2, x1 from t_alt / t_depth) | 6 | "
    "0.7472 (0.7472) | -0.0008 (-0.0007) | 6.2 |",
    "| (b) LOH indicator (ratio > 0.6) of 20 driver genes (TP53, KRAS, PIK3CA, APC, EGFR, CDKN2A, PTEN, SMAD4, RB1, "
    "ARID1A, KMT2D, BRAF, CTNNB1, NF1, ATM, FBXW7, KEAP1, STK11, BRCA2, ERBB2) | 20 | 0.7470 (0.7471) | "
    "-0.0010 (-0.0009) | 5.0 |",
    "| (b) binomial per-sample states + per-gene binomial LOH | 26 | 0.7476 (0.7477) | -0.0004 (-0.0003) | 5.3 |",
    "| (b) max VAF/purity of each of the 20 genes (continuous) | 20 | 0.7486 (0.7487) | +0.0006 (+0.0007) | 3.8 |",
    "| (d) each driver's VAF / the sample's max VAF (clonal driver ~1) | 20 | 0.7478 (0.7478) | -0.0002 (-0.0001) | "
    "4.0 |",
    "| (d) distinct mutated genes, median / 90th-percentile VAF, VAF/purity, driver count, mutated share of covered "
    "genes | 6 | 0.7479 (0.7478) | -0.0002 (-0.0001) | 3.2 |",
    "| (d) FGA / TMB / mean and max VAF over purity, t_alt / depth | 5 | 0.7481 (0.7481) | +0.0001 (+0.0001) | 3.3 |",
    "| (d) indicators of 186 more genes (mutated in >= 0.5% of samples) | 186 | 0.7469 (0.7469) | -0.0012 (-0.0011) "
    "| 3.7 |",
    "| (d) indicators of 65 type-specific genes (>= 5% in a tumour type with >= 100 samples) | 65 | 0.7467 (0.7467) | "
    "-0.0013 (-0.0013) | 3.6 |",
    "| (d) 10-component SVD of the gene indicators | 10 | 0.7460 (0.7462) | -0.0020 (-0.0018) | 2.6 |",
    "| (d) atypicality: sum / max of -log(gene frequency in the sample's type), expected vs observed mutated genes "
    "| 4 | 0.7480 (0.7479) | 0.0000 (-0.0001) | 2.3 |",
    "| combo: (a) z within type (5) + (b) per-sample states (6) + (b) per-gene VAF/purity (20) | 31 | "
    "0.7507 (0.7510) | +0.0027 (+0.0030) | 2.9 |",
    "| combo + the 11-column (a) variant + (d) ratios | 42 | 0.7512 (0.7513) | +0.0032 (+0.0033) | 2.4 |",
    "",
    "Member-draw noise: the default bag alone with member seeds 0 / 1 / 2 / 3 gives 0.7480 / 0.7458 / 0.7467 / "
    "0.7473 (fold mean 0.7470 on average), so one seed cannot show +0.004. Repeated over those 4 seeds: z within "
    "type +0.0018 (3 seeds); combo +0.0027 / +0.0046 / +0.0043 / +0.0038 (fold mean +0.0039); combo as built in the "
    "engine (within-type z with the statistics of all training rows for types with < 20 of them, per-gene "
    "VAF/purity 0 when not mutated) 0.7509 / 0.7495 / 0.7513 / 0.7519, +0.0029 / +0.0038 / +0.0047 / +0.0045 "
    "(fold mean +0.0039, pooled +0.0040; 19 of 20 fold x seed pairs up); combo + extras +0.0039 (3 seeds). The best "
    "is consistent (19 of 20 fold x seed pairs up) though under the +0.004 screening bar; the coordinator merged "
    "it into the default features (engine/genomics/features.py + encode.py; tests/engine/test_genomics_features2.py): "
    "the gbm rows with 174 features (all) and 14 (clinical) in the table above were re-run after the merge "
    "(2026-11-30 07:39 UTC): 0.751 (was 0.748 with 143) and 0.736 (was 0.733 with 10); the other rows (143 / 10 / "
    "133 features) are from before it. 0.78 still missed.",
    "",
    "(c) Clinical columns: PRIMARY_SITE, RACE and SUBTYPE_ABBREVIATION are features now (categorical, native "
    "splits). Dropping them (seed 0): without PRIMARY_SITE 0.7370 (-0.011), without SUBTYPE_ABBREVIATION 0.7443 "
    "(-0.004), without RACE 0.7472 (-0.001), without all three 0.7306 (-0.017). engine/genomics/leaks.py does not "
    "flag any of them (no value that is >= 99% one class with >= 20 samples covers >= 50% of the samples: for "
    "PRIMARY_SITE 0.9%, the others 0%), and none is determined by the label or recorded after it. But PRIMARY_SITE "
    "carries label-correlated recording detail: an unknown primary ('Unknown', read as empty: 118 samples, "
    "100% metastasis; 'Cancer / Carcinoma of Unknown Primary', 'Unknown Primary': 48, 96%) is a metastasis by definition, and unspecified sub-sites are more often "
    "metastases (CRC: 'Colon' 44% vs 'Ascending Colon' 17%, 'Rectum' 21%; melanoma 'Skin' 75%). Folding the "
    "unknown primaries into their type's most common site costs 0.0015 (0.7465), so most of PRIMARY_SITE's 0.011 "
    "is sub-site and site detail beyond the tumour type, not the unknown primaries. It is a legitimate pre-test "
    "attribute in MSK-MET (the held-out patients carry it too), but a cohort whose primary-site field is "
    "recorded differently would not reproduce that part of the AUC.",
]
#: how the table was made and what else was tried (written under the table)
NOTES = [
    "Settings. gbm = the default of `metascope train genomics` (since issue 11's accuracy follow-up): a bag of 5 "
    "scikit-learn HistGradientBoosting members, each fitted on its own random 85% of the fold's training patients "
    "(patient-grouped) and splitting on a random half of the features at each split (max_features 0.5); learning "
    "rate 0.1, 15 leaves, min 40 per leaf, l2 10, native categorical splits; the iteration count (common to the "
    "members) with the lowest validation loss of the members' mean raw score on the fold's validation share; the "
    "probability is the sigmoid of that mean, exported as ONE ai.onnx.ml TreeEnsemble (every member's trees with "
    "leaf values / 5 and the mean baseline; the package matches scikit-learn to 1e-5, tests/engine/"
    "test_genomics_train.py). gbm-single = the previous default (one model on all training rows, all features); "
    "gbm-all-features = the bag with max_features 1; gbm-10 = 10 members; gbm-lr05-all-features = learning rate "
    "0.05 (best 168-277 iterations). The gbm variants ran with at most 220 (lr 0.05: 400) iterations per member "
    "instead of the engine's 300; no fold's best count reached the cap, so the rows are what the engine's settings "
    "give. dense = 128-64 MLP, dropout 0.5, weight decay 1e-3, Adam 1e-3, epoch chosen on validation loss; "
    "dense_embed = the same with a 16-d learned embedding of the detailed type. Features: clinical = tumour type, "
    "subtype, primary site, TMB, FGA, purity, panel, sex, age, race; mutations = MAF summaries (count, SNV / DNP / "
    "ONP / INS / DEL from the alleles, substitution classes, mean t_ref / t_alt / depth, VAF, end-start span) + "
    "indicators of genes mutated in >= 2% of samples (missing where inferred absent from the sample's panel).",
    "",
    "What moved the AUC (same 5 folds): bagging +0.005 (gbm-single 0.743 -> bag 0.748; the same bag with other "
    "random member shares gave 0.746, so the members' draw alone moves it by about 0.002); everything else within "
    "+-0.001 of the bag: half the features per split (kept: same AUC in half the time), 10 members, learning rate "
    "0.05 with more iterations. Screened with a single gbm (160 iterations, same folds, scratch script, not in the "
    "table): in-fold gene x tumour-type target statistics (per sample the sum / max / min of the smoothed log-odds "
    "shifts of its mutated genes within its tumour type, estimated on the training patients only, with inner "
    "5-fold cross-fitting for the training rows) 0.746 vs 0.743 for a single gbm, but 0.7462 vs 0.7463 on top of a 5-member bag (so not built: "
    "it would need a label-fitted table in the package and cross-fitting in the trainer); mutation counts "
    "in 13 curated pathways (RTK-RAS, PI3K, TP53, cell cycle, WNT, NOTCH, Hippo, MYC, TGF-beta, NRF2, chromatin, DNA "
    "repair, hormone receptor) 0.7435: no gain. Earlier 3-fold screens (no gain, within +-0.003): recurrent "
    "positions, per-gene indel indicators, per-gene counts, mutations per panel gene, VAF spread, 31 leaves. The "
    "mean of the bag's and the dense network's probabilities (row above, same folds) adds nothing to the bag "
    "(0.748 both), so no two-model package was built.",
    "",
    *SCREEN_2026_11_30,
    "",
    "Target: the issue asks AUC >= 0.78 on held-out MSK-MET patients. Best here is 0.748 (95% CI up to about 0.756) "
    "in patient-grouped CV: the target is NOT met, and nothing tried closes the ~0.03 gap; the features this reduced "
    "MAF and clinical table carry (no copy number, fusions, protein changes or variant classes) look like the limit "
    "for these model families.",
]


def _loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def fit_gbm(cfg, pre, num, codes, y, tr, va, te, patients):
    """The engine's gbm (``build_gbm``: a bag of ``cfg.gbm_members`` members, each on its own share of
    the training patients, native categorical splits); the iteration count with the lowest
    validation loss of the bag's mean score (per iteration; the engine chooses per 25)."""
    from engine.genomics.models import build_gbm

    clf = build_gbm(cfg.gbm_learning_rate, cfg.gbm_max_leaf_nodes, cfg.gbm_min_samples_leaf, cfg.gbm_l2, cfg.seed,
                    len(pre.numeric), len(pre.categorical), cfg.gbm_members, cfg.gbm_subsample,
                    cfg.gbm_max_features)
    clf.max_iter = MAX_ITER or cfg.gbm_iter_per_epoch * cfg.n_epochs
    x = pre.tree_matrix(num, codes)
    clf.fit(x[tr], y[tr], groups=np.asarray(patients)[tr])
    losses = [_loss(y[va], 1 / (1 + np.exp(-r))) for r in clf.staged_decision_function(x[va])]
    best = int(np.argmin(losses))
    for k, r in enumerate(clf.staged_decision_function(x[te])):
        if k == best:
            return 1 / (1 + np.exp(-r)), best + 1
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
        if model in GBM_VARIANTS:
            p, it = fit_gbm(dataclasses.replace(cfg, **GBM_VARIANTS[model]), pre, num, codes, y, tr, va, te, data.patients)
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
            "n_features": n_features, "best_iterations_or_epochs": iters, "load_avg": round(os.getloadavg()[0], 1)}


def write_results(rows: list[dict], seconds: float = 0.0) -> None:
    """The genomics section of RESULTS.md (``benchmarks/machine.write_results_section``); what
    follows the generated block's end marker in the section (hand-written notes) is kept."""
    seconds = seconds or sum(r["seconds"] for r in rows if r["model"] != ENSEMBLE)
    lines = [SECTION, "",
             f"Patient-grouped 5-fold CV on `msk_met_2021` (shared half: {rows[0]['n']} samples, one per patient), "
             "pooled out-of-fold predictions; AUC 95% CI = bootstrap over patients (500 resamples). "
             "Label SAMPLE_TYPE (Metastasis = positive); METASTATIC_SITE, MET_COUNT, MET_SITE_COUNT and "
             "OS_* dropped as leaks. `benchmarks/genomics.py`, "
             f"machine: {cpu_name()} (2 cores shared with other jobs, one thread per model), "
             f"{seconds / 60:.1f} min of model fitting for the rows in all; load = 1-minute load average when the row finished "
             "(rows from earlier runs keep theirs; '-' = not recorded).", "",
             "| model | features | n features | AUC (95% CI) | accuracy (95% CI) | time (s) | load |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["auc_ci95"]
        alo, ahi = r["accuracy_ci95"]
        load = f"{r['load_avg']:.1f}" if r.get("load_avg") is not None else "-"
        lines.append(f"| {r['model']} | {r['features']} | {r['n_features']} | {r['auc']:.3f} ({lo:.3f}-{hi:.3f}) | "
                     f"{r['accuracy']:.3f} ({alo:.3f}-{ahi:.3f}) | {r['seconds']:.0f} | {load} |")
    best = max((r for r in rows if r["model"] != ENSEMBLE), key=lambda r: r["auc"])
    default = next((r for r in rows if (r["model"], r["features"]) == ("gbm", "all")), best)
    met = "reaches" if default["auc"] >= 0.78 else "does NOT reach"
    lines += ["", f"Default model (gbm on all features): CV AUC {default['auc']:.3f} (95% CI {default['auc_ci95'][0]:.3f}-"
              f"{default['auc_ci95'][1]:.3f}); it {met} the issue's 0.78 target (in CV on the shared half; the hidden "
              f"check scores other MSK-MET patients). Best row: {best['model']} on {best['features']} features, "
              f"{best['auc']:.4f} (default {default['auc']:.4f}).", "",
              *NOTES, "", END_MARK]
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    tail = ""
    start = text.find(SECTION)
    if start >= 0:
        end = text.find(END_MARK, start)
        nxt = text.find("\n## ", start + len(SECTION))
        if end >= 0 and (nxt < 0 or end < nxt):
            tail = text[end + len(END_MARK):nxt if nxt >= 0 else len(text)]
    write_results_section(SECTION, "\n".join(lines) + tail)


def sorted_rows(rows: list[dict]) -> list[dict]:
    order = {m: i for i, m in enumerate((*GBM_VARIANTS, "dense", "dense_embed", ENSEMBLE))}
    return sorted(rows, key=lambda x: (order.get(x["model"], 9), ("all", "clinical", "mutations").index(x["features"])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="gbm,dense,dense_embed")
    ap.add_argument("--sets", default="clinical,mutations,all")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "genomics_results.json"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--gbm-max-iter", type=int, default=0,
                    help="boosting iterations per gbm member (default 300, as the engine's 12 epochs x 25)")
    ap.add_argument("--write-only", action="store_true", help="only write RESULTS.md from the stored rows")
    args = ap.parse_args()
    if args.write_only:
        write_results(sorted_rows(json.loads(Path(args.json).read_text())), 0.0)
        return 0
    global MAX_ITER
    MAX_ITER = args.gbm_max_iter
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
    if not args.no_write:
        write_results(sorted_rows(rows), 0.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
