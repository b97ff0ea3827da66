"""Training objectives on token logits: the paper's joint loss and the valid (marginal) bound.

All functions take token logits (..., C) from the network, never logits for invalid codes. The C
logits are padded to the digit grid (d0, b, ..., b) — d0 = the leading digit's range — so carry-over
is a broadcast bias per visible digit and a digit marginal is a reduction over the other axes.
Nothing of shape (..., C, ℓ) is formed. Losses are per token, already multiplied by w(t).
Shape suffixes: `_l` is a trailing axis of the ℓ digits of a token, after any leading axes.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

# Finite stand-in for -inf: exp() of it is exactly 0 in float32, yet sums and gradients stay finite
# even where every entry of a slice is excluded.
NEG_INF = -1e30


def grid_logits(code: PrimeCode, logits: ArrayLike, y: ArrayLike | None = None) -> jax.Array:
  """(..., C) -> float32 (..., d0, b, ..., b); codes >= C get NEG_INF.

  With sub-tokens `y` (..., ℓ) the carry-over restriction is applied: every code that disagrees
  with a visible digit gets NEG_INF.
  """
  logits = jnp.asarray(logits, jnp.float32)
  if logits.shape[-1] != code.vocab_size:
    raise ValueError(
        f"logits must end in an axis of size C={code.vocab_size}, got shape {logits.shape}")
  pad = code.grid_size - code.vocab_size
  if pad:
    logits = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, pad)], constant_values=NEG_INF)
  grid = logits.reshape(logits.shape[:-1] + code.grid_shape)
  if y is None:
    return grid
  return grid + _carry_over_bias(code, y)


def digit_biases(code: PrimeCode, y: ArrayLike) -> list[jax.Array]:
  """Per digit j, (..., n_j) over its values (n_j from grid_shape): 0 where the value agrees with
  y (..., ℓ) — every value agrees with a masked digit — and NEG_INF elsewhere (carry-over)."""
  y = jnp.asarray(y)
  return [jnp.where((y[..., j, None] == code.mask_value) | (y[..., j, None] == jnp.arange(size)),
                    0.0, NEG_INF) for j, size in enumerate(code.grid_shape)]


def _carry_over_bias(code: PrimeCode, y: ArrayLike) -> jax.Array:
  """Σ over digits j of `digit_biases` j broadcast along grid axis j."""
  lead = jnp.shape(y)[:-1]
  bias = 0.0
  for j, bias_j in enumerate(digit_biases(code, y)):
    bias = bias + bias_j.reshape(lead + (1,) * j + (-1,) + (1,) * (code.ell - 1 - j))
  return bias


def consistent_bias(code: PrimeCode, y: ArrayLike, digits: Sequence[int]) -> jax.Array:
  """(..., Π n_j) over the listed digits' values in row-major order: the outer sum of their
  `digit_biases`, for a block view of the digit grid (leading digits × trailing digits)."""
  per_digit = digit_biases(code, y)
  bias = jnp.zeros(jnp.shape(y)[:-1] + (1,), jnp.float32)
  for j in digits:
    bias = (bias[..., :, None] + per_digit[j][..., None, :]).reshape(bias.shape[:-1] + (-1,))
  return bias


def restrict_logits(code: PrimeCode, logits: ArrayLike, y: ArrayLike) -> jax.Array:
  """(..., C) float32 logits with carry-over applied: tokens inconsistent with y get NEG_INF."""
  bias = consistent_bias(code, y, range(code.ell))[..., :code.vocab_size]
  return jnp.asarray(logits, jnp.float32) + bias


def _code_logits(code: PrimeCode, grid: jax.Array) -> jax.Array:
  """(..., d0, b, ..., b) -> (..., d0·b^(ℓ-1)): one entry per code, in the order codes decode."""
  return grid.reshape(grid.shape[:-code.ell] + (-1,))


def _grid_axes(grid: jax.Array, ell: int) -> tuple[int, ...]:
  return tuple(range(grid.ndim - ell, grid.ndim))


def _marginal_sums(e_grid: jax.Array, ell: int) -> list[jax.Array]:
  """Per digit j, the sums of e over every other digit axis: [(..., n_j)] for j < ℓ.

  Leading axes are summed away one at a time, so only two passes touch the full grid.
  """
  sums = []
  rest = e_grid
  for j in range(ell):
    trailing = tuple(range(rest.ndim - (ell - 1 - j), rest.ndim))
    sums.append(rest.sum(axis=trailing) if trailing else rest)
    if j < ell - 1:
      rest = rest.sum(axis=rest.ndim - (ell - j))
  return sums


def _digit_onehot_sum(code: PrimeCode, values_l: jax.Array, digits_l: jax.Array) -> jax.Array:
  """Σ_j values_j · [code's digit j == digits_j], broadcast to the grid (..., d0, b, ..., b)."""
  lead = digits_l.shape[:-1]
  total = 0.0
  for j, size in enumerate(code.grid_shape):
    hit = digits_l[..., j, None] == jnp.arange(size)
    term = jnp.where(hit, values_l[..., j, None], 0.0)
    total = total + term.reshape(lead + (1,) * j + (size,) + (1,) * (code.ell - 1 - j))
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _token_nll(code: PrimeCode, grid, x0):
  """-log softmax(grid)[x0]; its gradient softmax - onehot is formed in one fused pass."""
  return _token_nll_fwd(code, grid, x0)[0]


def _token_nll_fwd(code, grid, x0):
  code_logits = _code_logits(code, grid)
  log_z = jax.nn.logsumexp(code_logits, axis=-1)
  target = jnp.take_along_axis(code_logits, x0[..., None], axis=-1)[..., 0]
  return log_z - target, (grid, log_z, x0)


def _token_nll_bwd(code, res, g):
  grid, log_z, x0 = res
  code_logits = _code_logits(code, grid)
  onehot = x0[..., None] == jnp.arange(code_logits.shape[-1])
  d_code_logits = g[..., None] * (jnp.exp(code_logits - log_z[..., None]) - onehot)
  return d_code_logits.reshape(grid.shape), None


_token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _masked_digit_nll(code: PrimeCode, grid, digits, masked):
  """Σ_j masked_j · -log μ^j(digits_j) under softmax(grid): (...,).

  The gradient P_c · (Σ_j masked_j - Σ_j masked_j [c_j = digits_j] / μ^j) is one fused pass, so
  the cost stays near plain cross-entropy for every ℓ.
  """
  return _masked_digit_nll_fwd(code, grid, digits, masked)[0]


def _masked_digit_nll_fwd(code, grid, digits, masked):
  axes = _grid_axes(grid, code.ell)
  peak = jax.lax.stop_gradient(grid.max(axis=axes))
  e = jnp.exp(grid - peak.reshape(peak.shape + (1,) * code.ell))
  sums = _marginal_sums(e, code.ell)
  z = sums[0].sum(-1)  # (...,)
  hit = jnp.stack([jnp.take_along_axis(s, digits[..., j, None], axis=-1)[..., 0]
                   for j, s in enumerate(sums)], axis=-1)  # (..., ℓ)
  # Clamp: a true digit with mass below 1e-37 of the peak costs at most ~85 nats, never inf.
  hit = jnp.maximum(hit, 1e-37 * z[..., None])
  masked = masked.astype(grid.dtype)
  nll = (masked * (jnp.log(z)[..., None] - jnp.log(hit))).sum(-1)
  return nll, (grid, peak, z, hit / z[..., None], digits, masked)


def _masked_digit_nll_bwd(code, res, g):
  grid, peak, z, mu, digits, masked = res
  expand = lambda a: a.reshape(a.shape + (1,) * code.ell)
  p = jnp.exp(grid - expand(peak)) / expand(z)
  coef = expand(masked.sum(-1)) - _digit_onehot_sum(code, masked / mu, digits)
  return expand(g) * p * coef, None, None


_masked_digit_nll.defvjp(_masked_digit_nll_fwd, _masked_digit_nll_bwd)


def token_log_probs(code: PrimeCode, logits: ArrayLike, x0: ArrayLike,
                    y: ArrayLike | None = None) -> jax.Array:
  """(...,) log p(x0 | y) under the softmax of the token logits, restricted by y when given."""
  return -_token_nll(code, grid_logits(code, logits, y), jnp.asarray(x0))


def digit_log_marginals(code: PrimeCode, logits: ArrayLike,
                        y: ArrayLike | None = None) -> jax.Array:
  """(..., ℓ, b) log μ^j(v): the probability that digit j equals v under p(· | y).

  Entries for leading-digit values that no valid token has are NEG_INF.
  """
  grid = grid_logits(code, logits, y)
  axes = _grid_axes(grid, code.ell)
  peak = grid.max(axis=axes, keepdims=True)
  sums = _marginal_sums(jnp.exp(grid - peak), code.ell)
  log_z = jnp.log(sums[0].sum(-1, keepdims=True))
  rows = []
  for s in sums:
    row = jnp.log(s) - log_z
    row = jnp.where(s > 0, row, NEG_INF)
    if row.shape[-1] < code.base:
      row = jnp.pad(row, [(0, 0)] * (row.ndim - 1) + [(0, code.base - row.shape[-1])],
                    constant_values=NEG_INF)
    rows.append(row)
  return jnp.stack(rows, axis=-2)


def _time_weight(schedule: Schedule, t: ArrayLike, ndim: int) -> jax.Array:
  """w(t) for t of shape (B,), reshaped to broadcast against (B, ...) with `ndim` axes."""
  w = schedule.weight(jnp.asarray(t, jnp.float32))
  return w.reshape(w.shape + (1,) * (ndim - w.ndim))


def joint_loss(code: PrimeCode, schedule: Schedule, logits: ArrayLike, x0: ArrayLike,
               y_t: ArrayLike, t: ArrayLike,
               carry_over: bool = True) -> jax.Array:
  """The paper's objective per token: -w(t) log p(x0 | y_t) on tokens with any masked digit.

  NOT an upper bound on the NLL when ℓ > 1 (see DESIGN §1.4); kept to reproduce the paper.
  """
  x0 = jnp.asarray(x0)
  log_p = token_log_probs(code, logits, x0, y_t if carry_over else None)
  any_masked = (jnp.asarray(y_t) == code.mask_value).any(-1)
  return jnp.where(any_masked, -log_p, 0.0) * _time_weight(schedule, t, x0.ndim)


def valid_loss(code: PrimeCode, schedule: Schedule, logits: ArrayLike, x0: ArrayLike,
               y_t: ArrayLike, t: ArrayLike,
               carry_over: bool = True) -> jax.Array:
  """The valid bound per token: -w(t) Σ_j [digit j masked] log μ^j(x0_j | y_t).

  This is the masked-diffusion ELBO on the ℓL sub-token sequence, an upper bound on -log p(x0).
  """
  x0 = jnp.asarray(x0)
  y_t = jnp.asarray(y_t)
  grid = grid_logits(code, logits, y_t if carry_over else None)
  nll = _masked_digit_nll(code, grid, code.encode(x0), y_t == code.mask_value)
  return nll * _time_weight(schedule, t, x0.ndim)


def cross_entropy_loss(code: PrimeCode, logits: ArrayLike, x0: ArrayLike, y_t: ArrayLike,
                       carry_over: bool = True) -> jax.Array:
  """Unweighted -log p(x0 | y_t) on every token: how the released image models were trained."""
  return -token_log_probs(code, logits, x0, y_t if carry_over else None)
