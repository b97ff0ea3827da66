"""Pieces shared by the backbones: dense layers, time embedding, conditioning, norms, GELU.

Every parameter is created through `nn.with_logical_partitioning`, so the training code can
shard it by logical-axis rules (names listed in `prime_jax.models.LOGICAL_AXES`).
Shape letters: B batch (B' = 1 for conditioning shared by the batch), R half the sinusoid's
width, F conditioning width (cond_dim), D features.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Array = jax.Array

default_kernel_init = nn.initializers.xavier_uniform()
zeros_init = nn.initializers.zeros
ones_init = nn.initializers.ones


def logical(init: Callable[..., Array], names: Sequence[Optional[str]]) -> Callable[..., Any]:
  """Wraps an initializer so the parameter is boxed with logical axis `names`."""
  return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: Array, names: Sequence[Optional[str]]) -> Array:
  """Logical sharding constraint on an activation; a no-op without a mesh and rules."""
  return nn.with_logical_constraint(x, tuple(names))


def check_positive_ints(module: Any, fields: Sequence[str]) -> None:
  """Raises ValueError naming the module and field when one of `fields` is not an int >= 1."""
  for field in fields:
    value = getattr(module, field)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{type(module).__name__}: {field} must be a positive integer, "
                       f"got {value!r}")


def timestep_embedding(t_B: Array, dim: int, *, max_period: float = 10_000.0,
                       scale: float = 1000.0) -> Array:
  """Sinusoidal features of continuous time t in [0, 1] (scaled by `scale`): (B,) -> (B, dim)."""
  half = dim // 2
  freqs_R = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args_BR = (scale * t_B.astype(jnp.float32))[:, None] * freqs_R[None, :]
  emb = jnp.concatenate([jnp.cos(args_BR), jnp.sin(args_BR)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def modulate(x: Array, shift: Array, scale: Array) -> Array:
  """adaLN / FiLM modulation x * (1 + scale) + shift."""
  return x * (1.0 + scale) + shift


def normalize(x: Array, epsilon: float = 1e-5) -> Array:
  """(x - mean) / sqrt(var + ε) over the last axis, in float32 (LayerNorm without affine).

  Its backward pass is one row reduction and one elementwise pass from the saved output and
  1/σ; autodiff's made XLA:CPU write and read several more (B, L, D) arrays.
  """
  return _normalize(x.astype(jnp.float32), epsilon)  # The cast brings x's dtype back to dx.


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _normalize(x: Array, epsilon: float) -> Array:
  return _normalize_fwd(x, epsilon)[0]


def _normalize_fwd(x, epsilon):
  centred = x - x.mean(-1, keepdims=True)
  inv_std = jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + epsilon)
  x_hat = centred * inv_std
  return x_hat, (x_hat, inv_std)


def _normalize_bwd(epsilon, residuals, g):
  del epsilon
  x_hat, inv_std = residuals
  mean_g = g.mean(-1, keepdims=True)
  mean_gx = (g * x_hat).mean(-1, keepdims=True)
  return (inv_std * (g - mean_g - x_hat * mean_gx),)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)

_GELU_C = math.sqrt(2.0 / math.pi)


@jax.custom_vjp
def gelu_tanh(x: Array) -> Array:
  """GELU in its tanh form (`jax.nn.gelu(approximate=True)`, as MDLM's DiT uses).

  The backward pass recomputes the derivative from x alone, in float32: autodiff saved four
  (B, L, F) intermediates from the forward pass (~25 MB per block at the bytes shape).
  """
  return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
  return jax.nn.gelu(x, approximate=True), x


def _gelu_tanh_bwd(x, g):
  x32 = x.astype(jnp.float32)
  x2 = x32 * x32
  t = jnp.tanh(_GELU_C * x32 * (1.0 + 0.044715 * x2))
  slope = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x2)
  return ((g.astype(jnp.float32) * slope).astype(g.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


def fan_avg_init(num_in_axes: int, ndim: int) -> Callable[..., Array]:
  """Glorot-uniform initializer for a kernel whose first `num_in_axes` axes are contracted."""
  return nn.initializers.variance_scaling(
      1.0, "fan_avg", "uniform", in_axis=tuple(range(num_in_axes)),
      out_axis=tuple(range(num_in_axes, ndim)))


def flat_matmul(x: Array, kernel: Array, num_in_axes: int) -> Array:
  """x (..., in...) contracted with kernel (in..., out...) as one 2-D product (T, K) @ (K, F).

  A contraction over several leading axes makes XLA:CPU compile the weight gradient with a
  transposed copy of the output gradient and a kernel with both operands transposed; over one
  flattened axis it is a plain xᵀ dy product: an MLP block's forward and backward at the bytes
  shape ran 2x faster, the bytes train step about 14% faster.
  """
  lead, k_shape = x.shape[:x.ndim - num_in_axes], kernel.shape[:num_in_axes]
  out_shape = kernel.shape[num_in_axes:]
  y_TF = jnp.dot(x.reshape(math.prod(lead), math.prod(k_shape)),
                 kernel.reshape(math.prod(k_shape), math.prod(out_shape)))
  return y_TF.reshape(lead + out_shape)


class DenseGeneral(nn.Module):
  """Contracts the trailing `num_in_axes` axes of x with a kernel of shape (in..., features...).

  Unlike `nn.DenseGeneral`, the kernel is initialised at its full shape, so logical names with
  one entry per kernel axis stay valid when sharding constraints are active during init.
  `kernel_axes` names the kernel axes; `bias_axes` (None: no bias) names the feature axes.

  Affine maps that are the same for every token fold into the kernel instead of costing a pass
  over the activations: the call computes ((x·in_scale + in_shift) @ kernel + bias)·out_scale,
  as x @ kernel' + bias' with kernel' = in_scale ⊗ out_scale ∘ kernel (one input axis only).
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  bias_axes: Optional[tuple[str, ...]] = None
  num_in_axes: int = 1
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, in_scale: Optional[Array] = None,
               in_shift: Optional[Array] = None, out_scale: Optional[Array] = None) -> Array:
    n_in, features = self.num_in_axes, tuple(self.features)
    kernel_shape = x.shape[x.ndim - n_in:] + features
    if len(self.kernel_axes) != len(kernel_shape):
      raise ValueError(f"kernel_axes {self.kernel_axes} do not match kernel shape {kernel_shape}")
    if (in_scale is not None or in_shift is not None) and n_in != 1:
      raise ValueError("in_scale and in_shift need num_in_axes=1")
    init = zeros_init if self.zero_init else fan_avg_init(n_in, len(kernel_shape))
    kernel = self.param("kernel", logical(init, self.kernel_axes), kernel_shape,
                        self.param_dtype)
    bias = None
    if self.bias_axes is not None:
      bias = self.param("bias", logical(zeros_init, self.bias_axes), features, self.param_dtype)
    kernel, bias = _fold(kernel, bias, n_in, in_scale, in_shift, out_scale)
    y = flat_matmul(x.astype(self.dtype), kernel.astype(self.dtype), n_in)
    return y if bias is None else y + bias.astype(self.dtype)


