"""The Prime input embedding: ℓ sub-token digits (values 0..b, b = mask) -> one feature vector.

Shape suffixes: l the ℓ digit positions, V the b+1 digit values (row b is the mask), F the width
of one digit's embedding.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prime_jax.models.layers import constrain, logical
from prime_jax.subtokens import PrimeCode

COMBINE_MODES = ("concat", "sum")


def check_embedding_config(code: PrimeCode, features: int, per_digit_tables: bool,
                           combine: str, owner: str = "PrimeEmbedding",
                           features_field: str = "features") -> None:
  """Raises ValueError for embedding settings that cannot work (shared by the backbones)."""
  if combine not in COMBINE_MODES:
    raise ValueError(f"{owner}: combine must be one of {COMBINE_MODES}, got {combine!r}")
  if not isinstance(features, int) or features < 1:
    raise ValueError(f"{owner}: {features_field} must be a positive integer, got {features!r}")
  ell = code.ell
  if combine == "concat" and features % ell:
    raise ValueError(
        f"{owner}: {features_field}={features} must be divisible by the code length ℓ={ell} "
        f"when combine='concat' (each digit gets {features_field}/ℓ features)")
  if combine == "sum" and not per_digit_tables and ell > 1:
    raise ValueError(
        f"{owner}: combine='sum' with one shared table (per_digit_tables=False) and ℓ={ell} "
        "cannot tell digit positions apart (the sum is symmetric); use per_digit_tables=True "
        "or combine='concat'")


class PrimeEmbedding(nn.Module):
  """Embeds (..., ℓ) sub-tokens in {0..b} into (..., features).

  Default: one table (b+1, features/ℓ) shared by all digit positions (row b is the mask), and
  the ℓ digit embeddings concatenated in digit order. Options: `per_digit_tables` (one table per
  position, shape (ℓ, b+1, width)); `combine='sum'` (each digit embedding has width `features`,
  and they are summed). With ℓ = 1 this is an ordinary token embedding plus a mask row.
  """

  code: PrimeCode
  features: int
  per_digit_tables: bool = False
  combine: str = "concat"
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  embedding_init: Any = nn.initializers.normal(stddev=1.0)

  def __post_init__(self):
    check_embedding_config(self.code, self.features, self.per_digit_tables, self.combine)
    super().__post_init__()

  @property
  def digit_features(self) -> int:
    """Width of one digit's embedding."""
    return self.features // self.code.ell if self.combine == "concat" else self.features

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    ell, rows = self.code.ell, self.code.base + 1
    if y.shape[-1:] != (ell,):
      raise ValueError(f"PrimeEmbedding: input must end in an axis of size ℓ={ell}, "
                       f"got shape {y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
      raise ValueError(f"PrimeEmbedding: sub-tokens must be integers, got dtype {y.dtype}")
    width = self.digit_features
    if self.per_digit_tables:
      table_lVF = self.param("embedding", logical(self.embedding_init, ("digit", "vocab", "embed")),
                             (ell, rows, width), self.param_dtype)
      # Gather the feature axis before the lookup (FSDP-style): a lookup into a feature-sharded
      # table would give feature-sharded rows that the partitioner cannot re-shard by batch.
      table_lVF = constrain(table_lVF, (None, "vocab", None))
      digit_l = jnp.arange(ell)
      emb_lF = table_lVF[digit_l, y]  # (..., ℓ, F): digit j looks up its own table.
    else:
      table_VF = self.param("embedding", logical(self.embedding_init, ("vocab", "embed")),
                            (rows, width), self.param_dtype)
      table_VF = constrain(table_VF, ("vocab", None))  # As above.
      emb_lF = jnp.take(table_VF, y, axis=0)
    if self.combine == "concat":
      out = emb_lF.reshape(y.shape[:-1] + (ell * width,))
    else:
      out = emb_lF.sum(axis=-2)
    return out if self.dtype is None else out.astype(self.dtype)
