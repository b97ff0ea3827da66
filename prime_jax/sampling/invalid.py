"""What a finished walk does with codes that decode to no token (>= C): re-draw, clip or keep.

Shape suffixes: B batch, P the token-position axes, l the ℓ digits of a token, C vocabulary,
K the sampler's T+1 steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prime_jax.sampling.draws import draw_digits
from prime_jax.sampling.settings import SamplerConfig
from prime_jax.subtokens import PrimeCode


def longest_valid_prefix(code: PrimeCode, digits: jax.Array) -> jax.Array:
  """(…, ℓ) -> (…, ℓ) digits with every digit after the longest leading run that some valid
  token shares replaced by the mask value (whole codes that are valid are unchanged)."""
  ell = code.ell
  powers = jnp.asarray([code.base ** (ell - 1 - j) for j in range(ell)], jnp.int32)
  keep_len = jnp.zeros(digits.shape[:-1], jnp.int32)
  for k in range(1, ell + 1):
    smallest_completion = (digits[..., :k] * powers[:k]).sum(-1)
    keep_len = keep_len + (smallest_completion < code.vocab_size)
  return jnp.where(jnp.arange(ell) < keep_len[..., None], digits, code.mask_value)


def apply_invalid_policy(code: PrimeCode, config: SamplerConfig, key: jax.Array, redraw_index: int,
                         y_BPl: jax.Array, logits_BPC: jax.Array, temperatures_K: jax.Array,
                         draw_dtype: jnp.dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Final digits (B, *P, ℓ) -> (tokens (B, *P), digits (B, *P, ℓ), num_invalid (B,)).

  'resample' re-draws an invalid token from the last logits restricted to its longest valid
  leading digits, with the key fold_in(key, redraw_index) and the last step's temperature;
  'clip' maps it to C-1; 'keep' returns it as is. num_invalid counts before the policy.
  """
  codes = code.decode(y_BPl)
  invalid = codes >= code.vocab_size
  num_invalid_B = invalid.reshape(y_BPl.shape[0], -1).sum(-1, dtype=jnp.int32)
  if config.invalid_policy == "keep":
    return codes, y_BPl, num_invalid_B
  if config.invalid_policy == "clip":
    tokens = jnp.minimum(codes, code.vocab_size - 1)
  else:
    partial = longest_valid_prefix(code, y_BPl)
    redrawn = draw_digits(jax.random.fold_in(key, redraw_index), code, logits_BPC, partial,
                          temperatures_K[-1], digit_source="joint", carry_over=True,
                          top_p=config.top_p, draw_dtype=draw_dtype)
    tokens = jnp.where(invalid, code.decode(redrawn), codes)
  return tokens, code.encode(tokens), num_invalid_B
