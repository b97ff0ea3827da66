"""Categorical draws of a step's proposed digits: Gumbel races over blocks of the digit grid, with
exact top-p (nucleus) rejection rounds and noise keyed by position so a draw does not depend on
which other positions are drawn with it.

Shape suffixes: R the rows drawn (any leading axes), O the blocks of a race, I the entries of a
block."""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from prime_jax import objectives
from prime_jax.objectives import NEG_INF
from prime_jax.sampling.settings import DIGIT_SOURCES
from prime_jax.subtokens import PrimeCode


# Rows wider than this race in two levels: a block by its mass, then an entry inside it.
FLAT_RACE_MAX = 1024


def _block_shape(size: int) -> tuple[int, int]:
  """(blocks, width) of a race over `size` outcomes: one block up to FLAT_RACE_MAX, else about
  √size blocks of √size entries."""
  if size <= FLAT_RACE_MAX:
    return 1, size
  width = math.isqrt(size - 1) + 1
  return -(-size // width), width


def _as_blocks(logits: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """(..., n) -> (..., *shape), padded with NEG_INF."""
  size, (blocks, width) = logits.shape[-1], shape
  padded = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, blocks * width - size)],
                   constant_values=NEG_INF)
  return padded.reshape(logits.shape[:-1] + (blocks, width))


def _race(logits: jax.Array, noise: jax.Array) -> jax.Array:
  """The first index of the maximum of logits + noise along the last axis."""
  scores = logits.astype(noise.dtype) + noise
  # As argmax, but as two plain reductions: XLA's CPU argmax (a variadic reduce) is several
  # times slower than a max and a min.
  best = scores.max(-1, keepdims=True)
  size = scores.shape[-1]
  return jnp.where(scores == best, jnp.arange(size, dtype=jnp.int32), size).min(-1)


def _row_noise(key: jax.Array, row_ids: jax.Array, width: int, dtype: DTypeLike) -> jax.Array:
  """(*R, width) Gumbel noise; row r's comes from fold_in(key, row_ids[r]) alone."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids.reshape(-1))
  noise = jax.vmap(lambda k: jax.random.gumbel(k, (width,), dtype))(keys)
  return noise.reshape(row_ids.shape + (width,))


def _block_race(x_ROI: jax.Array, noise_fn: Callable[[int], jax.Array], top_p: float
                ) -> jax.Array:
  """(*R,) flat indices o·I + i drawn from softmax(x) over the last two axes (blocks × entries),
  restricted to the top-p nucleus: the most probable entries whose mass first reaches top_p.

  `noise_fn(round)` gives (*R, O + I) Gumbel noise, fresh for each round. A block is raced by its
  mass, then an entry inside it. With top_p < 1 a draw outside the nucleus — whose larger
  entries already hold top_p — is rejected and redrawn among the entries larger than it: an
  exact nucleus draw that never sorts, and a round accepts with probability >= top_p.
  """
  num_blocks = x_ROI.shape[-2]
  e_ROI = jnp.exp(x_ROI - x_ROI.max((-2, -1), keepdims=True))  # Largest entry: exactly 1.

  def draw(noise, pivot):
    """Entries above `pivot` (..., 1, 1) race; returns the index and its e."""
    e_kept = e_ROI if pivot is None else jnp.where(e_ROI > pivot, e_ROI, 0.0)
    block = jnp.zeros(x_ROI.shape[:-2], jnp.int32)
    if num_blocks > 1:
      block = _race(jnp.log(e_kept.sum(-1)), noise[..., :num_blocks])
    pick = lambda a: jnp.take_along_axis(a, block[..., None, None], axis=-2)[..., 0, :]
    row_x, row_e = pick(x_ROI), pick(e_kept)
    entry = _race(jnp.where(row_e > 0, row_x, NEG_INF), noise[..., num_blocks:])
    value = jnp.take_along_axis(row_e, entry[..., None], axis=-1)
    return block * x_ROI.shape[-1] + entry, value[..., None]

  index, value = draw(noise_fn(0), None)
  if top_p >= 1.0:
    return index
  threshold = top_p * e_ROI.sum((-2, -1), keepdims=True)

  def in_nucleus(value):
    """An entry is in the nucleus iff the entries larger than it hold less than top_p (written
    so that a row of NaN logits is accepted rather than redrawn forever)."""
    return ~(jnp.where(e_ROI > value, e_ROI, 0.0).sum((-2, -1), keepdims=True) >= threshold)

  def redraw(state):
    round_, index, value, done = state
    new_index, new_value = draw(noise_fn(round_), value)
    keep = done[..., 0, 0]
    return (round_ + 1, jnp.where(keep, index, new_index), jnp.where(done, value, new_value),
            done | in_nucleus(new_value))

  state = (1, index, value, in_nucleus(value))
  return jax.lax.while_loop(lambda s: ~s[3].all(), redraw, state)[1]


def _noise_width(code: PrimeCode, digit_source: str) -> int:
  """Gumbel numbers a position's draw takes per round."""
  if digit_source == "joint":
    return sum(_joint_shape(code))
  return code.ell * sum(_block_shape(code.base))


