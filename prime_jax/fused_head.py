"""The output head fused with the objectives: token logits are formed one vocabulary chunk at a time.

`logits = h @ W + b` of shape (N, C) is never held. A loop over chunks of the C token values keeps
a streaming log-sum-exp per token of (a) every token consistent with the visible digits (all C
without carry-over), (b) the clean token's logit, and (c) for each digit j, the consistent tokens
whose digit j equals the clean digit — the masked-digit marginal μ^j(x0_j) is (c_j) / (a). Every
objective in `objectives` is a simple function of these `HeadStats`; a custom VJP recomputes each
chunk's logits in the backward pass. Values equal `objectives.*` on `h @ W + b`.
Shape letters: N tokens (batch and positions flattened), D width, C vocabulary, K chunk width,
ℓ digits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from prime_jax.objectives import NEG_INF
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

# Each chunk holds a few (N, chunk) float32 arrays at a time (more for the valid bound at large ℓ
# where the backend does not fuse its ℓ per-digit reductions): choose the chunk for N.
DEFAULT_CHUNK_SIZE = 4096
# Same clamp as objectives._masked_digit_nll: a digit marginal is at least 1e-37 (~85 nats).
_MIN_MARGINAL = 1e-37


class HeadStats(NamedTuple):
  """Per-token statistics of the head's logits z, restricted to the consistent set A(y).

  log_z (...,): log Σ_{c∈A} e^{z_c}. target (...,): z_{x0}. log_hit (..., ℓ) (or (..., 0) when
  not asked for): log Σ_{c∈A, c_j = x0_j} e^{z_c}, at least log_z + log 1e-37.
  """

  log_z: jax.Array
  target: jax.Array
  log_hit: jax.Array


@dataclasses.dataclass(frozen=True)
class _Static:
  code: PrimeCode
  chunk_size: int
  with_hits: bool
  compute_dtype: Any

  @property
  def num_chunks(self) -> int:
    return -(-self.code.vocab_size // self.chunk_size)


def _chunk(st: _Static, k, h_ND, kernel_DC, bias_C, x0_N, y_Nl):
  """Chunk k: its first code, kernel slice, float32 logits (N, K) and masks.

  The last chunk starts at C - K, so it may overlap the one before; codes already covered are
  excluded (`fresh`), so no padding of the kernel is ever needed.
  """
  code, size = st.code, st.chunk_size
  start = jnp.minimum(k * size, code.vocab_size - size)
  w_DK = jax.lax.dynamic_slice_in_dim(kernel_DC, start, size, axis=1).astype(st.compute_dtype)
  b_K = jax.lax.dynamic_slice_in_dim(bias_C, start, size)
  z_NK = jnp.dot(h_ND, w_DK, preferred_element_type=jnp.float32) + b_K.astype(jnp.float32)
  codes_K = start + jnp.arange(size)
  fresh_K = codes_K >= k * size
  digits = [(codes_K // code.base ** (code.ell - 1 - j)) % code.base for j in range(code.ell)]
  keep_NK = jnp.broadcast_to(fresh_K, z_NK.shape)
  if y_Nl is not None:
    for j, d_K in enumerate(digits):
      y_j = y_Nl[:, j, None]
      keep_NK = keep_NK & ((y_j == code.mask_value) | (y_j == d_K))
  hits = []
  if st.with_hits:
    x0_digits = code.encode(x0_N)
    hits = [x0_digits[:, j, None] == d_K for j, d_K in enumerate(digits)]
  target_NK = fresh_K & (codes_K == x0_N[:, None])
  return start, w_DK, z_NK, keep_NK, hits, target_NK


def _stats_fwd(st: _Static, h_ND, kernel_DC, bias_C, x0_N, y_Nl):
  """The forward loop: running max m, and sums scaled by e^{-m} of the consistent set and hits."""
  n, ell = h_ND.shape[0], st.code.ell if st.with_hits else 0
  h_ND = h_ND.astype(st.compute_dtype)

  def body(k, carry):
    m_N, s_N, hit_Nl, tgt_N = carry
    _, _, z_NK, keep_NK, hits, target_NK = _chunk(st, k, h_ND, kernel_DC, bias_C, x0_N, y_Nl)
    m_new = jnp.maximum(m_N, jnp.where(keep_NK, z_NK, NEG_INF).max(-1))
    e_NK = jnp.where(keep_NK, jnp.exp(z_NK - m_new[:, None]), 0.0)
    scale_N = jnp.exp(m_N - m_new)
    s_N = s_N * scale_N + e_NK.sum(-1)
    if hits:
      new_hits = jnp.stack([jnp.where(hit, e_NK, 0.0).sum(-1) for hit in hits], axis=-1)
      hit_Nl = hit_Nl * scale_N[:, None] + new_hits
    tgt_N = tgt_N + jnp.where(target_NK, z_NK, 0.0).sum(-1)
    return m_new, s_N, hit_Nl, tgt_N

  zeros = jnp.zeros((n,), jnp.float32)
  init = (jnp.full((n,), NEG_INF, jnp.float32), zeros, jnp.zeros((n, ell), jnp.float32), zeros)
  m_N, s_N, hit_Nl, tgt_N = jax.lax.fori_loop(0, st.num_chunks, body, init)
  log_z = m_N + jnp.log(s_N)
  log_hit = m_N[:, None] + jnp.log(jnp.maximum(hit_Nl, _MIN_MARGINAL * s_N[:, None]))
  return HeadStats(log_z, tgt_N, log_hit)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _head_stats(st: _Static, h_ND, kernel_DC, bias_C, x0_N, y_Nl):
  return _stats_fwd(st, h_ND, kernel_DC, bias_C, x0_N, y_Nl)


def _head_stats_fwd(st, h_ND, kernel_DC, bias_C, x0_N, y_Nl):
  stats = _stats_fwd(st, h_ND, kernel_DC, bias_C, x0_N, y_Nl)
  return stats, (h_ND, kernel_DC, bias_C, x0_N, y_Nl, stats)


def _head_stats_bwd(st, res, g):
  """dz_c = p_c (g_log_z + Σ_j [c_j = x0_j] g_log_hit_j / μ_j) + [c = x0] g_target, chunk by chunk.

  μ_j is the clamped marginal, exactly as objectives._masked_digit_nll uses it.
  """
  h_ND, kernel_DC, bias_C, x0_N, y_Nl, stats = res
  g_log_z, g_target, g_log_hit = (jnp.asarray(a, jnp.float32) for a in g)
  ratio_Nl = g_log_hit / jnp.exp(stats.log_hit - stats.log_z[:, None])
  h_c = h_ND.astype(st.compute_dtype)

  def body(k, carry):
    dh_ND, dw_DC, db_C = carry
    start, w_DK, z_NK, keep_NK, hits, target_NK = _chunk(st, k, h_c, kernel_DC, bias_C, x0_N,
                                                          y_Nl)
    coef_NK = g_log_z[:, None]
    for j, hit in enumerate(hits):
      coef_NK = coef_NK + jnp.where(hit, ratio_Nl[:, j, None], 0.0)
    p_NK = jnp.where(keep_NK, jnp.exp(z_NK - stats.log_z[:, None]), 0.0)
    dz_NK = p_NK * coef_NK + jnp.where(target_NK, g_target[:, None], 0.0)
    db_C = _add_slice(db_C, dz_NK.sum(0), start, axis=0)
    dz_NK = dz_NK.astype(st.compute_dtype)
    dh_ND = dh_ND + jnp.dot(dz_NK, w_DK.T, preferred_element_type=jnp.float32)
    dw_DK = jnp.dot(h_c.T, dz_NK, preferred_element_type=jnp.float32)
    return dh_ND, _add_slice(dw_DC, dw_DK, start, axis=1), db_C

  init = (jnp.zeros(h_ND.shape, jnp.float32), jnp.zeros(kernel_DC.shape, jnp.float32),
          jnp.zeros(bias_C.shape, jnp.float32))
  dh_ND, dw_DC, db_C = jax.lax.fori_loop(0, st.num_chunks, body, init)
  return (dh_ND.astype(h_ND.dtype), dw_DC.astype(kernel_DC.dtype), db_C.astype(bias_C.dtype),
          None, None)


def _add_slice(total, part, start, axis: int):
  """total[..., start:start + K, ...] += part along `axis`, in place inside a loop."""
  current = jax.lax.dynamic_slice_in_dim(total, start, part.shape[axis], axis=axis)
  return jax.lax.dynamic_update_slice_in_dim(total, current + part, start, axis=axis)


_head_stats.defvjp(_head_stats_fwd, _head_stats_bwd)


def _check(code: PrimeCode, h, kernel_DC, bias_C, x0, y, chunk_size) -> None:
  """ValueError naming the argument whose shape or value does not fit the code and the others."""
  if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
  if kernel_DC.ndim != 2 or kernel_DC.shape[1] != code.vocab_size:
    raise ValueError(f"kernel must have shape (D, C={code.vocab_size}), got {kernel_DC.shape}")
  if bias_C is not None and bias_C.shape != (code.vocab_size,):
    raise ValueError(f"bias must have shape (C={code.vocab_size},), got {bias_C.shape}")
  if h.shape[-1:] != kernel_DC.shape[:1]:
    raise ValueError(f"features must end in D={kernel_DC.shape[0]} (the kernel's first axis), "
                     f"got shape {h.shape}")
  if x0.shape != h.shape[:-1]:
    raise ValueError(f"x0 must have the features' leading shape {h.shape[:-1]}, got {x0.shape}")
  if y is not None and y.shape != x0.shape + (code.ell,):
    raise ValueError(f"y must have shape {x0.shape + (code.ell,)} (x0's shape + (ℓ,)), "
                     f"got {y.shape}")


def head_stats(code: PrimeCode, h: jax.Array, kernel_DC: jax.Array, bias_C: jax.Array,
               x0: jax.Array, y: Optional[jax.Array] = None, *,
               chunk_size: int = DEFAULT_CHUNK_SIZE, with_hits: bool = True,
               compute_dtype: Optional[Any] = None) -> HeadStats:
  """`HeadStats` of the logits h @ kernel + bias (h: (..., D)), restricted by y (..., ℓ) if given.

  Matmuls run in `compute_dtype` (default: that of h and kernel) with float32 accumulation; the
  log-sum-exps are float32. `with_hits=False` skips the per-digit sums (token objectives only).
  """
  h, kernel_DC, x0 = jnp.asarray(h), jnp.asarray(kernel_DC), jnp.asarray(x0)
  y = None if y is None else jnp.asarray(y)
  bias_C = None if bias_C is None else jnp.asarray(bias_C)
  _check(code, h, kernel_DC, bias_C, x0, y, chunk_size)
  if bias_C is None:
    bias_C = jnp.zeros((code.vocab_size,), kernel_DC.dtype)
  dtype = jnp.result_type(h, kernel_DC) if compute_dtype is None else compute_dtype
  st = _Static(code, min(chunk_size, code.vocab_size), with_hits, jnp.dtype(dtype))
  lead = x0.shape
  flat = _head_stats(st, h.reshape(-1, h.shape[-1]), kernel_DC, bias_C, x0.reshape(-1),
                     None if y is None else y.reshape(-1, code.ell))
  return HeadStats(flat.log_z.reshape(lead), flat.target.reshape(lead),
                   flat.log_hit.reshape(lead + flat.log_hit.shape[-1:]))


def _time_weight(schedule: Schedule, t, ndim: int) -> jax.Array:
  w = schedule.weight(jnp.asarray(t, jnp.float32))
  return w.reshape(w.shape + (1,) * (ndim - w.ndim))


def losses_from_stats(code: PrimeCode, schedule: Schedule, stats: HeadStats, y_t: jax.Array,
                      t: jax.Array) -> dict:
  """Per-token 'valid', 'joint' and 'cross_entropy' losses, as the `losses` registry's token losses give.

  All three come from one pass of the head: train on one, stop_gradient the others for metrics.
  'valid' needs stats made with `with_hits=True`.
  """
  masked = (jnp.asarray(y_t) == code.mask_value)
  nll = stats.log_z - stats.target
  weight = _time_weight(schedule, t, nll.ndim)
  out = {"joint": jnp.where(masked.any(-1), nll, 0.0) * weight, "cross_entropy": nll}
  if stats.log_hit.shape[-1] == code.ell:
    digit_nll = stats.log_z[..., None] - stats.log_hit
    out["valid"] = (masked * digit_nll).sum(-1) * weight
  return out


def token_log_probs(code: PrimeCode, h: jax.Array, kernel_DC: jax.Array, bias_C: jax.Array,
                    x0: jax.Array, y: Optional[jax.Array] = None, *,
                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                    compute_dtype: Optional[Any] = None) -> jax.Array:
  """(...,) log p(x0 | y) under softmax(h @ kernel + bias), restricted by y when given."""
  stats = head_stats(code, h, kernel_DC, bias_C, x0, y, chunk_size=chunk_size, with_hits=False,
                     compute_dtype=compute_dtype)
  return stats.target - stats.log_z


def autoregressive_nll(code: PrimeCode, h: jax.Array, kernel_DC: jax.Array, bias_C: jax.Array,
                       tokens: jax.Array, *,
                       chunk_size: int = DEFAULT_CHUNK_SIZE,
                       compute_dtype: Optional[Any] = None) -> jax.Array:
  """(...,) -log p(token) over all C values: the autoregressive baseline's per-token loss."""
  return -token_log_probs(code, h, kernel_DC, bias_C, tokens, chunk_size=chunk_size,
                          compute_dtype=compute_dtype)


