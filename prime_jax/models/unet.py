"""The image backbone: an ADM-style U-Net over Prime sub-pixel inputs.

Each sub-pixel's ℓ digits are embedded with `PrimeEmbedding` and the embeddings of a pixel's
channels are concatenated along the channel axis. Residual blocks use scale-shift norm
(GroupNorm, then FiLM from the conditioning vector: a learned constant without time input).
Output: C = code.vocab_size logits per pixel channel.

Dtype policy: parameters in `param_dtype`; convolutions and attention in `dtype`; GroupNorm,
FiLM and the residual additions in float32; logits in `logits_dtype`.

Shape suffixes: B batch, H and W height and width, K the channels of a pixel, l its ℓ digits,
C the vocabulary, D feature channels, F the conditioning vector's width (cond_dim), and in
attention L = H·W positions, N heads of E = head_dim features.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prime_jax.models.attention import check_attention_impl, dot_product_attention
from prime_jax.models.embedding import PrimeEmbedding, check_embedding_config
from prime_jax.models.layers import (Conditioning, DenseGeneral, Modulation, check_positive_ints,
                                     constrain, logical, modulate, ones_init, zeros_init)
from prime_jax.subtokens import PrimeCode

Dtype = Any
ACTIVATION_AXES = ("batch", "height", "width", "channels")
CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")
conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class Conv2D(nn.Module):
  """A k×k convolution (cross-correlation, like nn.Conv) with ADM's symmetric padding k // 2.

  XLA:CPU runs convolution gradients as slow generic loops, so on the CPU the convolution is an
  im2col matmul (k·k shifted slices, one dot); elsewhere it is `lax.conv_general_dilated`.
  `impl` = 'auto' | 'lax' | 'im2col'. Parameters are named and shaped as nn.Conv's.
  """

  features: int
  kernel: int
  stride: int = 1
  zero: bool = False
  impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWD: jax.Array) -> jax.Array:
    k, cin = self.kernel, x_BHWD.shape[-1]
    kernel = self.param("kernel", logical(zeros_init if self.zero else conv_init, CONV_AXES),
                        (k, k, cin, self.features), self.param_dtype)
    bias = self.param("bias", logical(zeros_init, ("conv_out",)), (self.features,),
                      self.param_dtype)
    x, kernel = x_BHWD.astype(self.dtype), kernel.astype(self.dtype)
    pad = k // 2
    impl = self.impl
    if impl == "auto":
      impl = "im2col" if jax.default_backend() == "cpu" else "lax"
    if impl == "lax":
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride),
                                       ((pad, pad), (pad, pad)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
      out_h = (x.shape[1] + 2 * pad - k) // self.stride + 1
      out_w = (x.shape[2] + 2 * pad - k) // self.stride + 1
      patches = [xp[:, i:i + self.stride * (out_h - 1) + 1:self.stride,
                    j:j + self.stride * (out_w - 1) + 1:self.stride] for i in range(k)
                 for j in range(k)]
      cols = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]
      y = cols @ kernel.reshape(k * k * cin, self.features)
    return y + bias.astype(self.dtype)


def _conv(features: int, kernel: int, *, dtype: Dtype, param_dtype: Dtype, stride: int = 1,
          zero: bool = False, name: Optional[str] = None) -> Conv2D:
  """Conv with ADM's symmetric padding (kernel // 2) and logically named parameters."""
  return Conv2D(features, kernel, stride=stride, zero=zero, dtype=dtype, param_dtype=param_dtype,
                name=name)


class GroupNorm(nn.Module):
  """GroupNorm in float32 with logically named scale and bias."""

  num_groups: int = 32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=jnp.float32,
                        param_dtype=self.param_dtype,
                        scale_init=logical(ones_init, ("norm",)),
                        bias_init=logical(zeros_init, ("norm",)), name="gn")(x)


class ResBlock(nn.Module):
  """ADM residual block, scale-shift norm: skip(x) + Conv0(Drop(SiLU(FiLM(GN(Conv(SiLU(GN(x)))))))).

  Conv0 is zero-initialised, so the block starts as its skip path.
  """

  features: int
  dropout: float = 0.0
  num_groups: int = 32
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWD: jax.Array, c_BF: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(GroupNorm(self.num_groups, self.param_dtype, name="norm_in")(x_BHWD))
    h = _conv(self.features, 3, name="conv_in", **kw)(h)
    shift, scale = (m[:, None, None, :] for m in Modulation(
        2, self.features, feature_axis="conv_out", param_dtype=self.param_dtype,
        name="film")(c_BF))
    h = modulate(GroupNorm(self.num_groups, self.param_dtype, name="norm_out")(h), shift, scale)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(nn.silu(h))
    h = _conv(self.features, 3, zero=True, name="conv_out", **kw)(h)
    skip = x_BHWD
    if x_BHWD.shape[-1] != self.features:
      skip = _conv(self.features, 1, name="skip", **kw)(x_BHWD)
    return skip.astype(jnp.float32) + h.astype(jnp.float32)


