"""Conditioning: tokens held fixed during sampling (a prompt prefix or scattered infill
positions), built and checked on the host."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.typing import ArrayLike

from prime_jax.subtokens import PrimeCode


def _concrete(x: Optional[ArrayLike]) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


def check_fixed(code: PrimeCode, shape: Sequence[int], fixed_tokens: Optional[ArrayLike],
                fixed_mask: Optional[ArrayLike]) -> None:
  """Raises ValueError for fixed tokens that do not fit `shape` or lie outside [0, C)."""
  if (fixed_tokens is None) != (fixed_mask is None):
    raise ValueError("fixed_tokens and fixed_mask must be given together")
  if fixed_tokens is None:
    return
  shape = tuple(shape)
  for name, value in (("fixed_tokens", fixed_tokens), ("fixed_mask", fixed_mask)):
    if tuple(np.shape(value)) != shape:
      raise ValueError(f"{name} must have the sample shape {shape}, got {np.shape(value)}")
  if _concrete(fixed_tokens) and _concrete(fixed_mask):
    tokens, mask = np.asarray(fixed_tokens), np.asarray(fixed_mask, bool)
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"fixed token ids must be integers, got dtype {tokens.dtype}")
    bad = mask & ((tokens < 0) | (tokens >= code.vocab_size))
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"fixed token id {int(tokens[where])} at index {where} is outside the "
                       f"vocabulary [0, {code.vocab_size})")


def condition_on_prefix(code: PrimeCode, prefix: ArrayLike, shape: Sequence[int]
                        ) -> tuple[np.ndarray, np.ndarray]:
  """A prefix (n,) shared by the batch, or (B, n), held fixed -> (fixed_tokens, fixed_mask).

  Positions are counted in row-major order over the position axes of `shape` = (B, *P), so for
  images (B, H, W, Ch) a prefix fixes the leading rows. Raises ValueError on bad ids or length.
  """
  shape = tuple(int(s) for s in shape)
  batch, num_positions = shape[0], int(np.prod(shape[1:]))
  prefix = np.asarray(prefix)
  if prefix.ndim not in (1, 2) or (prefix.ndim == 2 and prefix.shape[0] != batch):
    raise ValueError(f"prefix must have shape (n,) or (B={batch}, n), got {prefix.shape}")
  if prefix.size and not np.issubdtype(prefix.dtype, np.integer):
    raise ValueError(f"prefix token ids must be integers, got dtype {prefix.dtype}")
  n = prefix.shape[-1]
  if n > num_positions:
    raise ValueError(f"prefix has {n} tokens but the sequence has only {num_positions} positions")
  bad = (prefix < 0) | (prefix >= code.vocab_size)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"prefix token id {int(prefix[where])} at index {where} is outside the "
                     f"vocabulary [0, {code.vocab_size})")
  tokens = np.zeros((batch, num_positions), np.int32)
  mask = np.zeros((batch, num_positions), bool)
  tokens[:, :n] = prefix
  mask[:, :n] = True
  return tokens.reshape(shape), mask.reshape(shape)
