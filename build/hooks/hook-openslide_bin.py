"""PyInstaller hook: bundle OpenSlide's native library shipped by the ``openslide-bin`` wheel.

``openslide-bin`` carries ``libopenslide.so.1`` (``.dylib`` / ``.dll`` elsewhere) as package data,
and ``openslide-python`` loads it at run time by path, so PyInstaller's import analysis never sees
it. The library goes back into an ``openslide_bin/`` folder inside the bundle, where
``openslide_bin``'s own loader looks for it.
"""

from PyInstaller.utils.hooks import collect_dynamic_libs

binaries = collect_dynamic_libs("openslide_bin", search_patterns=["*.so*", "*.dylib", "*.dll"])
