"""Streaming inference: one API over a checkpoint (PyTorch) and an exported ONNX step graph.

``StreamingEnhancer`` is what ``speechnorm enhance``, the server and the benchmarks use; one
instance holds one stream's state. Models (``load``) are loaded once and shared by many streams.
"""

from .backends import OnnxModel, TorchModel, load
from .engine import AtRate, StreamingEnhancer

__all__ = ["AtRate", "OnnxModel", "StreamingEnhancer", "TorchModel", "load"]