def _diffusion_loss(name: str, code: PrimeCode, schedule: Schedule, h, kernel_DC, bias_C, x0,
                    y_t, t, carry_over: bool, chunk_size: int, compute_dtype) -> jax.Array:
  stats = head_stats(code, h, kernel_DC, bias_C, x0, y_t if carry_over else None,
                     chunk_size=chunk_size, with_hits=name == "valid",
                     compute_dtype=compute_dtype)
  return losses_from_stats(code, schedule, stats, y_t, t)[name]


def valid_loss(code: PrimeCode, schedule: Schedule, h: jax.Array, kernel_DC: jax.Array,
               bias_C: jax.Array, x0: jax.Array, y_t: jax.Array, t: jax.Array,
               carry_over: bool = True, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
               compute_dtype: Optional[Any] = None) -> jax.Array:
  """`objectives.valid_loss` on logits h @ kernel + bias, without forming them."""
  return _diffusion_loss("valid", code, schedule, h, kernel_DC, bias_C, x0, y_t, t, carry_over,
                         chunk_size, compute_dtype)


def joint_loss(code: PrimeCode, schedule: Schedule, h: jax.Array, kernel_DC: jax.Array,
               bias_C: jax.Array, x0: jax.Array, y_t: jax.Array, t: jax.Array,
               carry_over: bool = True, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
               compute_dtype: Optional[Any] = None) -> jax.Array:
  """`objectives.joint_loss` on logits h @ kernel + bias, without forming them."""
  return _diffusion_loss("joint", code, schedule, h, kernel_DC, bias_C, x0, y_t, t, carry_over,
                         chunk_size, compute_dtype)


def cross_entropy_loss(code: PrimeCode, h: jax.Array, kernel_DC: jax.Array, bias_C: jax.Array,
                       x0: jax.Array, y_t: jax.Array, carry_over: bool = True,
                       **kw: Any) -> jax.Array:
  """`objectives.cross_entropy_loss` on logits h @ kernel + bias; keywords as `valid_loss`."""
  stats = head_stats(code, h, kernel_DC, bias_C, x0, y_t if carry_over else None,
                     with_hits=False, **kw)
  return stats.log_z - stats.target
