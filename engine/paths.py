"""Where MetaScope keeps user data: the model library, the heatmap cache, demo assets.

``METASCOPE_HOME`` overrides the base folder (tests, portable installs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def home_dir() -> Path:
    """Base folder for MetaScope's user data (created on demand by callers)."""
    env = os.environ.get("METASCOPE_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "MetaScope"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "MetaScope"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "metascope"


def models_dir() -> Path:
    """The model library folder: one ``.onnx`` model package per model."""
    return home_dir() / "models"


def cache_dir() -> Path:
    """Cached results (heatmaps per slide and model)."""
    return home_dir() / "cache"


def demo_dir() -> Path:
    """Generated demo slide and demo model."""
    return home_dir() / "demo"


def runs_dir() -> Path:
    """Default parent folder of training runs started from the app."""
    return home_dir() / "runs"


def resources_dir() -> Path:
    """Bundled read-only resources (icons, starter model); inside a PyInstaller bundle too."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"
