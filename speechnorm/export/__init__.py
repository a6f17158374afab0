"""ONNX export of a trained model: the streaming step graph (state in, state out), the offline
graph, and a card that names every tensor. ``export_model`` verifies both graphs in
onnxruntime against PyTorch before it writes anything."""

from .exporter import ExportError, export_model, export_module
from ..graph_io import StateTensor

__all__ = ["ExportError", "StateTensor", "export_model", "export_module"]
