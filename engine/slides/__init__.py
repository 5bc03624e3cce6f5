"""Slide readers, tissue detection and tiling.

Public API: :func:`open_slide` (picks the backend), :func:`detect_tissue` (thumbnail-scale
mask), :func:`plan_tiles` (coordinates at a model's mpp) and :func:`read_tile` (pixels of one tile).
"""

from engine.slides.base import ArrayReader, SlideInfo, SlideReader
from engine.slides.open import open_slide
from engine.slides.tiling import TilePlan, TilingConfig, plan_tiles, read_tile
from engine.slides.tissue import TissueMask, detect_tissue

__all__ = [
    "ArrayReader",
    "SlideInfo",
    "SlideReader",
    "TilePlan",
    "TilingConfig",
    "TissueMask",
    "detect_tissue",
    "open_slide",
    "plan_tiles",
    "read_tile",
]
