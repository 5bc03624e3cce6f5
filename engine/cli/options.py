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
