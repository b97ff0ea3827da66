"""Attention for the backbones: rotary position embedding and softmax attention.

Shape letters: B batch, L (and S) length, N heads, H head width, R = H/2 rotary pairs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


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


def _scores(q_BNLH: Array, k_BNSH: Array, causal: bool) -> Array:
  scores_BNLS = jnp.einsum("BNLH,BNSH->BNLS", q_BNLH, k_BNSH,
                           preferred_element_type=jnp.float32)
  if causal:
    length = q_BNLH.shape[2]
    scores_BNLS = jnp.where(np.tril(np.ones((length, length), bool)), scores_BNLS, -1e30)
  return scores_BNLS


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_attention(q_BNLH: Array, k_BNSH: Array, v_BNSH: Array, causal: bool) -> Array:
  """softmax(q kᵀ) v with a float32 softmax, heads-major.

  Not differentiated (evaluation, sampling), it normalises the (L, H) output rather than the
  (L, S) probabilities: e v / rowsum(e), e = exp(q kᵀ - rowmax); on a CPU at L = 256, H = 64
  the attention forward ran ~30% faster. Under differentiation the probabilities are kept for
  the backward pass (normalising late there gained nothing), which takes rowsum(dP ∘ P) as
  rowsum(dO ∘ O), a reduction over H instead of over S: the bytes-shape CPU train step is about
  4% faster than with autodiff's softmax backward.
  """
  scores_BNLS = _scores(q_BNLH, k_BNSH, causal)
  e_BNLS = jnp.exp(scores_BNLS - scores_BNLS.max(-1, keepdims=True))
  out_BNLH = jnp.einsum("BNLS,BNSH->BNLH", e_BNLS.astype(v_BNSH.dtype), v_BNSH,
                        preferred_element_type=jnp.float32)
  return (out_BNLH / e_BNLS.sum(-1, keepdims=True)).astype(v_BNSH.dtype)


def _softmax_attention_fwd(q_BNLH, k_BNSH, v_BNSH, causal):
  probs_BNLS = jax.nn.softmax(_scores(q_BNLH, k_BNSH, causal), axis=-1)
  out_BNLH = jnp.einsum("BNLS,BNSH->BNLH", probs_BNLS.astype(v_BNSH.dtype), v_BNSH)
  return out_BNLH, (q_BNLH, k_BNSH, v_BNSH, probs_BNLS, out_BNLH)


def _softmax_attention_bwd(causal, residuals, dout_BNLH):
  del causal  # masked probabilities are exact zeros, so their gradients vanish on their own
  q_BNLH, k_BNSH, v_BNSH, probs_BNLS, out_BNLH = residuals
  dv_BNSH = _over_queries(probs_BNLS.astype(v_BNSH.dtype), dout_BNLH).astype(v_BNSH.dtype)
  dprobs_BNLS = jnp.einsum("BNLH,BNSH->BNLS", dout_BNLH, v_BNSH,
                           preferred_element_type=jnp.float32)
  delta_BNL1 = jnp.sum(dout_BNLH.astype(jnp.float32) * out_BNLH.astype(jnp.float32), axis=-1,
                       keepdims=True)
  dscores_BNLS = (probs_BNLS * (dprobs_BNLS - delta_BNL1)).astype(q_BNLH.dtype)
  dq_BNLH = jnp.einsum("BNLS,BNSH->BNLH", dscores_BNLS, k_BNSH)
  dk_BNSH = _over_queries(dscores_BNLS, q_BNLH).astype(k_BNSH.dtype)
  return dq_BNLH, dk_BNSH, dv_BNSH


def _over_queries(a_BNLS: Array, x_BNLH: Array) -> Array:
  """sum over L of a[L, S] x[L, H], as (xᵀ a)ᵀ: (B, N, S, H) in float32.

  Written directly, both operands are contracted on their row axis, which XLA:CPU ran ~2.5x
  slower than a plain product at the bytes shape (4.7 against 1.9 ms); with xᵀ materialised
  it took 3.2 ms, transposes included. The barriers stop XLA folding them back into the dot.
  """
  xt_BNHL = jax.lax.optimization_barrier(jnp.swapaxes(x_BNLH, -1, -2))
  out_BNHS = jnp.einsum("BNHL,BNLS->BNHS", xt_BNHL, a_BNLS, preferred_element_type=jnp.float32)
  return jnp.swapaxes(jax.lax.optimization_barrier(out_BNHS), -1, -2)


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)
