"""Network architectures and their registry.

``build_model(arch, num_classes, input_size, weights)`` builds any registered network;
``list_architectures()`` lists them with parameter counts. Importing this package does not import
torch (the architectures load when first built).
"""

from engine.models.registry import ArchInfo, architecture_names, build_model, list_architectures

__all__ = ["ArchInfo", "architecture_names", "build_model", "list_architectures"]