def _fold(kernel: Array, bias: Optional[Array], n_in: int, in_scale, in_shift, out_scale
          ) -> tuple[Array, Optional[Array]]:
  """The kernel and bias of `DenseGeneral`'s docstring with the three affine maps folded in."""
  out_shape = kernel.shape[n_in:]
  if out_scale is not None:
    out_scale = jnp.reshape(out_scale, out_shape).astype(jnp.float32)
    kernel = kernel * out_scale
    bias = None if bias is None else bias * out_scale
  if in_shift is not None:
    moved = jnp.tensordot(jnp.reshape(in_shift, kernel.shape[:1]).astype(jnp.float32), kernel,
                          axes=1)
    bias = moved if bias is None else bias + moved
  if in_scale is not None:
    kernel = kernel * jnp.reshape(in_scale, kernel.shape[:1] + (1,) * len(out_shape))
  return kernel, bias


class Conditioning(nn.Module):
  """The conditioning vector c that drives adaLN / scale-shift norms: (B, cond_dim), or
  (1, cond_dim) when it does not depend on t (it is then shared by the batch, and the
  transformer folds its modulation into the weights).

  Without time conditioning c is one learned constant (t is ignored); with it,
  c = SiLU(MLP(sinusoid(t))). The constant is initialised with unit normal entries so the
  zero-initialised modulation layers receive gradient from the first step. `zero_time` (only
  without time conditioning) computes the constant as the time MLP at t = 0 instead, as
  MDLM's code does when it feeds σ = 0.
  """

  cond_dim: int
  time_conditioning: bool = False
  frequency_dim: int = 256
  zero_time: bool = False
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t_B: Optional[Array], batch_size: int) -> Array:
    if not self.time_conditioning and not self.zero_time:
      c_F = self.param("constant", logical(nn.initializers.normal(1.0), ("cond",)),
                       (self.cond_dim,), self.param_dtype)
      return c_F.astype(jnp.float32)[None]
    if not self.time_conditioning:
      t_B = jnp.zeros((1,), jnp.float32)
    elif t_B is None:
      raise ValueError("time_conditioning=True but no time t_B was given")
    else:
      t_B = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (batch_size,))
    h = timestep_embedding(t_B, self.frequency_dim)
    h = nn.Dense(self.cond_dim, dtype=jnp.float32, param_dtype=self.param_dtype,
                 kernel_init=logical(default_kernel_init, ("freq", "cond")),
                 bias_init=logical(zeros_init, ("cond",)), name="time_in")(h)
    h = nn.silu(h)
    h = nn.Dense(self.cond_dim, dtype=jnp.float32, param_dtype=self.param_dtype,
                 kernel_init=logical(default_kernel_init, ("cond_hidden", "cond")),
                 bias_init=logical(zeros_init, ("cond",)), name="time_out")(h)
    return nn.silu(h)


