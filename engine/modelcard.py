"""The model card of a patch classifier: a Markdown page beside its ``.onnx`` (``MODEL.md``).

One writer for every client: ``metascope export`` writes it beside the exported package, and the
Training view writes the same card when it exports a model or adds it to the model library.
The card holds no absolute paths (dataset paths are shortened by
:func:`engine.modelpkg.portable_path`): it travels with the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.fileio import atomic_write_text
from engine.runs import EventFollower, RunHistory, load_evaluation

CARD_SUFFIX = ".md"


def card_path(onnx_path: str | os.PathLike[str]) -> Path:
    """Where the card of ``MODEL.onnx`` goes: ``MODEL.md`` beside it."""
    return Path(onnx_path).with_suffix(CARD_SUFFIX)


def run_history(run_dir: str | os.PathLike[str]) -> RunHistory:
    """The run's history folded from its ``events.jsonl`` (empty when there is none)."""
    history = RunHistory()
    events = Path(run_dir) / "events.jsonl"
    if events.is_file():
        history.apply_all(EventFollower(events).read_new())
    return history


def _read_run_config(run: Path) -> dict[str, Any]:
    try:
        data = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_card(
    run_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    history: RunHistory | None = None,
    evaluation: dict[str, Any] | None = None,
    package: str | os.PathLike[str] | None = None,
) -> str:
    """A Markdown model card for a patch-classifier run's model: data, settings, validation results.

    Args:
        run_dir: the training run folder.
        name: the model's title (default: the run folder's name).
        history: the run's folded events (default: read from ``events.jsonl``).
        evaluation: the run's evaluation (:func:`engine.runs.evaluate_run`); default: the saved
            one when it belongs to the run's current best model.
        package: the exported ``.onnx``: its operating threshold and calibration are stated
            (default: the run's ``calibration.json``).
    """
    from engine.modelpkg import portable_path

    run = Path(run_dir)
    history = history if history is not None else run_history(run)
    if evaluation is None:
        evaluation = load_evaluation(run)
    stored = _read_run_config(run)
    cfg = stored.get("config", {})
    data = stored.get("data", {})
    lines = [f"# {name or run.name}", "", "Patch classifier trained with MetaScope.", "", "## Training data", ""]
    dataset = portable_path(str(cfg.get("data", "?")))
    lines.append(f"- Dataset: `{dataset}` ({data.get('format', cfg.get('fmt', '?'))})")
    counts = data.get("class_counts") or {}
    if counts:
        lines.append("- Patches per class: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    lines.append(
        f"- Split: {data.get('split', cfg.get('split'))}, {data.get('n_train', '?')} training / "
        f"{data.get('n_val', '?')} validation patches"
    )
    if data.get("mpp"):
        lines.append(f"- Resolution: {data['mpp']:g} µm/px, patches {data.get('patch_size', ['?'])[0]} px")
    lines += ["", "## Training", ""]
    lines.append(
        f"- Architecture `{cfg.get('arch')}`, {history.epoch or '?'} of {cfg.get('epochs')} epochs, batch "
        f"{cfg.get('batch_size')}, learning rate {cfg.get('lr')}, seed {cfg.get('seed')}"
    )
    if cfg.get("weights"):
        lines.append(f"- Initialised from `{portable_path(str(cfg['weights']))}`")
    lines.append(f"- Device: {history.device or cfg.get('device')}")
    if evaluation:
        m, ci = evaluation["metrics"], evaluation.get("ci", {})
        lines += ["", f"## Validation (best epoch {evaluation.get('epoch')}, {evaluation.get('n_val')} patches)", ""]
        lines += ["| Metric | Value | 95% CI |", "|---|---|---|"]
        for key in ("auc", "accuracy", "sensitivity", "specificity", "f1"):
            if key not in m:
                continue
            lo_hi = ci.get(key)
            ci_text = f"{lo_hi[0]:.3f}–{lo_hi[1]:.3f}" if lo_hi and all(v == v for v in lo_hi) else ""
            lines.append(f"| {key.upper() if key == 'auc' else key} | {m[key]:.3f} | {ci_text} |")
    section = threshold_section(_package_calibration(package) or _run_calibration(run))
    if section:
        lines += [""] + section[:-1]
    lines += [
        "",
        "Validation metrics are estimated on held-out patches of the same dataset (the split that chose ",
        "the best epoch); check the model on slides from your own lab before relying on it.",
        "",
    ]
    return "\n".join(lines)


