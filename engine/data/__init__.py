"""Patch dataset formats, validation reports and splits."""