def _digit_split(code: PrimeCode) -> int:
  """How many leading digits index the blocks of a joint draw (ℓ > 1): the split of the digit
  grid nearest √C, where carry-over is one small bias per axis."""
  dims = code.grid_shape
  sizes = [math.prod(dims[:k]) + math.prod(dims[k:]) for k in range(1, code.ell)]
  return 1 + int(np.argmin(sizes))


def _joint_shape(code: PrimeCode) -> tuple[int, int]:
  """(blocks, width) of a joint draw: leading digits × trailing digits for ℓ > 1."""
  if code.ell == 1:
    return _block_shape(code.vocab_size)
  k, dims = _digit_split(code), code.grid_shape
  return math.prod(dims[:k]), math.prod(dims[k:])


def _joint_blocks(code: PrimeCode, scaled: jax.Array, y: jax.Array, carry_over: bool
                  ) -> jax.Array:
  """(…, C) scaled logits -> (…, O, I) the joint draw's blocks, NEG_INF where a code is padding
  or (with carry-over) disagrees with the visible digits of y."""
  blocks_OI = _as_blocks(scaled, _joint_shape(code))
  if code.ell > 1 and carry_over:
    k = _digit_split(code)
    blocks_OI = (blocks_OI + objectives.consistent_bias(code, y, range(k))[..., :, None]
                 + objectives.consistent_bias(code, y, range(k, code.ell))[..., None, :])
  return blocks_OI


def draw_digits(key: jax.Array, code: PrimeCode, logits: jax.Array, y: jax.Array,
                temperature: ArrayLike, *, digit_source: str, carry_over: bool,
                top_p: float = 1.0, draw_dtype: DTypeLike = jnp.float32,
                row_ids: Optional[jax.Array] = None) -> jax.Array:
  """(…, C) logits and sub-tokens y (…, ℓ) -> (…, ℓ) proposed digits for every sub-token.

  joint: the digits of one token x̂ ~ p(· | y); marginal: each digit from its own marginal μ^j.
  Temperature divides the logits first; top-p then acts on the distribution that is drawn from.
  Position r's noise comes from fold_in(key, row_ids[r]) (default: its flat index), so a draw
  does not depend on which other positions are drawn with it.
  """
  if digit_source not in DIGIT_SOURCES:
    raise ValueError(f"unknown digit_source {digit_source!r}; expected one of {DIGIT_SOURCES}")
  lead = logits.shape[:-1]
  if row_ids is None:
    row_ids = jnp.arange(math.prod(lead), dtype=jnp.int32).reshape(lead)
  width = _noise_width(code, digit_source)
  noise_fn = lambda round_: _row_noise(jax.random.fold_in(key, round_), row_ids, width,
                                       draw_dtype)
  scaled = logits.astype(jnp.float32) / temperature
  if digit_source == "joint":
    blocks_OI = _joint_blocks(code, scaled, y, carry_over)
    return code.encode(_block_race(blocks_OI, noise_fn, top_p))
  log_mu = objectives.digit_log_marginals(code, scaled, y if carry_over else None)  # (…, ℓ, b)
  shape = _block_shape(code.base)
  per_digit = lambda round_: noise_fn(round_).reshape(lead + (code.ell, sum(shape)))
  return _block_race(_as_blocks(log_mu, shape), per_digit, top_p)
