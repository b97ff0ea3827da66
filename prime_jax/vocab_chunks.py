"""The vocabulary chunks that the fused head (`fused_head`) loops over, and its loops.

A chunk is K consecutive token codes: its kernel and bias slices, its codes' digits, and which
of them no earlier chunk covered. A block of rows' logits against a chunk come with the masks
the objectives need, and sums over a chunk's columns gather the columns where few are needed.
A `Plan` fixes a call's chunks and row blocks; `chunk_loop` runs a body over the chunks for the
rows of the active blocks. Shape letters: R rows, D width, K chunk width, G gathered columns,
ℓ digits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from prime_jax.subtokens import PrimeCode


class Chunk(NamedTuple):
  """Chunk k of the vocabulary: first code, kernel (D, K) and bias (K,) slices, its codes'
  digits, and which of them no earlier chunk covered (the last chunk starts at C - K, so it may
  overlap the one before; no padding of the kernel is ever needed)."""

  start: jax.Array
  w_DK: jax.Array
  b_K: jax.Array
  codes_K: jax.Array
  fresh_K: jax.Array
  digits: list


def chunk(code: PrimeCode, size: int, compute_dtype: Any, k, kernel_DC: jax.Array,
          bias_C: jax.Array) -> Chunk:
  """Chunk k of `size` codes, its kernel slice in `compute_dtype`."""
  start = jnp.minimum(k * size, code.vocab_size - size)
  w_DK = jax.lax.dynamic_slice_in_dim(kernel_DC, start, size, axis=1).astype(compute_dtype)
  b_K = jax.lax.dynamic_slice_in_dim(bias_C, start, size).astype(jnp.float32)
  codes_K = start + jnp.arange(size)
  digits = [(codes_K // code.base ** (code.ell - 1 - j)) % code.base for j in range(code.ell)]
  return Chunk(start, w_DK, b_K, codes_K, codes_K >= k * size, digits)


def logits(code: PrimeCode, ch: Chunk, h_RD: jax.Array, x0_R: jax.Array, y_Rl, with_hits: bool):
  """float32 logits (R, K) of a block of rows against a chunk; which columns are consistent
  with y (all fresh ones when y is None), per digit which share x0's digit (if `with_hits`),
  and which is x0. The product comes out in h's dtype, as the unfused head's logits do: in
  bf16 that halves the bytes every pass over the chunk reads (compiled for an H100, the OWT
  step's roofline fell from 58.2 to 54.9 ms)."""
  z_RK = jnp.dot(h_RD, ch.w_DK, preferred_element_type=h_RD.dtype).astype(jnp.float32) + ch.b_K
  return (z_RK,) + masks(code, ch, x0_R, y_Rl, with_hits)


def masks(code: PrimeCode, ch: Chunk, x0_R: jax.Array, y_Rl, with_hits: bool):
  """`logits`' masks alone, for rows whose logits are already at hand."""
  keep_RK = jnp.broadcast_to(ch.fresh_K, (x0_R.shape[0], ch.fresh_K.shape[0]))
  if y_Rl is not None:
    for j, d_K in enumerate(ch.digits):
      y_j = y_Rl[:, j, None]
      keep_RK = keep_RK & ((y_j == code.mask_value) | (y_j == d_K))
  hits = []
  if with_hits:
    x0_digits = code.encode(x0_R)
    hits = [x0_digits[:, j, None] == d_K for j, d_K in enumerate(ch.digits)]
  target_RK = ch.fresh_K & (ch.codes_K == x0_R[:, None])
  return keep_RK, hits, target_RK


def picked_sum(e_RK: jax.Array, col_RG: jax.Array, valid_RG) -> jax.Array:
  """Σ_g e[r, col[r, g]] over the valid picks: a gather, not a masked pass over the chunk."""
  size = e_RK.shape[1]
  valid_RG = valid_RG & (col_RG >= 0) & (col_RG < size)
  picked = jnp.take_along_axis(e_RK, jnp.clip(col_RG, 0, size - 1), axis=1)
  return jnp.where(valid_RG, picked, 0.0).sum(-1)


def digit_sums(code: PrimeCode, ch: Chunk, e_RK: jax.Array, hits: list, x0_R: jax.Array) -> list:
  """Per digit j, Σ of e over the chunk's codes whose digit j is x0's. Those codes come in runs
  of b^(ℓ-1-j), one every b^(ℓ-j): where they are few they are gathered, else the hit mask is
  summed (at ℓ = 2, C = 50,257, with the clean token's logit also gathered, the forward chunk
  loop ran 11% faster than with masked sums)."""
  size = e_RK.shape[1]
  digits_Rl, sums = code.encode(x0_R), []
  for j, hit_RK in enumerate(hits):
    run = code.base ** (code.ell - 1 - j)
    period, n_runs = run * code.base, size // (run * code.base) + 2
    if 2 * n_runs * run > size:
      sums.append(jnp.where(hit_RK, e_RK, 0.0).sum(-1))
      continue
    offset_R = digits_Rl[:, j] * run - ch.start  # Column of run q = 0, from the chunk's start.
    first_R = -((offset_R + run - 1) // period)  # The first run that ends inside the chunk.
    col_RQS = ((first_R[:, None] + jnp.arange(n_runs)) * period + offset_R[:, None])[..., None]
    col_RG = (col_RQS + jnp.arange(run)).reshape(e_RK.shape[0], n_runs * run)
    sums.append(picked_sum(e_RK, col_RG, True))
  return sums


# The active blocks go through each product together, up to this many rows (at least one
# block), so that the (rows x chunk) tiles stay bounded at large N. On a CPU at 512 tokens,
# D = 256, C = 50,257, one product over 3 blocks of 128 rows took the loss + gradient 0.92x the
# time of a loop over the blocks.
MAX_PRODUCT_ROWS = 512


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one call of the fused head computes, fixed at trace time."""

  code: PrimeCode
  chunk_size: int
  with_hits: bool
  compute_dtype: Any
  block_rows: int  # Token rows per block (the rows are padded to a multiple).
  skip: bool  # Blocks past a traced count are skipped; else all rows go as one block.
  keep_logits: bool = False  # The forward keeps the logits (one chunk) for the backward.

  @property
  def num_chunks(self) -> int:
    return -(-self.code.vocab_size // self.chunk_size)

  def chunk(self, k, kernel_DC: jax.Array, bias_C: jax.Array) -> Chunk:
    """Chunk k of this plan's size."""
    return chunk(self.code, self.chunk_size, self.compute_dtype, k, kernel_DC, bias_C)


class RowPlan(NamedTuple):
  """How the rows of x0's shape go to the custom VJPs: flattened, and with `active`, put active
  first (`order`) and padded to whole blocks, of which `num_blocks` are computed."""

  st: Plan
  lead: tuple
  order: Optional[jax.Array]
  num_blocks: jax.Array

  def rows(self, a: jax.Array) -> jax.Array:
    """(N, ...) rows of `a` (x0's shape, then any trailing axes), in the plan's order."""
    a = a.reshape((-1,) + a.shape[len(self.lead):])
    if self.order is None:
      return a
    return pad_rows(a[self.order], self.num_rows)

  def restore(self, *arrays: jax.Array) -> tuple:
    """The inverse of `rows` for each array: x0's shape (then the array's trailing axes) in the
    caller's order."""
    if self.order is not None:
      n = len(self.order)
      back = jnp.zeros_like(self.order).at[self.order].set(jnp.arange(n))  # Inverse permutation.
      arrays = [a[:n][back] for a in arrays]
    return tuple(a.reshape(self.lead + a.shape[1:]) for a in arrays)

  @property
  def num_rows(self) -> int:
    """Rows after padding to whole blocks (with an order; else the rows as given)."""
    return -(-len(self.order) // self.st.block_rows) * self.st.block_rows


def pad_rows(a: jax.Array, rows: int) -> jax.Array:
  """a with zero rows appended to `rows` rows."""
  return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))


def take_rows(a, start, size: int):
  """Rows [start, start + size) of a."""
  return jax.lax.dynamic_slice_in_dim(a, start, size, axis=0)


def put_rows(a, part, start):
  """a with rows from `start` replaced by part."""
  return jax.lax.dynamic_update_slice_in_dim(a, part, start, axis=0)


def over_groups(st: Plan, rows: int, body, carry):
  """`body(start, size, carry)` over groups of whole blocks covering rows [0, rows), one product
  each; equal groups run in a loop of static length (one group's tiles live at a time)."""
  step = max(1, MAX_PRODUCT_ROWS // st.block_rows) * st.block_rows
  full, rest = divmod(rows, step)
  if full == 1:
    carry = body(0, step, carry)
  elif full > 1:
    carry = jax.lax.fori_loop(0, full, lambda i, c: body(i * step, step, c), carry)
  return body(full * step, rest, carry) if rest else carry


def active_rows(st: Plan, n: int, num_blocks, run):
  """`run(rows)` for the first rows = `num_blocks` blocks: a static count in each branch of a
  switch (without skipping, all n rows and no switch). No loop bound is data (on a GPU, each step
  of such a loop can wait on the host)."""
  if not st.skip:
    return run(n)
  return jax.lax.switch(num_blocks, [functools.partial(run, b * st.block_rows)
                                     for b in range(n // st.block_rows + 1)])


def chunk_loop(st: Plan, n: int, num_blocks, chunk_body, init):
  """The loop over chunks of `chunk_body(rows, k, carry)` for the active rows (one chunk goes
  without a loop)."""
  def run(rows: int):
    body = functools.partial(chunk_body, rows)
    if rows == 0 or st.num_chunks == 1:
      return init if rows == 0 else body(0, init)
    return jax.lax.fori_loop(0, st.num_chunks, body, init)
  return active_rows(st, n, num_blocks, run)
