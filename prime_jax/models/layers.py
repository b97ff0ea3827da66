"""Pieces shared by the backbones: rotary embedding, time embedding, conditioning, norms.

Every parameter is created through `nn.with_logical_partitioning`, so the training code can
shard it by logical-axis rules (names listed in `prime_jax.models.LOGICAL_AXES`).
Shape letters: B batch, L length, N heads, H head width, R = H/2 rotary pairs (or half the
sinusoid's width), F conditioning width (cond_dim).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def apply_rotary(x_BLNH: Array, positions_L: Array, *, max_wavelength: float = 10_000.0) -> Array:
  """Rotary position embedding on the last axis (even size H), half-split convention.

  Pairs (i, i + H/2) are rotated by angle `position * max_wavelength**(-2i/H)`; so
  <rot(q, m), rot(k, n)> depends on m - n only. Computed in float32, returned in x's dtype.
  NumPy positions make the cos/sin tables constants (see `rotary_tables`).
  """
  head_dim = x_BLNH.shape[-1]
  if head_dim % 2:
    raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
  half = head_dim // 2
  cos_L1R, sin_L1R = rotary_tables(positions_L, half, max_wavelength)
  x = x_BLNH.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos_L1R - x2 * sin_L1R, x2 * cos_L1R + x1 * sin_L1R], axis=-1)
  return out.astype(x_BLNH.dtype)


def rotary_tables(positions_L: Array, half: int, max_wavelength: float) -> tuple[Array, Array]:
  """cos and sin (L, 1, R) of the rotary angles, float32. For NumPy positions they are computed
  in float64 at trace time: as traced values XLA:CPU fused cos/sin into every (B, L, N, H)
  element of the rotation and its gradient (~10% of the bytes-shape train step)."""
  if isinstance(positions_L, np.ndarray):
    inv_freq_R = max_wavelength ** (-np.arange(half, dtype=np.float64) / half)
    angles_LR = positions_L.astype(np.float64)[:, None] * inv_freq_R[None, :]
    return (np.cos(angles_LR)[:, None, :].astype(np.float32),
            np.sin(angles_LR)[:, None, :].astype(np.float32))
  inv_freq_R = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_LR = positions_L.astype(jnp.float32)[:, None] * inv_freq_R[None, :]
  return jnp.cos(angles_LR)[:, None, :], jnp.sin(angles_LR)[:, None, :]


ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def check_attention_impl(impl: str, owner: str) -> None:
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"{owner}: attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")


def check_positive_ints(module: Any, fields: Sequence[str]) -> None:
  """Raises ValueError naming the module and field when one of `fields` is not an int >= 1."""
  for field in fields:
    value = getattr(module, field)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{type(module).__name__}: {field} must be a positive integer, "
                       f"got {value!r}")


def dot_product_attention(q_BLNH: Array, k_BLNH: Array, v_BLNH: Array, *, causal: bool = False,
                          impl: str = "auto") -> Array:
  """Softmax attention: the fused cuDNN kernel of `jax.nn.dot_product_attention` where it applies.

  'auto' asks for cuDNN on a GPU with half-precision inputs and head size <= 128 (a multiple of
  8), and otherwise (or when cuDNN refuses at trace time) uses two einsums with a float32
  softmax, which XLA:CPU runs about 20% faster than jax's generic XLA path. 'xla' and 'cudnn'
  force `jax.nn.dot_product_attention` with that implementation.
  """
  kw = dict(is_causal=causal)
  if impl == "auto":
    head_dim = q_BLNH.shape[-1]
    if (jax.default_backend() == "gpu" and q_BLNH.dtype in (jnp.bfloat16, jnp.float16)
        and head_dim <= 128 and head_dim % 8 == 0):
      try:
        return jax.nn.dot_product_attention(q_BLNH, k_BLNH, v_BLNH, implementation="cudnn", **kw)
      except (RuntimeError, NotImplementedError, ValueError):
        pass
    return _einsum_attention(q_BLNH, k_BLNH, v_BLNH, causal)
  return jax.nn.dot_product_attention(q_BLNH, k_BLNH, v_BLNH, implementation=impl, **kw)


def _einsum_attention(q_BLNH: Array, k_BLNH: Array, v_BLNH: Array, causal: bool) -> Array:
  to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # (B, L, N, H) <-> (B, N, L, H)
  scaled_q = q_BLNH * q_BLNH.shape[-1] ** -0.5
  return to_heads(_softmax_attention(to_heads(scaled_q), to_heads(k_BLNH), to_heads(v_BLNH),
                                     causal))


def _attention_probs(q_BNLH: Array, k_BNSH: Array, causal: bool) -> Array:
  scores_BNLS = jnp.einsum("BNLH,BNSH->BNLS", q_BNLH, k_BNSH,
                           preferred_element_type=jnp.float32)
  if causal:
    length = q_BNLH.shape[2]
    scores_BNLS = jnp.where(np.tril(np.ones((length, length), bool)), scores_BNLS, -1e30)
  return jax.nn.softmax(scores_BNLS, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_attention(q_BNLH: Array, k_BNSH: Array, v_BNSH: Array, causal: bool) -> Array:
  """softmax(q kᵀ) v with a float32 softmax, heads-major. The backward pass takes rowsum(dP ∘ P)
  as rowsum(dO ∘ O), a reduction over H instead of over S: the bytes-shape CPU train step is
  about 4% faster than with autodiff's softmax backward."""
  return _softmax_attention_fwd(q_BNLH, k_BNSH, v_BNSH, causal)[0]


