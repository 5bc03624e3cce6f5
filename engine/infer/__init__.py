"""onnxruntime sessions and the streaming heatmap pipeline."""
