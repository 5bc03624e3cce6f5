"""Typed errors. A :class:`MetaScopeError` is a problem with the user's input: the CLI prints
``error: <message>`` and exits 2, the GUI shows a dialog. Anything else is a bug (exit 1)."""

from __future__ import annotations


class MetaScopeError(Exception):
    """Bad input or an unusable resource; the message is shown to the user as one line."""


class SlideOpenError(MetaScopeError):
    """The file is missing, is not a slide, or is damaged."""


class MissingMppError(MetaScopeError):
    """The slide does not record its microns per pixel and the caller supplied none."""


class NoTissueError(MetaScopeError):
    """No tissue was found on the slide (or in the region of interest)."""


class ModelPackageError(MetaScopeError):
    """The ONNX file is not a usable MetaScope model package."""


class OutputError(MetaScopeError):
    """The output location cannot be written."""


class DatasetError(MetaScopeError):
    """A dataset cannot be read or is unusable for the requested task."""


class ConfigError(MetaScopeError):
    """A configuration value is invalid."""


class Cancelled(Exception):
    """Raised by :meth:`engine.jobs.CancelToken.raise_if_cancelled`; not an error for the user."""
