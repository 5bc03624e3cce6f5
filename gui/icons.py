"""Application icons: SVG files in ``resources/icons`` (rendered by Qt at any size)."""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtGui import QIcon

from engine.paths import resources_dir

APP_ICON = "metascope"


@lru_cache(maxsize=64)
def icon(name: str) -> QIcon:
    """The icon ``resources/icons/<name>.svg`` (or ``.png``); an empty icon when neither exists."""
    folder = resources_dir() / "icons"
    for suffix in (".svg", ".png"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return QIcon(str(path))
    return QIcon()


def app_icon() -> QIcon:
    """The MetaScope window icon, with a PNG rendering for platforms without SVG icon support."""
    ic = QIcon(icon(APP_ICON))
    png = resources_dir() / "icons" / f"{APP_ICON}-256.png"
    if png.is_file():
        ic.addFile(str(png))
    return ic
