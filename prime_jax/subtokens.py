"""The Prime code: tokens in [0, C) written as ℓ base-b digits (sub-tokens), plus a mask value."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def smallest_base(vocab_size: int, ell: int) -> int:
  """Smallest integer b with b**ell >= vocab_size, in exact integer arithmetic."""
  if ell == 1:
    return vocab_size
  lo, hi = 1, vocab_size
  while lo < hi:  # Invariant: hi**ell >= vocab_size.
    mid = (lo + hi) // 2
    if mid**ell >= vocab_size:
      hi = mid
    else:
      lo = mid + 1
  return max(lo, 2)


@dataclasses.dataclass(frozen=True)
class PrimeCode:
  """Immutable sub-token code for a vocabulary of `vocab_size` tokens at target length ℓ.

  Digits are most significant first; digit value `base` (== `mask_value`) means "masked".
  Usable as a static argument of jitted functions (hashable, compared by value).
  """

  vocab_size: int
  ell: int

  def __post_init__(self):
    if not isinstance(self.vocab_size, (int, np.integer)) or self.vocab_size < 2:
      raise ValueError(f"vocab_size must be an integer >= 2, got {self.vocab_size!r}")
    if not isinstance(self.ell, (int, np.integer)) or self.ell < 1:
      raise ValueError(f"ell (ℓ) must be an integer >= 1, got {self.ell!r}")
    object.__setattr__(self, "vocab_size", int(self.vocab_size))
    object.__setattr__(self, "ell", int(self.ell))

  @functools.cached_property
  def base(self) -> int:
    return smallest_base(self.vocab_size, self.ell)

  @property
  def mask_value(self) -> int:
    return self.base

  @property
  def num_codes(self) -> int:
    """b**ℓ: every code, valid or not."""
    return self.base**self.ell

  @functools.cached_property
  def first_digit_size(self) -> int:
    """How many values the leading digit takes over valid tokens: ceil(C / b**(ℓ-1)) <= b."""
    step = self.base ** (self.ell - 1)
    return -(-self.vocab_size // step)

  @property
  def grid_shape(self) -> tuple[int, ...]:
    """Shape of the token axis reshaped into digits, padded only as far as the leading digit needs."""
    return (self.first_digit_size,) + (self.base,) * (self.ell - 1)

  @property
  def grid_size(self) -> int:
    return int(np.prod(self.grid_shape))

  @functools.cached_property
  def _powers(self) -> tuple[int, ...]:
    return tuple(self.base ** (self.ell - 1 - j) for j in range(self.ell))

  def digit_table(self) -> np.ndarray:
    """(C, ℓ) int32 array: row x holds the digits of token x."""
    return np.asarray(self.encode(np.arange(self.vocab_size)), np.int32)

  def encode(self, tokens: ArrayLike) -> np.ndarray | jax.Array:
    """(...,) tokens in [0, C) -> (..., ℓ) digits. Raises ValueError on concrete out-of-range input."""
    _check_range(tokens, self.vocab_size, "tokens")
    xp = np if isinstance(tokens, np.ndarray) else jnp
    tokens = xp.asarray(tokens)
    powers = xp.asarray(self._powers, dtype=tokens.dtype)
    return (tokens[..., None] // powers) % self.base

  def decode(self, digits: ArrayLike) -> np.ndarray | jax.Array:
    """(..., ℓ) digits in [0, b) -> (...,) integers in [0, b**ℓ); codes >= C are invalid."""
    xp = np if isinstance(digits, np.ndarray) else jnp
    digits = xp.asarray(digits)
    if digits.shape[-1:] != (self.ell,):
      raise ValueError(f"digits must end in an axis of size ℓ={self.ell}, got shape {digits.shape}")
    powers = xp.asarray(self._powers, dtype=digits.dtype)
    return (digits * powers).sum(-1)

  def is_valid(self, digits: ArrayLike) -> np.ndarray | jax.Array:
    """(..., ℓ) -> (...,) bool: no digit masked or out of range, and the code decodes below C."""
    xp = np if isinstance(digits, np.ndarray) else jnp
    digits = xp.asarray(digits)
    in_range = ((digits >= 0) & (digits < self.base)).all(-1)
    return in_range & (self.decode(xp.clip(digits, 0, self.base - 1)) < self.vocab_size)

  def __repr__(self) -> str:
    return f"PrimeCode(vocab_size={self.vocab_size}, ell={self.ell}, base={self.base})"


def _check_range(values: ArrayLike, upper: int, name: str) -> None:
  """Raises ValueError when concrete values fall outside [0, upper); tracers pass through."""
  if isinstance(values, jax.core.Tracer):
    return
  arr = np.asarray(values)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
  if arr.size and (arr.min() < 0 or arr.max() >= upper):
    raise ValueError(
        f"{name} must lie in [0, {upper}), got values in [{arr.min()}, {arr.max()}]")
