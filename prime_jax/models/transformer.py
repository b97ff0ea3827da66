"""The text backbone: MDLM's diffusion transformer ("DiT") over Prime sub-token inputs.

Pre-LayerNorm blocks with adaLN-Zero modulation, rotary position embedding on q and k,
non-causal attention (a `causal` switch serves an autoregressive baseline), GELU MLP, dropout,
final adaLN and a zero-initialised head giving C = code.vocab_size logits per token.

Shape letters: B batch, L length, ℓ digits per token (`y_BLl`), D model width, N heads, H head
width, C token vocabulary, F conditioning width (cond_dim).

Dtype policy: parameters in `param_dtype`; matmuls and attention in `dtype`; LayerNorm
statistics, adaLN modulation and the residual stream in float32; logits in `logits_dtype`.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prime_jax.models.attention import apply_rotary, check_attention_impl, dot_product_attention
from prime_jax.models.embedding import PrimeEmbedding, check_embedding_config
from prime_jax.models.layers import (Conditioning, DenseGeneral, LayerNorm, Modulation,
                                     check_positive_ints, constrain, gelu_tanh, modulate)
from prime_jax.subtokens import PrimeCode

Dtype = Any
ACTIVATION_AXES = ("batch", "length", "embed")
# What a rematerialised block keeps for its backward pass: nothing but its input ("full"), or
# also the outputs of its weight matmuls ("dots": no recomputed projections, and no (L, L)
# attention matrices kept, since those products have batch dimensions).
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def transformer_body_matmul_params(d_model: int, num_layers: int, mlp_ratio: int = 4) -> int:
  """N_body: matmul weights a token passes through in the blocks (q, k, v, out, MLP in/out).

  Forward FLOPs per token ≈ 2·N_body + 2·d_model·C (head) + 4·num_layers·L·d_model (attention
  scores and values, non-causal). adaLN projections act once per sequence and are not counted.
  """
  return num_layers * (4 + 2 * mlp_ratio) * d_model * d_model


def head_params(params: Any) -> tuple[jax.Array, jax.Array]:
  """(kernel (D, C), bias (C,)) of a PrimeTransformer's head, from its 'params' collection."""
  head = nn.meta.unbox(params["head"])
  return head["kernel"], head["bias"]


