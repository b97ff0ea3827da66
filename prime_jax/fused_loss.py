"""The training loss through the fused head, with its gradient formed in the forward pass.

A mean over tokens of a diffusion objective is linear in the head's per-token `HeadStats`, with
coefficients known before the head runs (masks and time weights). So a block of rows can form
its logits once, over the whole vocabulary, and take from them its statistics, dz and its share
of the gradient (dh, dW, db) at once: three products where forming the logits again chunk by
chunk in the backward pass takes four. The backward pass only scales that gradient. A block's
logits stay within BLOCK_LOGITS_MAX_BYTES, never (B, L, C). Values and gradients equal
`fused_head.head_stats` followed by `fused_head.losses_from_stats`. `losses` trains through it
where the head would not keep its logits whole (`fused_head.keeps_logits`); no gradient flows to
y_t or t. Shape letters as in `fused_head`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from prime_jax import fused_head, vocab_chunks
from prime_jax.fused_head import HeadStats
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

# Rows go through the head in parts whose float32 logits would take at most this many bytes (a
# block of rows of `fused_head` is cut into equal parts to fit): 21,365 rows at C = 50,257; in
# bf16 the compiled step holds them in bf16. Each part adds its weight gradient (D + 8, C) to
# a float32 sum, so fewer parts move fewer bytes: compiled for an H100, the OWT-small step at
# 128 × 1024 (parts of 16,384 rows) had a roofline of 198.8 ms with this limit, 199.6 ms in
# parts of 4,096 (1 GiB), for 0.33 GiB more memory.
BLOCK_LOGITS_MAX_BYTES = 4 << 30


def block_rows(block: int, vocab_size: int) -> int:
  """The largest divisor of `block` whose rows' float32 logits fit BLOCK_LOGITS_MAX_BYTES (at
  least 1)."""
  fits = [d for d in range(1, block + 1)
          if block % d == 0 and 4 * d * vocab_size <= BLOCK_LOGITS_MAX_BYTES]
  return max(fits, default=1)


def _part(st: vocab_chunks.Plan, kernel_DC, bias_C, h_RD, ht_ER, x0_R, y_Rl, coef_R):
  """One part's stats, loss and gradient: its logits once, its stats, then dz from them."""
  stats, _ = fused_head.stats_fwd(st, h_RD, kernel_DC, bias_C, x0_R, y_Rl, 1)
  a_R, b_R, c_Rl = coef_R
  whole = st.chunk(0, kernel_DC, bias_C)
  # The same product as inside `stats_fwd`, which XLA computes once (CSE).
  z_RC, keep_RC, hits, target_RC = vocab_chunks.logits(st.code, whole, h_RD, x0_R, y_Rl,
                                                       st.with_hits)
  ratio_Rl = c_Rl / jnp.exp(stats.log_hit - stats.log_z[:, None])
  terms = (stats.log_z, a_R, ratio_Rl, b_R)
  dz_RC = fused_head.logits_dz(z_RC, keep_RC, hits, target_RC, terms).astype(st.compute_dtype)
  dh_RD = jnp.dot(dz_RC, whole.w_DK.T, preferred_element_type=jnp.float32)
  dwb_EC = jnp.dot(ht_ER, dz_RC, preferred_element_type=jnp.float32)
  loss = (a_R * stats.log_z).sum() + (b_R * stats.target).sum() + (c_Rl * stats.log_hit).sum()
  return stats, loss, dh_RD, dwb_EC


