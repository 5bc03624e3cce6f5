"""Which edition this installation is: the viewer (no PyTorch) or the full one with training.

The viewer installer (``build/metascope.spec``, flavour ``viewer``) leaves PyTorch out. Whether it
is there is asked of the import system without importing it: importing torch takes seconds.
"""

from __future__ import annotations

import importlib.util

# What training (and torch-based export) cannot run without.
TRAINING_MODULES = ("torch",)


def training_available() -> bool:
    """True when this installation can train models (PyTorch is installed), without importing it."""
    for name in TRAINING_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # a broken or half-removed package counts as absent
            return False
    return True