class DiTBlock(nn.Module):
  """Pre-LN block: x += g1·Attn(mod1(LN(x))); x += g2·MLP(mod2(LN(x))); shifts, scales, g from c.

  When c is shared by the batch (shape (1, F): no time conditioning), the LayerNorm scale, the
  modulation and the gates are per-feature constants, and they fold into the projections'
  kernels and biases (`DenseGeneral`): no (B, L, D) pass is spent on them, forward or backward.
  """

  d_model: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.1
  causal: bool = False
  attention_impl: str = "auto"
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array, c_BF: jax.Array) -> tuple[jax.Array, None]:
    d, n = self.d_model, self.num_heads
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    shift1, scale1, gate1, shift2, scale2, gate2 = Modulation(
        6, d, param_dtype=self.param_dtype, name="adaln")(c_BF)
    shared = c_BF.shape[0] == 1

    # Attention.
    h, fold = self._modulated("norm1", x_BLD, shift1, scale1, shared)
    qkv_kw = dict(features=(n, d // n), kernel_axes=("embed", "heads", "kv"), **dense)
    q_BLNH = DenseGeneral(name="query", **qkv_kw)(h, **fold)
    k_BLNH = DenseGeneral(name="key", **qkv_kw)(h, **fold)
    v_BLNH = DenseGeneral(name="value", **qkv_kw)(h, **fold)
    positions_L = np.arange(x_BLD.shape[1])
    q_BLNH = apply_rotary(q_BLNH, positions_L)
    k_BLNH = apply_rotary(k_BLNH, positions_L)
    a_BLNH = dot_product_attention(q_BLNH, k_BLNH, v_BLNH, causal=self.causal,
                                   impl=self.attention_impl)
    a_BLD = DenseGeneral((d,), ("heads", "kv", "embed"), num_in_axes=2, name="attn_out",
                         **dense)(a_BLNH, out_scale=gate1 if shared else None)
    a_BLD = nn.Dropout(self.dropout, deterministic=self.deterministic)(a_BLD)
    x_BLD = x_BLD + _gated(a_BLD, gate1, shared)
    x_BLD = constrain(x_BLD, ACTIVATION_AXES)

    # MLP.
    h, fold = self._modulated("norm2", x_BLD, shift2, scale2, shared)
    h = DenseGeneral((self.mlp_ratio * d,), ("embed", "mlp"), ("mlp",), name="mlp_in",
                     **dense)(h, **fold)
    h = constrain(h, ("batch", "length", "mlp"))
    h = gelu_tanh(h)
    h = DenseGeneral((d,), ("mlp", "embed"), ("embed",), name="mlp_out",
                     **dense)(h, out_scale=gate2 if shared else None)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
    x_BLD = x_BLD + _gated(h, gate2, shared)
    return constrain(x_BLD, ACTIVATION_AXES), None

  def _modulated(self, name: str, x_BLD: jax.Array, shift: jax.Array, scale: jax.Array,
                 shared: bool) -> tuple[jax.Array, dict]:
    """The next projection's input and what it folds: LN(x)·(1 + scale) + shift in full
    when the modulation is per example; otherwise x̂ alone, the rest left to the kernel."""
    x_hat, gamma = LayerNorm(split=True, param_dtype=self.param_dtype, name=name)(x_BLD)
    if shared:
      return x_hat.astype(self.dtype), dict(in_scale=gamma * (1.0 + scale), in_shift=shift)
    h = modulate(x_hat * gamma, shift[:, None, :], scale[:, None, :])
    return h.astype(self.dtype), {}


def _gated(y_BLD: jax.Array, gate: jax.Array, shared: bool) -> jax.Array:
  """The residual branch in float32, times its gate unless the gate was folded into y's kernel."""
  y_BLD = y_BLD.astype(jnp.float32)
  return y_BLD if shared else gate[:, None, :] * y_BLD


class PrimeTransformer(nn.Module):
  """MDLM-style DiT on Prime sub-tokens: (B, L, ℓ) ints in {0..b} -> (B, L, C) token logits.

  Without `time_conditioning` the adaLN conditioning is a learned constant and `t_B` is ignored
  (the paper's setting); `zero_time_conditioning` makes that constant the time MLP at t = 0
  (the released checkpoints' parameterisation). `remat` rematerialises each block;
  `scan_layers` stacks the blocks' parameters on a leading 'layers' axis and runs them with
  `nn.scan`; `remat_policy` (see REMAT_POLICIES) chooses what a rematerialised block keeps.
  `attention_impl`:
  'auto' (fused cuDNN attention on GPUs with bfloat16/float16 `dtype`, XLA elsewhere), 'xla'
  or 'cudnn'.
  """

  code: PrimeCode
  d_model: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_ratio: int = 4
  dropout: float = 0.1
  cond_dim: int = 128
  time_conditioning: bool = False
  zero_time_conditioning: bool = False
  causal: bool = False
  per_digit_tables: bool = False
  combine: str = "concat"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  logits_dtype: Dtype = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  scan_layers: bool = False
  attention_impl: str = "auto"

  def __post_init__(self):
    name = type(self).__name__
    check_positive_ints(self, ("d_model", "num_layers", "num_heads", "mlp_ratio", "cond_dim"))
    if self.d_model % self.num_heads:
      raise ValueError(f"{name}: d_model={self.d_model} must be divisible by "
                       f"num_heads={self.num_heads}")
    if (self.d_model // self.num_heads) % 2:
      raise ValueError(f"{name}: head dimension d_model/num_heads = "
                       f"{self.d_model}/{self.num_heads} = {self.d_model // self.num_heads} "
                       "must be even for the rotary embedding")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")
    check_embedding_config(self.code, self.d_model, self.per_digit_tables, self.combine,
                           owner=name, features_field="d_model")
    check_attention_impl(self.attention_impl, name)
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"{name}: remat_policy must be one of {tuple(REMAT_POLICIES)}, "
                       f"got {self.remat_policy!r}")
    super().__post_init__()

  def body_matmul_params(self) -> int:
    """N_body of this configuration (see `transformer_body_matmul_params`)."""
    return transformer_body_matmul_params(self.d_model, self.num_layers, self.mlp_ratio)

  @nn.compact
  def __call__(self, y_BLl: jax.Array, t_B: Optional[jax.Array] = None, *,
               train: bool, return_features: bool = False) -> jax.Array:
    """(B, L, C) logits; with `return_features`, the (B, L, D) input of the head instead (for
    `prime_jax.fused_head` with `head_params`). Initialise without it so the head exists."""
    ell = self.code.ell
    if y_BLl.ndim != 3 or y_BLl.shape[-1] != ell:
      raise ValueError(f"{type(self).__name__}: input must have shape (B, L, ℓ={ell}), "
                       f"got {y_BLl.shape}")
    batch = y_BLl.shape[0]
    x_BLD = PrimeEmbedding(self.code, self.d_model, per_digit_tables=self.per_digit_tables,
                           combine=self.combine, dtype=jnp.float32,
                           param_dtype=self.param_dtype, name="embed")(y_BLl)
    x_BLD = constrain(x_BLD, ACTIVATION_AXES)
    c_BF = Conditioning(self.cond_dim, self.time_conditioning,
                        zero_time=self.zero_time_conditioning, param_dtype=self.param_dtype,
                        name="cond")(t_B, batch)

    block_kw = dict(d_model=self.d_model, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                    dropout=self.dropout, causal=self.causal,
                    attention_impl=self.attention_impl, deterministic=not train,
                    dtype=self.dtype, param_dtype=self.param_dtype)
    block_cls = DiTBlock
    if self.remat:
      block_cls = nn.remat(DiTBlock, prevent_cse=not self.scan_layers,
                           policy=REMAT_POLICIES[self.remat_policy])
    if self.scan_layers:
      x_BLD, _ = nn.scan(
          block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=nn.broadcast, length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(name="blocks", **block_kw)(x_BLD, c_BF)
    else:
      for i in range(self.num_layers):
        x_BLD, _ = block_cls(name=f"block_{i}", **block_kw)(x_BLD, c_BF)

    shift, scale = (m[:, None, :] for m in Modulation(2, self.d_model,
                                                       param_dtype=self.param_dtype,
                                                       name="final_adaln")(c_BF))
    h = modulate(LayerNorm(param_dtype=self.param_dtype, name="final_norm")(x_BLD), shift, scale)
    if return_features:
      return constrain(h.astype(self.dtype), ACTIVATION_AXES)
    logits_BLC = DenseGeneral((self.code.vocab_size,), ("embed", "vocab"), ("vocab",),
                              zero_init=True, dtype=self.dtype, param_dtype=self.param_dtype,
                              name="head")(h.astype(self.dtype))
    logits_BLC = constrain(logits_BLC, ("batch", "length", "vocab"))
    return logits_BLC.astype(self.logits_dtype)
