"""ONNX export and verification."""
