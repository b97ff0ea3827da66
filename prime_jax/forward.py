"""The forward (noising) process: every sub-token is masked independently."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from prime_jax.subtokens import PrimeCode


def mask_subtokens(key: jax.Array, code: PrimeCode, x0: ArrayLike,
                   alpha_t: ArrayLike) -> jax.Array:
  """Encodes clean tokens x0 (B, ...) and masks each digit with probability 1 - α_t.

  `alpha_t` has shape (B,) (one time per example) or broadcasts against x0. Returns y_t of shape
  (B, ..., ℓ) with masked digits set to `code.mask_value`.
  """
  digits = code.encode(x0)
  alpha = jnp.asarray(alpha_t, jnp.float32)
  alpha = alpha.reshape(alpha.shape + (1,) * (digits.ndim - alpha.ndim))
  visible = jax.random.uniform(key, digits.shape) < alpha
  return jnp.where(visible, digits, code.mask_value).astype(jnp.int32)


def masked_digits(code: PrimeCode, y: ArrayLike) -> jax.Array:
  """(..., ℓ) bool: which sub-tokens are masked."""
  return jnp.asarray(y) == code.mask_value