def _forward(st: vocab_chunks.Plan, part_rows: int, h_ND, kernel_DC, bias_C, x0_N, y_Nl,
             num_blocks, coef):
  """(loss, stats), float32 (dh, dW, db): the parts of the active blocks, one at a time."""
  n, d = h_ND.shape
  h_c = h_ND.astype(st.compute_dtype)
  ht_EN = fused_head.kept_transpose(h_c, with_ones=True)  # [hᵀ; 1]·dz gives dW and db.
  part_st = dataclasses.replace(st, chunk_size=st.code.vocab_size, block_rows=part_rows,
                                skip=False, keep_logits=False)
  ell = st.code.ell if st.with_hits else 0

  def body(i, carry):
    stats, loss, dh_ND, dwb_EC = carry
    start = i * part_rows
    rows = lambda a: vocab_chunks.take_rows(a, start, part_rows)
    ht_ER = jax.lax.dynamic_slice_in_dim(ht_EN, start, part_rows, axis=1)
    got = _part(part_st, kernel_DC, bias_C, rows(h_c), ht_ER, rows(x0_N),
                None if y_Nl is None else rows(y_Nl), [rows(a) for a in coef])
    stats = HeadStats(*(vocab_chunks.put_rows(a, b, start) for a, b in zip(stats, got[0])))
    return (stats, loss + got[1], vocab_chunks.put_rows(dh_ND, got[2], start),
            dwb_EC + got[3])

  zeros = jnp.zeros((n,), jnp.float32)
  init = (HeadStats(zeros, zeros, jnp.zeros((n, ell), jnp.float32)), jnp.zeros((), jnp.float32),
          jnp.zeros((n, d), jnp.float32), jnp.zeros((d + 8, st.code.vocab_size), jnp.float32))

  def run(rows: int):
    parts = rows // part_rows
    if parts <= 1:
      return init if parts == 0 else body(0, init)
    return jax.lax.fori_loop(0, parts, body, init)

  stats, loss, dh_ND, dwb_EC = vocab_chunks.active_rows(st, n, num_blocks, run)
  return (loss, stats), (dh_ND, dwb_EC[:d], dwb_EC[d])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _loss(st, part_rows, h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, coef):
  return _forward(st, part_rows, h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, coef)[0]


def _loss_fwd(st, part_rows, h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, coef):
  out, grads = _forward(st, part_rows, h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, coef)
  return out, tuple(g.astype(a.dtype) for g, a in zip(grads, (h_ND, kernel_DC, bias_C)))


def _loss_bwd(st, part_rows, grads, g):
  """The gradient of the loss times its cotangent; the stats leave `mean_loss` without one."""
  g_loss = g[0]
  return tuple((g_loss * a).astype(a.dtype) for a in grads) + (None,) * 4


_loss.defvjp(_loss_fwd, _loss_bwd)


def mean_loss(code: PrimeCode, schedule: Schedule, name: str, h: jax.Array,
              kernel_DC: jax.Array, bias_C: jax.Array, x0: jax.Array, y_t: jax.Array,
              t: jax.Array, carry_over: bool = True, *, active: Optional[jax.Array] = None,
              with_hits: bool = True, compute_dtype=None) -> tuple[jax.Array, dict]:
  """(the mean over tokens of objective `name` ('valid', 'joint' or 'cross_entropy'), every
  per-token loss `fused_head.losses_from_stats` gives, without gradient).

  h (..., D); x0 and `active` (tokens that may be skipped when False) of h's leading shape.
  `with_hits=False` skips the per-digit sums, which only 'valid' needs.
  """
  if name not in ("valid", "joint", "cross_entropy") or (name == "valid" and not with_hits):
    raise ValueError(f"name must be 'valid' (with_hits=True), 'joint' or 'cross_entropy', "
                     f"got {name!r} (with_hits={with_hits})")
  h, kernel_DC, x0, y_t = (jnp.asarray(a) for a in (h, kernel_DC, x0, y_t))
  bias_C = None if bias_C is None else jnp.asarray(bias_C)
  fused_head.check_args(code, h, kernel_DC, bias_C, x0, y_t, code.vocab_size, active)
  if bias_C is None:
    bias_C = jnp.zeros((code.vocab_size,), kernel_DC.dtype)
  dtype = jnp.result_type(h, kernel_DC) if compute_dtype is None else compute_dtype
  rp = fused_head.plan_rows(code, x0, active, None, code.vocab_size, with_hits, dtype, False)
  # The loss is linear in the stats: its coefficients are its gradient at any stats.
  ell = code.ell if with_hits else 0
  zero = HeadStats(jnp.zeros(x0.shape), jnp.zeros(x0.shape), jnp.zeros(x0.shape + (ell,)))
  per_token = lambda s: fused_head.losses_from_stats(code, schedule, s, y_t, t)
  coef = jax.grad(lambda s: per_token(s)[name].mean())(zero)
  parts = block_rows(rp.st.block_rows, code.vocab_size)
  y = rp.rows(y_t) if carry_over else None
  loss, flat = _loss(rp.st, parts, rp.rows(h), kernel_DC, bias_C, rp.rows(x0), y,
                     rp.num_blocks, tuple(rp.rows(a) for a in coef))
  stats = jax.lax.stop_gradient(HeadStats(*rp.restore(*flat)))
  return loss, per_token(stats)
