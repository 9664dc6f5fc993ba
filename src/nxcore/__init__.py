"""nxcore: typed contracts for autoregressive image generation, and their reference components."""

__version__ = "0.1.0"