def _softmax_attention_fwd(q_BNLH, k_BNSH, v_BNSH, causal):
  probs_BNLS = _attention_probs(q_BNLH, k_BNSH, causal)
  out_BNLH = jnp.einsum("BNLS,BNSH->BNLH", probs_BNLS.astype(v_BNSH.dtype), v_BNSH)
  return out_BNLH, (q_BNLH, k_BNSH, v_BNSH, probs_BNLS, out_BNLH)


def _softmax_attention_bwd(causal, residuals, dout_BNLH):
  del causal  # masked probabilities are exact zeros, so their gradients vanish on their own
  q_BNLH, k_BNSH, v_BNSH, probs_BNLS, out_BNLH = residuals
  dv_BNSH = jnp.einsum("BNLS,BNLH->BNSH", probs_BNLS.astype(v_BNSH.dtype), dout_BNLH)
  dprobs_BNLS = jnp.einsum("BNLH,BNSH->BNLS", dout_BNLH, v_BNSH,
                           preferred_element_type=jnp.float32)
  delta_BNL1 = jnp.sum(dout_BNLH.astype(jnp.float32) * out_BNLH.astype(jnp.float32), axis=-1,
                       keepdims=True)
  dscores_BNLS = (probs_BNLS * (dprobs_BNLS - delta_BNL1)).astype(q_BNLH.dtype)
  dq_BNLH = jnp.einsum("BNLS,BNSH->BNLH", dscores_BNLS, k_BNSH)
  dk_BNSH = jnp.einsum("BNLS,BNLH->BNSH", dscores_BNLS, q_BNLH)
  return dq_BNLH, dk_BNSH, dv_BNSH


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


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
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  bias_axes: Optional[tuple[str, ...]] = None
  num_in_axes: int = 1
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n_in, features = self.num_in_axes, tuple(self.features)
    kernel_shape = x.shape[x.ndim - n_in:] + features
    if len(self.kernel_axes) != len(kernel_shape):
      raise ValueError(f"kernel_axes {self.kernel_axes} do not match kernel shape {kernel_shape}")
    init = zeros_init if self.zero_init else fan_avg_init(n_in, len(kernel_shape))
    kernel = self.param("kernel", logical(init, self.kernel_axes), kernel_shape,
                        self.param_dtype)
    y = flat_matmul(x.astype(self.dtype), kernel.astype(self.dtype), n_in)
    if self.bias_axes is not None:
      bias = self.param("bias", logical(zeros_init, self.bias_axes), features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class Conditioning(nn.Module):
  """The conditioning vector c (B, cond_dim) that drives adaLN / scale-shift norms.

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
      return jnp.broadcast_to(c_F.astype(jnp.float32), (batch_size, self.cond_dim))
    if not self.time_conditioning:
      t_B = jnp.zeros((batch_size,), jnp.float32)
    elif t_B is None:
      raise ValueError("time_conditioning=True but no time t_B was given")
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

  Returns a tuple of `num` arrays (B, features), float32 (the cost is per example, not per token).
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
  """LayerNorm over the last axis, statistics and output in float32; optional scale, no bias."""

  use_scale: bool = True
  epsilon: float = 1e-5
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return nn.LayerNorm(epsilon=self.epsilon, use_bias=False, use_scale=self.use_scale,
                        dtype=jnp.float32, param_dtype=self.param_dtype,
                        scale_init=logical(ones_init, ("norm",)), name="ln")(x)


def count_params(params: Any) -> int:
  """Total number of scalars in a (possibly logically boxed) parameter tree."""
  return int(sum(leaf.size for leaf in jax.tree.leaves(nn.meta.unbox(params))))
