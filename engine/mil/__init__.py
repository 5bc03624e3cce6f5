"""Slide-level prediction: feature extraction and attention MIL with clinical fusion."""
