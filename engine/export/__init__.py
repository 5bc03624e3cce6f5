"""ONNX export and verification: ``export_onnx(run_dir, out_path)`` -> a MetaScope model package."""

from engine.export.onnx_export import ExportReport, export_onnx, load_trained

__all__ = ["ExportReport", "export_onnx", "load_trained"]
