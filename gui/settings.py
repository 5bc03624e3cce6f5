"""Persistent user settings (QSettings) with one dict of defaults.

Tests set ``METASCOPE_TEST``; the settings file then lives under ``METASCOPE_HOME`` so a test run
never reads or changes the user's real settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QCoreApplication, QSettings

ORGANIZATION = "MetaScope"
APPLICATION = "MetaScope"
MAX_RECENT = 10

DEFAULTS: dict[str, Any] = {
    "window/geometry": QByteArray(),
    "window/state": QByteArray(),
    "recent/files": [],
    "dialogs/last_open_dir": "",
    "dialogs/last_export_dir": "",
    "dialogs/last_model_dir": "",
    "viewer/tile_cache_mb": 256,
    "viewer/tile_threads": 2,
    "heatmap/model": "",
    "heatmap/colormap": "heat",
    "heatmap/opacity": 0.6,
    "heatmap/threshold": 0.5,
    "heatmap/visible": True,
    "app/first_run_done": False,
}


def _settings_file() -> Path | None:
    if not os.environ.get("METASCOPE_TEST"):
        return None
    from engine.paths import home_dir

    return home_dir() / "settings.ini"


class Settings:
    """Typed access to QSettings; every key has a default in :data:`DEFAULTS`."""

    def __init__(self) -> None:
        path = _settings_file()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._qs = QSettings(str(path), QSettings.Format.IniFormat)
        else:
            if not QCoreApplication.organizationName():
                QCoreApplication.setOrganizationName(ORGANIZATION)
                QCoreApplication.setApplicationName(APPLICATION)
            self._qs = QSettings()

    @property
    def file_name(self) -> str:
        return self._qs.fileName()

    def get(self, key: str) -> Any:
        """Value of ``key`` converted to the type of its default."""
        default = DEFAULTS[key]
        value = self._qs.value(key, default)
        return _coerce(value, default)

    def set(self, key: str, value: Any) -> None:
        if key not in DEFAULTS:
            raise KeyError(f"unknown setting {key!r}")
        self._qs.setValue(key, value)

    def sync(self) -> None:
        self._qs.sync()

    # -- recent files ------------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        return [p for p in self.get("recent/files") if p]

    def add_recent_file(self, path: str | os.PathLike[str]) -> list[str]:
        """Move ``path`` to the top of the recent list (at most :data:`MAX_RECENT` entries)."""
        p = str(Path(path).resolve())
        items = [p] + [x for x in self.recent_files() if x != p]
        items = items[:MAX_RECENT]
        self.set("recent/files", items)
        return items

    def remove_recent_file(self, path: str) -> list[str]:
        items = [x for x in self.recent_files() if x != path]
        self.set("recent/files", items)
        return items

    def clear_recent_files(self) -> None:
        self.set("recent/files", [])


def _coerce(value: Any, default: Any) -> Any:
    # QSettings returns strings from INI files and single strings for one-element lists
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            return default
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            return default
    if isinstance(default, list):
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value]
    if isinstance(default, QByteArray):
        return value if isinstance(value, QByteArray) else default
    return "" if value is None else str(value)
