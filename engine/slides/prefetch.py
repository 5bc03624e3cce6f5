"""Decoding a pyramid level from both ends: a helper thread ahead of a whole-level read.

A thumbnail reads one pyramid level whole (a few hundred stored JPEG tiles) on the calling
thread, one tile after another. Readers with a decoded-tile cache (the tifffile path of
:mod:`engine.slides.fast_reader`) can decode the same level's tiles from the other end on a
helper thread meanwhile (the decoders release the GIL): the read then finds them decoded. The
pixels are the same: each tile is decoded once, by whichever thread gets to it first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def prefetching(reader: Any, level: int) -> Iterator[None]:
    """Within the block, ``reader.prefetch_level(level, stop)`` runs on a helper thread.

    Leaving the block stops and joins it, so no thread outlives the read; an exception of the
    helper is raised here when the block itself raised none. Readers without ``prefetch_level``
    get no thread.
    """
    prefetch = getattr(reader, "prefetch_level", None)
    if not callable(prefetch):
        yield
        return
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            prefetch(level, stop)
        except BaseException as exc:  # raised in the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name="metascope-prefetch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