THRESHOLD_HEADING = "## Operating threshold"
_RULE_TEXT = {
    "specificity": "the lowest threshold flagging at most {miss:.0%} of the tumour-free validation patches (specificity >= {target:.2f})",
    "sensitivity": "the highest threshold keeping sensitivity >= {target:.2f} on the validation patches",
    "youden": "the threshold maximising sensitivity + specificity - 1 (Youden) on the validation patches",
    "fixed": "a fixed threshold",
}


def _run_calibration(run: Path) -> dict[str, Any]:
    """The run's fitted calibration and threshold (``calibration.json``), or ``{}``."""
    try:
        data = json.loads((run / "calibration.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _package_calibration(package: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The threshold entries of an exported package's metadata, or ``{}``."""
    if package is None:
        return {}
    from engine.errors import ModelPackageError
    from engine.modelpkg import read_metadata

    try:
        extra = read_metadata(package).extra
    except ModelPackageError:
        return {}
    return dict(extra) if isinstance(extra, dict) and "operating_threshold" in extra else {}


def threshold_section(extra: dict[str, Any]) -> list[str]:
    """The card's lines about the operating threshold and calibration (package ``extra`` keys
    ``operating_threshold``, ``threshold_rule``, ``calibration``); ``[]`` when there is none."""
    thr = extra.get("operating_threshold")
    if not isinstance(thr, (int, float)):
        return []
    lines = [THRESHOLD_HEADING, ""]
    rule = extra.get("threshold_rule") if isinstance(extra.get("threshold_rule"), dict) else {}
    lines.append(f"- Operating threshold: **{thr:.4f}** (on the calibrated positive-class probability; the app and the CLI use it by default)")
    if rule:
        target = float(rule.get("target", 0.95))
        how = _RULE_TEXT.get(str(rule.get("rule")), str(rule.get("rule"))).format(miss=1 - target, target=target)
        lines.append(f"- Chosen as {how}")
        lines.append(
            f"- At this threshold on {rule.get('n_val', '?')} validation patches: sensitivity "
            f"{float(rule.get('sensitivity', float('nan'))):.3f}, specificity {float(rule.get('specificity', float('nan'))):.3f}"
        )
    cal = extra.get("calibration") if isinstance(extra.get("calibration"), dict) else {}
    if cal.get("method") in ("temperature", "isotonic"):
        text = f"temperature scaling (T = {float(cal.get('temperature', 1.0)):.3f})"
        if cal["method"] == "isotonic":
            text += " followed by an isotonic map"
        if "ece_before" in cal and "ece_after" in cal:
            text += f"; validation ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"
        lines.append(f"- Calibration: {text}")
    return lines + [""]


def update_card_threshold(path: str | os.PathLike[str], extra: dict[str, Any]) -> Path:
    """Replace (or add) the operating-threshold section of an existing card, atomically."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == THRESHOLD_HEADING), None)
    if start is not None:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        if end == len(lines):  # last section: keep the closing remarks that follow its list
            end = next((j for j in range(start + 2, len(lines)) if lines[j] and not lines[j].startswith("- ")), len(lines))
        lines = lines[:start] + threshold_section(extra) + lines[end:]
    else:
        lines = lines + [""] + threshold_section(extra)
    atomic_write_text(p, "\n".join(lines).rstrip("\n") + "\n")
    return p


def write_model_card(
    run_dir: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    history: RunHistory | None = None,
    evaluation: dict[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Write the card of ``run_dir``'s model beside ``onnx_path`` (``MODEL.md``), atomically.

    ``card`` writes that text instead of building it (a card made earlier, e.g. on the GUI thread).

    Returns:
        The card's path.

    Raises:
        OutputError: the folder cannot be written.
    """
    path = card_path(onnx_path)
    text = card if card is not None else model_card(run_dir, name=name, history=history, evaluation=evaluation,
                                                    package=onnx_path)
    atomic_write_text(path, text)
    return path