class AttentionBlock(nn.Module):
  """Spatial self-attention with `head_dim`-wide heads; zero-initialised output projection."""

  head_dim: int = 64
  num_groups: int = 32
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWD: jax.Array) -> jax.Array:
    b, hh, ww, d = x_BHWD.shape
    n = d // self.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = GroupNorm(self.num_groups, self.param_dtype, name="norm")(x_BHWD)
    h_BLD = h.reshape(b, hh * ww, d).astype(self.dtype)
    qkv_kw = dict(features=(n, self.head_dim), kernel_axes=("embed", "heads", "kv"),
                  bias_axes=("heads", "kv"), **kw)
    q = DenseGeneral(name="query", **qkv_kw)(h_BLD)
    k = DenseGeneral(name="key", **qkv_kw)(h_BLD)
    v = DenseGeneral(name="value", **qkv_kw)(h_BLD)
    a_BLNE = dot_product_attention(q, k, v, impl=self.attention_impl)
    out_BLD = DenseGeneral((d,), ("heads", "kv", "embed"), ("embed",), num_in_axes=2,
                           zero_init=True, name="out", **kw)(a_BLNE)
    return x_BHWD.astype(jnp.float32) + out_BLD.reshape(b, hh, ww, d).astype(jnp.float32)


class PrimeUNet(nn.Module):
  """ADM-style U-Net on Prime sub-pixels: (B, H, W, K, ℓ) ints in {0..b} -> (B, H, W, K, C) logits.

  K = image_channels. `attn_resolutions` are feature-map sizes (in pixels) that get
  self-attention; the middle block always has it. `emb_features` is the embedding width per
  pixel channel (default ch // K rounded down to a multiple of ℓ). t_B is ignored unless
  `time_conditioning`. `attention_impl` as in `PrimeTransformer`. `input_conv=False` feeds the
  embedding to the first block as it is (it must then be ch·ch_mult[0] wide);
  `resample_conv=False` resamples without convolutions (2×2 average pooling down, nearest
  neighbours up), as the released image checkpoints do.
  """

  code: PrimeCode
  image_channels: int = 3
  ch: int = 96
  ch_mult: Sequence[int] = (3, 4, 4)
  num_res_blocks: int = 5
  attn_resolutions: Sequence[int] = (16,)
  head_dim: int = 64
  dropout: float = 0.4
  time_conditioning: bool = False
  emb_features: Optional[int] = None
  per_digit_tables: bool = False
  combine: str = "concat"
  norm_groups: int = 32
  input_conv: bool = True
  resample_conv: bool = True
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  logits_dtype: Dtype = jnp.float32

  def __post_init__(self):
    name = type(self).__name__
    check_positive_ints(self, ("image_channels", "ch", "num_res_blocks", "head_dim", "norm_groups"))
    if not self.ch_mult or any(not isinstance(m, int) or m < 1 for m in self.ch_mult):
      raise ValueError(f"{name}: ch_mult must be a non-empty sequence of positive integers, "
                       f"got {self.ch_mult!r}")
    for m in self.ch_mult:
      if (self.ch * m) % self.norm_groups:
        raise ValueError(f"{name}: every channel count ch*ch_mult = {self.ch}*{m} must be "
                         f"divisible by norm_groups={self.norm_groups}")
    middle = self.ch * self.ch_mult[-1]
    if middle % self.head_dim:
      raise ValueError(f"{name}: middle-block channels ch*ch_mult[-1] = {middle} must be "
                       f"divisible by head_dim={self.head_dim}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")
    check_embedding_config(self.code, self.embedding_features, self.per_digit_tables,
                           self.combine, owner=name, features_field="emb_features")
    first = self.ch * self.ch_mult[0]
    if not self.input_conv and self.image_channels * self.embedding_features != first:
      raise ValueError(f"{name}: input_conv=False needs image_channels*emb_features = "
                       f"{self.image_channels}*{self.embedding_features} to equal "
                       f"ch*ch_mult[0] = {first}")
    check_attention_impl(self.attention_impl, name)
    super().__post_init__()

  @property
  def embedding_features(self) -> int:
    """Embedding width per pixel channel."""
    if self.emb_features is not None:
      return self.emb_features
    ell = self.code.ell
    return max(ell, (self.ch // self.image_channels) // ell * ell)

  @property
  def cond_dim(self) -> int:
    return 4 * self.ch

  def _check_input(self, y: jax.Array) -> None:
    """Shape checks done before any parameter is touched."""
    name, ell, k = type(self).__name__, self.code.ell, self.image_channels
    if y.ndim != 5 or y.shape[-2:] != (k, ell):
      raise ValueError(f"{name}: input must have shape (B, H, W, image_channels={k}, ℓ={ell}), "
                       f"got {y.shape}")
    factor = 2 ** (len(self.ch_mult) - 1)
    height, width = y.shape[1:3]
    if height % factor or width % factor:
      raise ValueError(f"{name}: H={height} and W={width} must be divisible by "
                       f"2**(len(ch_mult)-1) = {factor}")
    for level, m in enumerate(self.ch_mult):
      res = height // 2**level
      if res in self.attn_resolutions and (self.ch * m) % self.head_dim:
        raise ValueError(f"{name}: attention at resolution {res} needs ch*ch_mult[{level}] = "
                         f"{self.ch * m} divisible by head_dim={self.head_dim}")

  @nn.compact
  def __call__(self, y_BHWKl: jax.Array, t_B: Optional[jax.Array] = None, *,
               train: bool) -> jax.Array:
    self._check_input(y_BHWKl)
    b, height, width, k, _ = y_BHWKl.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res_kw = dict(dropout=self.dropout, num_groups=self.norm_groups, deterministic=not train, **kw)
    attn_kw = dict(head_dim=self.head_dim, num_groups=self.norm_groups,
                   attention_impl=self.attention_impl, **kw)

    e = PrimeEmbedding(self.code, self.embedding_features, per_digit_tables=self.per_digit_tables,
                       combine=self.combine, dtype=jnp.float32, param_dtype=self.param_dtype,
                       name="embed")(y_BHWKl)
    h = e.reshape(b, height, width, k * self.embedding_features)
    c_BF = Conditioning(self.cond_dim, self.time_conditioning, param_dtype=self.param_dtype,
                        name="cond")(t_B, b)

    if self.input_conv:
      h = _conv(self.ch * self.ch_mult[0], 3, name="conv_in", **kw)(h)
    skips = [h]
    for level, m in enumerate(self.ch_mult):
      res = height // 2**level
      for i in range(self.num_res_blocks):
        h = ResBlock(self.ch * m, name=f"down_{level}_res_{i}", **res_kw)(h, c_BF)
        if res in self.attn_resolutions:
          h = AttentionBlock(name=f"down_{level}_attn_{i}", **attn_kw)(h)
        h = constrain(h, ACTIVATION_AXES)
        skips.append(h)
      if level != len(self.ch_mult) - 1:
        if self.resample_conv:
          h = _conv(h.shape[-1], 3, stride=2, name=f"down_{level}_downsample", **kw)(h)
        else:
          h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        skips.append(h)

    h = ResBlock(h.shape[-1], name="mid_res_0", **res_kw)(h, c_BF)
    h = AttentionBlock(name="mid_attn", **attn_kw)(h)
    h = ResBlock(h.shape[-1], name="mid_res_1", **res_kw)(h, c_BF)

    for level in reversed(range(len(self.ch_mult))):
      res = height // 2**level
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h.astype(jnp.float32), skips.pop().astype(jnp.float32)], axis=-1)
        h = ResBlock(self.ch * self.ch_mult[level], name=f"up_{level}_res_{i}", **res_kw)(h, c_BF)
        if res in self.attn_resolutions:
          h = AttentionBlock(name=f"up_{level}_attn_{i}", **attn_kw)(h)
        h = constrain(h, ACTIVATION_AXES)
      if level:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        if self.resample_conv:
          h = _conv(h.shape[-1], 3, name=f"up_{level}_upsample", **kw)(h)

    h = nn.silu(GroupNorm(self.norm_groups, self.param_dtype, name="norm_out")(h))
    logits = _conv(k * self.code.vocab_size, 3, zero=True, name="conv_out", **kw)(h)
    logits = logits.reshape(b, height, width, k, self.code.vocab_size)
    return logits.astype(self.logits_dtype)
