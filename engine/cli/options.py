"""Command-line options that several commands share, spelled and documented once."""

from __future__ import annotations

import argparse

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def add_device_option(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device {auto,cpu,cuda}``; ``default=None`` leaves it unset (a saved config decides)."""
    shown = f" (default: {default})" if default else ""
    parser.add_argument(
        "--device", choices=DEVICE_CHOICES, default=default, help=f"auto (CUDA when available), cpu or cuda{shown}"
    )


def read_config_file(path: str) -> dict:
    """The settings of a ``--config FILE`` (a run's ``config.json`` or its inner ``config`` object)."""
    import json
    from pathlib import Path

    from engine.errors import ConfigError

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read --config {path}: {exc}") from exc
    return raw.get("config", raw) if isinstance(raw, dict) else {}
