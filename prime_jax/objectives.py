"""Training objectives on token logits: the paper's joint loss and the valid (marginal) bound.

All functions take token logits (..., C) from the network, never logits for invalid codes. The C
logits are padded to the digit grid (d0, b, ..., b) — d0 = the leading digit's range — so carry-over
is a broadcast bias per visible digit and a digit marginal is a reduction over the other axes.
Nothing of shape (..., C, ℓ) is formed. Losses are per token, already multiplied by w(t).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

# Finite stand-in for -inf: exp() of it is exactly 0 in float32, yet sums and gradients stay finite
# even where every entry of a slice is excluded.
NEG_INF = -1e30


def grid_logits(code: PrimeCode, logits, y=None) -> jax.Array:
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


def _carry_over_bias(code: PrimeCode, y) -> jax.Array:
  """Sum over digits j of a bias broadcast along grid axis j: NEG_INF where a visible digit differs."""
  y = jnp.asarray(y)
  lead = y.shape[:-1]
  bias = 0.0
  for j, size in enumerate(code.grid_shape):
    y_j = y[..., j, None]
    keep = (y_j == code.mask_value) | (y_j == jnp.arange(size))  # (..., size)
    shape = lead + (1,) * j + (size,) + (1,) * (code.length - 1 - j)
    bias = bias + jnp.where(keep, 0.0, NEG_INF).reshape(shape)
  return bias


def restrict_logits(code: PrimeCode, logits, y) -> jax.Array:
  """(..., C) float32 logits with carry-over applied: tokens inconsistent with y get NEG_INF."""
  grid = grid_logits(code, logits, y)
  return grid.reshape(grid.shape[:-code.length] + (-1,))[..., :code.vocab_size]


def token_log_probs(code: PrimeCode, logits, x0, y=None) -> jax.Array:
  """(...,) log p(x0 | y) under the softmax of the token logits, restricted by y when given."""
  grid = grid_logits(code, logits, y)
  flat = grid.reshape(grid.shape[:-code.length] + (-1,))
  log_z = jax.nn.logsumexp(flat, axis=-1)
  target = jnp.take_along_axis(flat, jnp.asarray(x0)[..., None], axis=-1)[..., 0]
  return target - log_z


def digit_log_marginals(code: PrimeCode, logits, y=None) -> jax.Array:
  """(..., ℓ, b) log μ^j(v): the probability that digit j equals v under p(· | y).

  Entries for leading-digit values that no valid token has are NEG_INF.
  """
  grid = grid_logits(code, logits, y)
  ell = code.length
  axes = tuple(range(grid.ndim - ell, grid.ndim))
  log_z = jax.nn.logsumexp(grid, axis=axes)[..., None]
  rows = []
  for j in range(ell):
    others = tuple(a for a in axes if a != axes[j])
    row = jax.nn.logsumexp(grid, axis=others) - log_z if others else grid - log_z
    if row.shape[-1] < code.base:
      row = jnp.pad(row, [(0, 0)] * (row.ndim - 1) + [(0, code.base - row.shape[-1])],
                    constant_values=NEG_INF)
    rows.append(row)
  return jnp.stack(rows, axis=-2)


def _time_weight(schedule: Schedule, t, ndim: int) -> jax.Array:
  """w(t) for t of shape (B,), reshaped to broadcast against (B, ...) with `ndim` axes."""
  w = schedule.weight(jnp.asarray(t, jnp.float32))
  return w.reshape(w.shape + (1,) * (ndim - w.ndim))


def joint_loss(code: PrimeCode, schedule: Schedule, logits, x0, y_t, t,
               carry_over: bool = True) -> jax.Array:
  """The paper's objective per token: -w(t) log p(x0 | y_t) on tokens with any masked digit.

  NOT an upper bound on the NLL when ℓ > 1 (see DESIGN §1.4); kept to reproduce the paper.
  """
  x0 = jnp.asarray(x0)
  log_p = token_log_probs(code, logits, x0, y_t if carry_over else None)
  any_masked = (jnp.asarray(y_t) == code.mask_value).any(-1)
  return jnp.where(any_masked, -log_p, 0.0) * _time_weight(schedule, t, x0.ndim)


def valid_loss(code: PrimeCode, schedule: Schedule, logits, x0, y_t, t,
               carry_over: bool = True) -> jax.Array:
  """The valid bound per token: -w(t) Σ_j [digit j masked] log μ^j(x0_j | y_t).

  This is the masked-diffusion ELBO on the ℓL sub-token sequence, an upper bound on -log p(x0).
  """
  x0 = jnp.asarray(x0)
  y_t = jnp.asarray(y_t)
  log_mu = digit_log_marginals(code, logits, y_t if carry_over else None)  # (..., ℓ, b)
  digits = code.encode(x0)
  target = jnp.take_along_axis(log_mu, digits[..., None], axis=-1)[..., 0]  # (..., ℓ)
  nll = jnp.where(y_t == code.mask_value, -target, 0.0).sum(-1)
  return nll * _time_weight(schedule, t, x0.ndim)


def cross_entropy_loss(code: PrimeCode, logits, x0, y_t, carry_over: bool = True) -> jax.Array:
  """Unweighted -log p(x0 | y_t) on every token: how the released image models were trained."""
  return -token_log_probs(code, logits, x0, y_t if carry_over else None)


OBJECTIVES = ("valid", "joint", "cross_entropy")


def loss_per_token(objective: str, code: PrimeCode, schedule: Schedule, logits, x0, y_t, t,
                   carry_over: bool = True) -> jax.Array:
  """Dispatches on the objective's config name; see OBJECTIVES."""
  if objective == "valid":
    return valid_loss(code, schedule, logits, x0, y_t, t, carry_over)
  if objective == "joint":
    return joint_loss(code, schedule, logits, x0, y_t, t, carry_over)
  if objective == "cross_entropy":
    return cross_entropy_loss(code, logits, x0, y_t, carry_over)
  raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
