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
) -> str:
    """A Markdown model card for a patch-classifier run's model: data, settings, validation results.

    Args:
        run_dir: the training run folder.
        name: the model's title (default: the run folder's name).
        history: the run's folded events (default: read from ``events.jsonl``).
        evaluation: the run's evaluation (:func:`engine.runs.evaluate_run`); default: the saved
            one when it belongs to the run's current best model.
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
    lines += [
        "",
        "Validation metrics are estimated on held-out patches of the same dataset (the split that chose ",
        "the best epoch); check the model on slides from your own lab before relying on it.",
        "",
    ]
    return "\n".join(lines)


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
    text = card if card is not None else model_card(run_dir, name=name, history=history, evaluation=evaluation)
    atomic_write_text(path, text)
    return path
