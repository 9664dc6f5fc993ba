"""Decoder building blocks: the Qwen2.5 pre-norm layer NextFlow and NextStep-1 are made of (RMSNorm,
GQA attention with optional qk-norm and a KV cache, SwiGLU MLP) and the AdaLN blocks of
NextStep-1's flow-matching head. Every block calls the public ``nxkernels`` ops and never picks a
kernel backend itself; parameter names match the official checkpoints."""

from nxcore.nn.adaln import AdaLNFinalLayer, AdaLNResBlock, fold_affine
from nxcore.nn.attention import Attention, causal_mask
from nxcore.nn.cache import KVCache
from nxcore.nn.decoder import DecoderLayer, DecoderLayerConfig, forward_layers
from nxcore.nn.grid_refiner import GridRefiner
from nxcore.nn.mlp import SwiGLUMLP
from nxcore.nn.norm import RMSNorm

__all__ = [
    "AdaLNFinalLayer",
    "AdaLNResBlock",
    "Attention",
    "DecoderLayer",
    "DecoderLayerConfig",
    "GridRefiner",
    "KVCache",
    "RMSNorm",
    "SwiGLUMLP",
    "causal_mask",
    "fold_affine",
    "forward_layers",
]
