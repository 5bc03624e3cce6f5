"""Training loop, callbacks, checkpoints, metrics."""
