"""MetaScope engine: everything that computes. Importable and usable without Qt."""

__version__ = "0.1.0"
