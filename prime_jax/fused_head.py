"""The output head fused with the objectives: token logits are formed one vocabulary chunk at a time.

`logits = h @ W + b` of shape (N, C) is never held beyond KEEP_LOGITS_MAX_BYTES. A loop over
chunks of the C token values keeps a streaming log-sum-exp per token of (a) every token consistent
with the visible digits (all C without carry-over), (b) the clean token's logit, and (c) for each
digit j, the consistent tokens whose digit j equals the clean digit — the masked-digit marginal
μ^j(x0_j) is (c_j) / (a). Every objective in `objectives` is a simple function of these
`HeadStats`; a custom VJP forms each chunk's logits again in the backward pass. Small heads go as
one chunk of the whole vocabulary whose logits the backward reuses. Values equal
`objectives.*` on `h @ W + b`. The tokens go in blocks of rows, and blocks of tokens that have no
diffusion loss are skipped (`vocab_chunks` holds what a chunk computes). Training past the kept
logits goes through `fused_loss`, which forms each block's logits once. Shape letters: N tokens
(batch and positions flattened), R tokens of a group of blocks, D width, C vocabulary, K chunk
width, ℓ digits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from prime_jax import vocab_chunks
from prime_jax.objectives import NEG_INF
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

# Each chunk holds a few (N, chunk) float32 arrays at a time (more for the valid bound at large ℓ
# where the backend does not fuse its ℓ per-digit reductions): choose the chunk for N.
DEFAULT_CHUNK_SIZE = 4096
# When rows with no masked digit may be skipped, the rows are cut into up to 8 blocks of at least
# 64 (a third of the tokens at ℓ = 2 have no masked digit: ~ceil(2/3 · 8) = 6 of 8 blocks are
# computed). Under a linear schedule a token has no masked digit with probability 1/(ℓ + 1), so
# with ℓ or fewer blocks the last one is seldom free: the rows then go as one block. In the
# GPT-2-vocabulary train step of benchmarks.train_step on a CPU (512 tokens), 8 blocks of 64 ran
# 1.03-1.05x faster than 4 of 128 at ℓ = 2, 1.10-1.12x faster than one block at ℓ = 4, and 16
# blocks of 32 1.3-1.6% slower than 8 of 64 (1.02x faster, within noise, with the kept logits as
# one chunk, for twice the switch's branches).
MAX_ROW_BLOCKS, MIN_BLOCK_ROWS = 8, 64
# Up to this many bytes of float32 logits (tokens x C), the head goes as one chunk of the whole
# vocabulary and the backward reuses the forward's logits: one pass over them for dz, then dz Wᵀ
# and hᵀ dz as two whole products, with no per-chunk slices or weight-gradient sums. Its loss +
# gradient then needs about 1.5x these bytes (512 tokens, C = 50,257: 148 MiB, against 8 MiB in
# chunks of 2048) and on a CPU ran 1.21x faster at 512 and at 1024 tokens; the GPT-2-vocabulary
# train step of benchmarks.train_step (512 tokens) ran 1.14x faster than with the logits kept
# in chunks of 2048.
KEEP_LOGITS_MAX_BYTES = 256 << 20
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


def stats_fwd(st: vocab_chunks.Plan, h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks):
  """The forward loop: per chunk, for the rows of the blocks below `num_blocks`, a running max m
  and sums scaled by e^{-m} of the consistent set and hits. Rows of later blocks get zeros."""
  n, ell = h_ND.shape[0], st.code.ell if st.with_hits else 0
  h_ND = h_ND.astype(st.compute_dtype)

  def group_body(ch, start, size, carry):
    rows = lambda a: vocab_chunks.take_rows(a, start, size)
    put = lambda a, part: vocab_chunks.put_rows(a, part, start)
    m_N, s_N, hit_Nl, tgt_N, kept = carry
    # The target mask goes unused here: the clean token's logit is gathered below.
    z_RK, keep_RK, hits, _ = vocab_chunks.logits(
        st.code, ch, rows(h_ND), rows(x0_N), None if y_Nl is None else rows(y_Nl), st.with_hits)
    if st.keep_logits:
      kept = put(kept, z_RK)  # One chunk: all C columns.
    m_R = rows(m_N)
    m_new = jnp.maximum(m_R, jnp.where(keep_RK, z_RK, NEG_INF).max(-1))
    e_RK = jnp.where(keep_RK, jnp.exp(z_RK - m_new[:, None]), 0.0)
    scale_R = jnp.exp(m_R - m_new)
    s_R = rows(s_N) * scale_R + e_RK.sum(-1)
    if hits:
      new_hits = jnp.stack(vocab_chunks.digit_sums(st.code, ch, e_RK, hits, rows(x0_N)),
                           axis=-1)
      hit_Nl = put(hit_Nl, rows(hit_Nl) * scale_R[:, None] + new_hits)
    col_R1 = (rows(x0_N) - ch.start)[:, None]  # The clean token's logit, if this chunk has it.
    fresh_R1 = ch.fresh_K[jnp.clip(col_R1, 0, z_RK.shape[1] - 1)]
    tgt_R = rows(tgt_N) + vocab_chunks.picked_sum(z_RK, col_R1, fresh_R1)
    return put(m_N, m_new), put(s_N, s_R), hit_Nl, put(tgt_N, tgt_R), kept

  def chunk_body(active_rows, k, carry):
    ch = st.chunk(k, kernel_DC, bias_C)
    return vocab_chunks.over_groups(st, active_rows, functools.partial(group_body, ch), carry)

  zeros = jnp.zeros((n,), jnp.float32)
  # Rows past the active blocks are never read: no fill needed (`lax.empty` fills only on a CPU).
  kept = jax.lax.empty((n, st.code.vocab_size) if st.keep_logits else (0,), jnp.float32)
  init = (jnp.full((n,), NEG_INF, jnp.float32), zeros, jnp.zeros((n, ell), jnp.float32), zeros,
          kept)
  m_N, s_N, hit_Nl, tgt_N, kept = vocab_chunks.chunk_loop(st, n, num_blocks, chunk_body, init)
  done_N = jnp.arange(n) < num_blocks * st.block_rows
  log_z = jnp.where(done_N, m_N + jnp.log(s_N), 0.0)
  log_hit = m_N[:, None] + jnp.log(jnp.maximum(hit_Nl, _MIN_MARGINAL * s_N[:, None]))
  return HeadStats(log_z, jnp.where(done_N, tgt_N, 0.0),
                   jnp.where(done_N[:, None], log_hit, 0.0)), kept


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _head_stats(st: vocab_chunks.Plan, h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks):
  return stats_fwd(dataclasses.replace(st, keep_logits=False), h_ND, kernel_DC, bias_C, x0_N,
                   y_Nl, num_blocks)[0]


def _head_stats_fwd(st, h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks):
  stats, kept = stats_fwd(st, h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks)
  return stats, (h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, stats, kept)


def logits_dz(z_RK, keep_RK, hits: list, target_RK, terms_R) -> jax.Array:
  """float32 dz of a block of rows' logits; `terms_R` is (log_z, g_log_z, ratio (R, ℓ),
  g_target) for those rows."""
  log_z_R, g_log_z_R, ratio_Rl, g_target_R = terms_R
  coef_RK = g_log_z_R[:, None]
  for j, hit in enumerate(hits):
    coef_RK = coef_RK + jnp.where(hit, ratio_Rl[:, j, None], 0.0)
  p_RK = jnp.where(keep_RK, jnp.exp(z_RK - log_z_R[:, None]), 0.0)
  return p_RK * coef_RK + jnp.where(target_RK, g_target_R[:, None], 0.0)


def _head_stats_bwd(st, res, g):
  """dz_c = p_c (g_log_z + Σ_j [c_j = x0_j] g_log_hit_j / μ_j) + [c = x0] g_target for the rows
  of the active blocks: from the kept logits at once, else chunk by chunk with the logits formed
  again and the weight gradient of a chunk summed in place.

  μ_j is the clamped marginal, exactly as objectives._masked_digit_nll uses it.
  """
  h_ND, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, stats, kept = res
  g_log_z, g_target, g_log_hit = (jnp.asarray(a, jnp.float32) for a in g)
  ratio_Nl = g_log_hit / jnp.exp(stats.log_hit - stats.log_z[:, None])
  terms = (stats.log_z, g_log_z, ratio_Nl, g_target)
  h_c = h_ND.astype(st.compute_dtype)
  ht_EN = kept_transpose(h_c, with_ones=not st.keep_logits)
  if st.keep_logits:
    grads = _kept_bwd(st, ht_EN, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, kept, terms)
  else:
    grads = _chunked_bwd(st, h_c, ht_EN, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, terms)
  return tuple(a.astype(b.dtype) for a, b in zip(grads, (h_ND, kernel_DC, bias_C))) + (None,) * 3


def kept_transpose(h_ND: jax.Array, with_ones: bool) -> jax.Array:
  """A kept copy of hᵀ, (D, N) or, `with_ones`, (D + 8, N) with a row of ones and seven of zeros
  below it, so the product that gives a weight gradient hᵀ·dz also gives the bias gradient 1ᵀ·dz
  (a sum of the float32 dz over rows had XLA:GPU write dz in float32 and read it back). Kept
  behind a barrier: XLA folds a bare transpose back into hᵀ·dz, ~1.3x slower on XLA:CPU."""
  extra = [jnp.zeros((8, h_ND.shape[0]), h_ND.dtype).at[0].set(1)] if with_ones else []
  return jax.lax.optimization_barrier(jnp.concatenate([h_ND.T] + extra, axis=0))


def _chunked_bwd(st: vocab_chunks.Plan, h_c, ht_EN, kernel_DC, bias_C, x0_N, y_Nl, num_blocks,
                 terms):
  """float32 (dh, dW, db), chunk by chunk with the logits formed again; a chunk's weight and bias
  gradients come from one product with `ht_EN` (hᵀ over a row of ones) and are summed in place."""
  def group_body(ch, start, size, carry):
    rows = lambda a: vocab_chunks.take_rows(a, start, size)
    dh_ND, dwb_EK = carry
    y_Rl = None if y_Nl is None else rows(y_Nl)
    z_RK, keep_RK, hits, target_RK = vocab_chunks.logits(
        st.code, ch, rows(h_c), rows(x0_N), y_Rl, st.with_hits)
    dz_RK = logits_dz(z_RK, keep_RK, hits, target_RK, [rows(a) for a in terms]).astype(
        st.compute_dtype)
    dh_RD = rows(dh_ND) + jnp.dot(dz_RK, ch.w_DK.T, preferred_element_type=jnp.float32)
    ht_ER = jax.lax.dynamic_slice_in_dim(ht_EN, start, size, axis=1)
    dwb_EK = dwb_EK + jnp.dot(ht_ER, dz_RK, preferred_element_type=jnp.float32)
    return vocab_chunks.put_rows(dh_ND, dh_RD, start), dwb_EK

  def chunk_body(active_rows, k, carry):
    dh_ND, dw_DC, db_C = carry
    ch = st.chunk(k, kernel_DC, bias_C)
    part = (dh_ND, jnp.zeros((ht_EN.shape[0], ch.w_DK.shape[1]), jnp.float32))
    dh_ND, dwb_EK = vocab_chunks.over_groups(
        st, active_rows, functools.partial(group_body, ch), part)
    d = dw_DC.shape[0]
    return (dh_ND, _add_slice(dw_DC, dwb_EK[:d], ch.start, axis=1),
            _add_slice(db_C, dwb_EK[d], ch.start, axis=0))

  n = h_c.shape[0]
  init = (jnp.zeros(h_c.shape, jnp.float32), jnp.zeros(kernel_DC.shape, jnp.float32),
          jnp.zeros(bias_C.shape, jnp.float32))
  return vocab_chunks.chunk_loop(st, n, num_blocks, chunk_body, init)


def _kept_bwd(st: vocab_chunks.Plan, ht_DN, kernel_DC, bias_C, x0_N, y_Nl, num_blocks, kept_NC,
              terms):
  """float32 (dh, dW, db) from the kept logits (N, C): dz of the active rows in one pass over the
  whole vocabulary, then dz·Wᵀ and hᵀ·dz as two whole products, with no loop over chunks."""
  code, n = st.code, kept_NC.shape[0]
  whole = st.chunk(0, kernel_DC, bias_C)  # Kept logits go as one chunk: the whole vocabulary.

  def run(rows: int):
    if rows == 0:
      return (jnp.zeros((n, kernel_DC.shape[0]), jnp.float32),
              jnp.zeros(kernel_DC.shape, jnp.float32), jnp.zeros(bias_C.shape, jnp.float32))
    part = lambda a: a[:rows]
    keep_RC, hits, target_RC = vocab_chunks.masks(
        code, whole, part(x0_N), None if y_Nl is None else part(y_Nl), st.with_hits)
    dz_RC = logits_dz(part(kept_NC), keep_RC, hits, target_RC, [part(a) for a in terms])
    # Summed as a product: XLA:CPU's reduction over the rows of (384, 50,257) took 50x as long.
    # (hᵀ over a row of ones, as chunk by chunk, made this head 0.96-0.98x as fast on a CPU.)
    db_C = jnp.dot(jnp.ones((rows,), jnp.float32), dz_RC)
    dz_RC = dz_RC.astype(st.compute_dtype)
    dh_RD = jnp.dot(dz_RC, whole.w_DK.T, preferred_element_type=jnp.float32)
    dw_DC = jnp.dot(ht_DN[:, :rows], dz_RC, preferred_element_type=jnp.float32)
    return vocab_chunks.pad_rows(dh_RD, n), dw_DC, db_C

  return vocab_chunks.active_rows(st, n, num_blocks, run)


def _add_slice(total, part, start, axis: int):
  """total[..., start:start + K, ...] += part along `axis`, in place inside a loop."""
  current = jax.lax.dynamic_slice_in_dim(total, start, part.shape[axis], axis=axis)
  return jax.lax.dynamic_update_slice_in_dim(total, current + part, start, axis=axis)


_head_stats.defvjp(_head_stats_fwd, _head_stats_bwd)


def check_args(code: PrimeCode, h, kernel_DC, bias_C, x0, y, chunk_size, active=None) -> None:
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
  if active is not None and jnp.shape(active) != x0.shape:
    raise ValueError(f"active must have x0's shape {x0.shape}, got {jnp.shape(active)}")


def head_stats(code: PrimeCode, h: jax.Array, kernel_DC: jax.Array, bias_C: jax.Array,
               x0: jax.Array, y: Optional[jax.Array] = None, *,
               chunk_size: int = DEFAULT_CHUNK_SIZE, with_hits: bool = True,
               compute_dtype: Optional[Any] = None, active: Optional[jax.Array] = None,
               row_blocks: Optional[int] = None,
               keep_logits: Optional[bool] = None) -> HeadStats:
  """`HeadStats` of the logits h @ kernel + bias (h: (..., D)), restricted by y (..., ℓ) if given.

  Matmuls run in `compute_dtype` (default: that of h and kernel) with float32 accumulation,
  and the logits are rounded to it, as the unfused head's are; the log-sum-exps are float32.
  `with_hits=False` skips the per-digit sums (token objectives only).
  With `active` (x0's shape, bool), the rows are put active first and cut into `row_blocks`
  blocks (default: see MAX_ROW_BLOCKS; 1 computes every row), and blocks with no active row are
  skipped: their stats are 0 (every diffusion loss of a token with no masked digit is 0 whatever
  its stats; cross-entropy is not). `keep_logits` (default: up to KEEP_LOGITS_MAX_BYTES) takes
  the whole vocabulary as one chunk (`chunk_size` then goes unused) and keeps its logits for the
  gradient, which otherwise forms them again chunk by chunk.
  """
  h, kernel_DC, x0 = jnp.asarray(h), jnp.asarray(kernel_DC), jnp.asarray(x0)
  y = None if y is None else jnp.asarray(y)
  bias_C = None if bias_C is None else jnp.asarray(bias_C)
  check_args(code, h, kernel_DC, bias_C, x0, y, chunk_size, active)
  if row_blocks is not None and (not isinstance(row_blocks, int) or isinstance(row_blocks, bool)
                                 or row_blocks < 1):
    raise ValueError(f"row_blocks must be a positive integer, got {row_blocks!r}")
  if keep_logits not in (None, True, False):
    raise ValueError(f"keep_logits must be None (by size), True or False, got {keep_logits!r}")
  if bias_C is None:
    bias_C = jnp.zeros((code.vocab_size,), kernel_DC.dtype)
  dtype = jnp.result_type(h, kernel_DC) if compute_dtype is None else compute_dtype
  rp = plan_rows(code, x0, active, row_blocks, chunk_size, with_hits, dtype, keep_logits)
  flat = _head_stats(rp.st, rp.rows(h), kernel_DC, bias_C, rp.rows(x0),
                     None if y is None else rp.rows(y), rp.num_blocks)
  return HeadStats(*rp.restore(*flat))


def keeps_logits(code: PrimeCode, rows: int) -> bool:
  """Whether `head_stats` keeps the logits of `rows` rows by default (KEEP_LOGITS_MAX_BYTES)."""
  return 4 * rows * code.vocab_size <= KEEP_LOGITS_MAX_BYTES


def plan_rows(code: PrimeCode, x0: jax.Array, active, row_blocks, chunk_size: int,
              with_hits: bool, dtype, keep_logits) -> vocab_chunks.RowPlan:
  """The `vocab_chunks.RowPlan` of `head_stats`' arguments (see there)."""
  lead, n = x0.shape, x0.size
  if row_blocks is None:
    row_blocks = max(1, min(MAX_ROW_BLOCKS, n // MIN_BLOCK_ROWS))
    row_blocks = 1 if row_blocks <= code.ell else row_blocks
  blocks = 1 if active is None else min(row_blocks, n)
  skip = blocks > 1  # One block computes every row, with no switch.
  size = -(-n // blocks)
  chunk_size = min(chunk_size, code.vocab_size)
  if keep_logits is None:
    keep_logits = keeps_logits(code, blocks * size)
  if keep_logits:  # Kept logits go as one chunk: one product each way, no loop over chunks.
    chunk_size = code.vocab_size
  st = vocab_chunks.Plan(code, chunk_size, with_hits, jnp.dtype(dtype), size, skip,
                         bool(keep_logits))
  if not skip:
    return vocab_chunks.RowPlan(st, lead, None, jnp.int32(1))
  order = jnp.argsort(~jnp.reshape(active, n), stable=True)  # Active rows first.
  return vocab_chunks.RowPlan(st, lead, order, -(-jnp.sum(active, dtype=jnp.int32) // size))


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
  y_t = jnp.asarray(y_t)
  stats = head_stats(code, h, kernel_DC, bias_C, x0, y_t if carry_over else None,
                     chunk_size=chunk_size, with_hits=name == "valid",
                     compute_dtype=compute_dtype, active=(y_t == code.mask_value).any(-1))
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
