"""A stand-in for ``metascope`` in GUI tests: writes what each command of PRODUCT.md writes."""

from __future__ import annotations

import json
from pathlib import Path

from gui.cli_job import CliResult


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 1.5))
    fig.savefig(path)
    plt.close(fig)


def _opt(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


PREDICTIONS = ("sample,truth,predicted,score,group,correct\nS1,Metastasis,Metastasis,0.9,Lung,1\n"
               "S2,Primary,Metastasis,0.7,Breast,0\n")


def fake_run_cli(args, json_output=False, **_kw):  # noqa: ANN001, ANN003, ANN201
    """Write the outputs of ``metascope ARGS`` (no computation) and return its result."""
    args = [str(a) for a in args]
    calls.append(args)
    cmd = args[1]
    if cmd in ("evaluate", "oneshot", "markers") or (cmd == "realism"):
        out = Path(_opt(args, "--out"))
        out.mkdir(parents=True, exist_ok=True)
    if cmd == "evaluate":
        (out / "metrics.json").write_text(json.dumps({"auc": 0.8, "accuracy": 0.75}), encoding="utf-8")
        (out / "predictions.csv").write_text(PREDICTIONS, encoding="utf-8")
        _png(out / "roc.png")
    elif cmd == "predict":
        Path(_opt(args, "--out")).parent.mkdir(parents=True, exist_ok=True)
        Path(_opt(args, "--out")).write_text(PREDICTIONS, encoding="utf-8")
    elif cmd == "oneshot":
        ways = {str(n): {"siamese": 0.9 - n / 100, "nn1": 0.85 - n / 100, "trials": int(_opt(args, "--trials")),
                         "ci": {"siamese": [0.8, 0.9], "nn1": [0.75, 0.85]}} for n in (2, 3)}
        (out / "metrics.json").write_text(json.dumps({"ways": ways}), encoding="utf-8")
        (out / "predictions.csv").write_text(PREDICTIONS, encoding="utf-8")
    elif cmd == "classify":
        out = Path(_opt(args, "--out"))
        support = Path(_opt(args, "--support")).read_text(encoding="utf-8").splitlines()[1:]
        rows = [ln.split("\t") for ln in support]
        sims = [{"sample": s, "type": t, "similarity": 0.9 - 0.2 * i} for i, (s, t) in enumerate(rows)]
        out.mkdir(parents=True, exist_ok=True)
        support_rows = [{"support_sample": d["sample"], "type": d["type"], "similarity": d["similarity"]} for d in sims]
        (out / "classification.json").write_text(json.dumps({"predicted": rows[0][1], "support": support_rows}),
                                                 encoding="utf-8")
    elif cmd == "markers":
        (out / "markers.csv").write_text("rank,gene,saliency\n1,GENE3,0.9\n2,GENE7,0.5\n", encoding="utf-8")
        _png(out / "saliency.png")
    elif cmd == "generate":
        dest = Path(_opt(args, "--out"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("sample\tGENE1\tGENE2\nsyn-0\t1.0\t2.0\n", encoding="utf-8")
    elif cmd == "realism":
        (out / "metrics.json").write_text(json.dumps(
            {"gamma": 0.96, "c2st_auc": 0.66, "baseline": {"gamma": 0.95, "c2st_auc": 0.79}}), encoding="utf-8")
        _png(out / "pca.png")
    return CliResult(tuple(args), f"{cmd} done\n", "")


calls: list[list[str]] = []
