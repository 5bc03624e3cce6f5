"""Microns per pixel read from files: plausibility checks and the places files record it.

Files carry resolution in many ways (Aperio ``MPP =``, OME-XML ``PhysicalSizeX``, TIFF
resolution tags in pixels per inch or centimetre), and many carry a value that is not a
microscope's: 72 or 96 dpi written by image editors (353 or 265 um/px), ``MPP = 0``, or a unit
mix-up off by 1000. A value outside :data:`FILE_MPP_RANGE` is dropped (reported as "no mpp",
so the user is asked) rather than used: a wrong mpp silently turns a heatmap into nonsense.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Microscope resolutions span ~0.1 um/px (100x oil) to ~10 um/px (1.25x overview). Outside this
# range the value is a print resolution or a unit error, not a scan.
FILE_MPP_RANGE = (0.02, 50.0)
# Pixels whose x and y sizes differ by more than this fraction are not square (see tiling).
SQUARE_TOLERANCE = 0.05

# OME length units -> microns
_OME_UNITS_UM = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,
    "um": 1.0,
    "\u03bcm": 1.0,  # Greek mu, as some writers spell it
    "micron": 1.0,
    "nm": 1e-3,
    "pm": 1e-6,
    "in": 25400.0,
}
_APERIO_MPP_RE = re.compile(r"\|\s*MPP\s*=\s*([-+0-9.eE]+)")
_OME_PIXELS_RE = re.compile(r"<(?:\w+:)?Pixels\b([^>]*)>", re.S)


def plausible_mpp(value: object) -> float | None:
    """``float(value)`` when it is a finite microscope resolution within :data:`FILE_MPP_RANGE`."""
    if value is None:
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f) or not FILE_MPP_RANGE[0] <= f <= FILE_MPP_RANGE[1]:
        return None
    return f


def plausible_pair(mpp_x: object, mpp_y: object) -> tuple[float, float] | None:
    """An ``(x, y)`` pair of plausible values; a side that is not given takes the other's value.

    Returns ``None`` when nothing is given, or when a given side is implausible (a file that
    says 0.5 x 353 is not trusted either way).
    """
    given = [v for v in (mpp_x, mpp_y) if v is not None]
    values = [f for f in (plausible_mpp(v) for v in given) if f is not None]
    if not given or len(values) != len(given):
        return None
    return (values[0], values[-1])


def is_square(mpp: tuple[float, float]) -> bool:
    """Whether x and y pixel sizes agree within :data:`SQUARE_TOLERANCE`."""
    x, y = mpp
    return abs(x - y) <= SQUARE_TOLERANCE * max(x, y)


def mpp_from_resolution(x_res: float | None, y_res: float | None, unit: int | str | None) -> tuple[float, float] | None:
    """Microns per pixel from TIFF XResolution/YResolution (pixels per unit) and ResolutionUnit.

    ``unit`` is the TIFF code (2 inch, 3 centimetre) or a name (``"INCH"``, ``"CENTIMETER"``);
    unit 1 (none) carries no physical size. Returns ``None`` unless plausible.
    """
    if isinstance(unit, str):
        code = {"INCH": 2, "CENTIMETER": 3}.get(unit.upper().split(".")[-1], 0)
    else:
        code = int(unit) if unit is not None else 0
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(code)
    if per_unit_um is None or not x_res or not y_res:
        return None
    try:
        mx, my = per_unit_um / float(x_res), per_unit_um / float(y_res)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return plausible_pair(mx, my)


def mpp_from_tiff_tags(tags: Any) -> tuple[float, float] | None:
    """:func:`mpp_from_resolution` of a tifffile page's ``tags`` (rational or float values)."""

    def ratio(name: str) -> float | None:
        tag = tags.get(name)
        if tag is None:
            return None
        v = tag.value
        if isinstance(v, tuple) and len(v) == 2:
            return v[0] / v[1] if v[1] else None
        return float(v)

    unit = tags.get("ResolutionUnit")
    return mpp_from_resolution(ratio("XResolution"), ratio("YResolution"), int(unit.value) if unit is not None else None)


def mpp_from_aperio(description: str | None) -> float | None:
    """The ``MPP = x`` field of an Aperio ImageDescription, when plausible."""
    if not description or not description.startswith("Aperio"):
        return None
    m = _APERIO_MPP_RE.search(description)
    return plausible_mpp(m.group(1)) if m else None


def mpp_from_ome(xml: str | None) -> tuple[float, float] | None:
    """``PhysicalSizeX/Y`` of the first ``Pixels`` element of OME-XML, in microns, when plausible.

    OME's default unit is the micron; other units (``nm``, ``mm``, ``cm``, ...) are converted.
    """
    if not xml or "<" not in xml:
        return None
    m = _OME_PIXELS_RE.search(xml)
    if not m:
        return None
    attrs = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', m.group(1)))

    def size(axis: str) -> float | None:
        raw = attrs.get(f"PhysicalSize{axis}")
        if raw is None:
            return None
        unit = attrs.get(f"PhysicalSize{axis}Unit", "µm").strip()
        factor = _OME_UNITS_UM.get(unit)
        if factor is None:
            return None
        try:
            return float(raw) * factor
        except ValueError:
            return None

    x, y = size("X"), size("Y")
    if x is None and y is None:
        return None
    return plausible_pair(x, y)
