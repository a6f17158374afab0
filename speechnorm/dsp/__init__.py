"""Signal processing shared by training, streaming and export: the causal STFT."""

from .stft import STFT, sqrt_hann

__all__ = ["STFT", "sqrt_hann"]
