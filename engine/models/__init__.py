"""Network architectures and their registry."""
