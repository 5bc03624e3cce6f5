"""Slide readers, tissue detection and tiling.

Public API: :func:`open_slide` (picks the backend), :func:`plan_slide` (the one tile planner:
tissue mask, grid at the analysis mpp, optional ROI, tile cap), :func:`plan_tiles` (its grid step,
given a mask), :func:`detect_tissue` (thumbnail-scale mask) and :func:`read_tile` (pixels of one
tile).
"""

from engine.slides.base import ArrayReader, SlideInfo, SlideReader
from engine.slides.open import open_slide
from engine.slides.tiling import (
    TilePlan,
    TilingConfig,
    TissueSettings,
    plan_slide,
    plan_tiles,
    read_tile,
    slide_tissue,
)
from engine.slides.tissue import TissueMask, detect_tissue

__all__ = [
    "ArrayReader",
    "SlideInfo",
    "SlideReader",
    "TilePlan",
    "TilingConfig",
    "TissueMask",
    "TissueSettings",
    "detect_tissue",
    "open_slide",
    "plan_slide",
    "plan_tiles",
    "read_tile",
    "slide_tissue",
]
