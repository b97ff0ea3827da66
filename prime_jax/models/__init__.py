"""Backbones for Prime: the sub-token embedding, the text transformer and the image U-Net.

Every parameter is boxed with logical axis names (`nn.with_logical_partitioning`), and the main
activations carry `nn.with_logical_constraint` annotations (no-ops without a mesh and rules).
A sharding rule set maps some of these names to mesh axes, e.g.
`(('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'),
('vocab', 'tensor'))`; names without a rule stay unsharded.
"""

from prime_jax.models.attention import ATTENTION_IMPLS, apply_rotary
from prime_jax.models.embedding import COMBINE_MODES, PrimeEmbedding
from prime_jax.models.layers import count_params, timestep_embedding
from prime_jax.models.transformer import (REMAT_POLICIES, PrimeTransformer,
                                          transformer_body_matmul_params)
from prime_jax.models.unet import PrimeUNet

# Logical axis names on parameters.
PARAM_AXES = {
    "vocab": "token values: embedding-table rows (b+1) and head outputs (C)",
    "digit": "digit position j < ℓ of per-digit embedding tables",
    "embed": "model width d_model (also the U-Net attention channel axis)",
    "heads": "attention heads",
    "kv": "width of one attention head",
    "mlp": "transformer MLP hidden width",
    "cond": "conditioning vector c that drives adaLN / scale-shift norm",
    "cond_hidden": "input axis of the second time-embedding layer",
    "freq": "sinusoidal time features",
    "modulation": "which modulation vector (shift, scale, gate, ...)",
    "norm": "LayerNorm / GroupNorm scale and bias",
    "conv_h": "convolution kernel height",
    "conv_w": "convolution kernel width",
    "conv_in": "convolution input channels",
    "conv_out": "convolution output channels (also FiLM outputs)",
    "layers": "stacked transformer blocks when scan_layers=True",
}

# Logical axis names on activations.
ACTIVATION_AXES = {
    "batch": "examples",
    "length": "token positions",
    "embed": "transformer residual stream width",
    "mlp": "transformer MLP hidden activations",
    "vocab": "output logits",
    "height": "U-Net feature-map rows",
    "width": "U-Net feature-map columns",
    "channels": "U-Net feature-map channels",
}

LOGICAL_AXES = {**PARAM_AXES, **ACTIVATION_AXES}

__all__ = [
    "ACTIVATION_AXES", "COMBINE_MODES", "LOGICAL_AXES", "PARAM_AXES", "PrimeEmbedding",
    "PrimeTransformer", "PrimeUNet", "apply_rotary", "count_params", "timestep_embedding",
    "transformer_body_matmul_params", "REMAT_POLICIES", "ATTENTION_IMPLS",
]
