"""Slide readers, tissue detection and tiling."""

from engine.slides.base import ArrayReader, SlideInfo, SlideReader

__all__ = ["ArrayReader", "SlideInfo", "SlideReader"]
