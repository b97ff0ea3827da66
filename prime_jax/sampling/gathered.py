"""Draws at a step's revealed positions only: the examples of one device gather their revealed
positions and draw for them a fixed number at a time, so a step's work follows what it reveals
rather than the sequence length. A sharded batch gathers on each device separately.

Shape suffixes: B batch, P the token-position axes, l the ℓ digits of a token, C vocabulary,
R the rows (positions) of one device's examples, S the `slots` rows drawn in one round."""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

# (key, logits (S, C), y (S, ℓ), row ids (S,)) -> (S, ℓ) proposed digits of those rows.
DrawFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def batch_mesh(batch_sharding: Optional[jax.sharding.NamedSharding], batch: int
               ) -> tuple[Optional[jax.sharding.Mesh], tuple[str, ...]]:
  """(mesh, batch axis names) of a NamedSharding that splits the batch axis, or (None, ())."""
  if batch_sharding is None:
    return None, ()
  if not isinstance(batch_sharding, jax.sharding.NamedSharding):
    raise ValueError(f"batch_sharding must be a NamedSharding, got {type(batch_sharding).__name__}")
  spec = tuple(batch_sharding.spec)
  axes = spec[0] if spec else None
  axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
  if not axes:
    return None, ()
  shards = math.prod(batch_sharding.mesh.shape[a] for a in axes)
  if batch % shards:
    raise ValueError(f"the batch of {batch} samples must be a multiple of the {shards} shards "
                     f"of batch_sharding's axes {axes}")
  return batch_sharding.mesh, axes


def _local_draw(draw_fn: DrawFn, key: jax.Array, slots: int, logits_BPC: jax.Array,
                y_BPl: jax.Array, revealed_BP: jax.Array, first_row: jax.Array | int
                ) -> jax.Array:
  """(B, *P, ℓ) digits drawn at the revealed positions of one device's examples (zeros
  elsewhere), `slots` rows per round; rows are numbered from `first_row` for the noise."""
  rows = revealed_BP.size
  padded = -(-rows // slots) * slots
  idx_R = jnp.nonzero(revealed_BP.reshape(-1), size=padded, fill_value=0)[0]
  count = revealed_BP.sum()
  logits_RC, y_Rl = logits_BPC.reshape(rows, -1), y_BPl.reshape(rows, y_BPl.shape[-1])

  def chunk(i, out_Rl):
    idx_S = jax.lax.dynamic_slice_in_dim(idx_R, i * slots, slots)
    digits_Sl = draw_fn(key, logits_RC[idx_S], y_Rl[idx_S], first_row + idx_S)
    target_S = jnp.where(i * slots + jnp.arange(slots) < count, idx_S, rows)  # Drop unused.
    return out_Rl.at[target_S].set(digits_Sl, mode="drop")

  out_Rl = jax.lax.fori_loop(0, (count + slots - 1) // slots, chunk, jnp.zeros_like(y_Rl))
  return out_Rl.reshape(y_BPl.shape)


def gathered_draw(draw_fn: DrawFn, key: jax.Array, slots: int, logits_BPC: jax.Array,
                  y_BPl: jax.Array, revealed_BP: jax.Array, mesh: Optional[jax.sharding.Mesh],
                  batch_axes: tuple[str, ...]) -> jax.Array:
  """(B, *P, ℓ) digits drawn at the revealed positions only, `slots` of them at a time among
  the examples of one device; a row's number (its flat index in the whole batch) keys its noise,
  so the draws do not depend on the sharding."""
  if mesh is None:
    return _local_draw(draw_fn, key, slots, logits_BPC, y_BPl, revealed_BP, 0)
  spec = jax.sharding.PartitionSpec(batch_axes)

  def local(logits_BPC, y_BPl, revealed_BP):
    first_row = jax.lax.axis_index(batch_axes) * revealed_BP.size  # This shard's first row.
    return _local_draw(draw_fn, key, slots, logits_BPC, y_BPl, revealed_BP, first_row)

  return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 3,
                       out_specs=spec)(logits_BPC, y_BPl, revealed_BP)
