"""speechnorm: multi-channel streaming speech enhancement with Online Normalization."""

__version__ = "0.1.0"