class Modulation(nn.Module):
  """Zero-initialised projection of the conditioning vector to `num` vectors of width `features`.

  Returns a tuple of `num` arrays (B, features) (B = c's batch, 1 when shared), float32: the cost
  is per example, not per token.
  """

  num: int
  features: int
  feature_axis: str = "embed"
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, c_BF: Array) -> tuple[Array, ...]:
    out = DenseGeneral(
        (self.num, self.features), ("cond", "modulation", self.feature_axis),
        ("modulation", self.feature_axis), zero_init=True, dtype=jnp.float32,
        param_dtype=self.param_dtype, name="proj")(c_BF)
    return tuple(out[:, i] for i in range(self.num))


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, statistics and output in float32; optional scale γ, no bias.

  With `split`, returns (x̂, γ) unscaled, for a caller that folds γ into the next kernel.
  """

  use_scale: bool = True
  epsilon: float = 1e-5
  split: bool = False
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array | tuple[Array, Optional[Array]]:
    x_hat = normalize(x, self.epsilon)
    scale = _NormScale(self.param_dtype, name="ln")(x.shape[-1]) if self.use_scale else None
    if self.split:
      return x_hat, scale
    return x_hat if scale is None else x_hat * scale


class _NormScale(nn.Module):
  """The γ (D,) of a `LayerNorm`, where checkpoints keep it ('ln/scale')."""

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: int) -> Array:
    return self.param("scale", logical(ones_init, ("norm",)), (features,),
                      self.param_dtype).astype(jnp.float32)


def count_params(params: Any) -> int:
  """Total number of scalars in a (possibly logically boxed) parameter tree."""
  return int(sum(leaf.size for leaf in jax.tree.leaves(nn.meta.unbox(params))))
