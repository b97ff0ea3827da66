"""The sampling loop: one `jax.lax.fori_loop` over the time grid, then the invalid-code policy."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prime_jax.sampling.conditioning import check_fixed
from prime_jax.sampling.draws import draw_digits
from prime_jax.sampling.grid import draw_slot_count, step_constants
from prime_jax.sampling.settings import (DenoiseFn, SampleResult, SamplerConfig,
                                         resolve_draw_dtype)
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode


def _batch_mesh(batch_sharding, batch: int):
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


def _longest_valid_prefix(code: PrimeCode, digits: jax.Array) -> jax.Array:
  """(…, ℓ) -> (…, ℓ) digits with every digit after the longest leading run that some valid
  token shares replaced by the mask value (whole codes that are valid are unchanged)."""
  ell = code.ell
  powers = jnp.asarray([code.base ** (ell - 1 - j) for j in range(ell)], jnp.int32)
  keep_len = jnp.zeros(digits.shape[:-1], jnp.int32)
  for k in range(1, ell + 1):
    smallest_completion = (digits[..., :k] * powers[:k]).sum(-1)
    keep_len = keep_len + (smallest_completion < code.vocab_size)
  return jnp.where(jnp.arange(ell) < keep_len[..., None], digits, code.mask_value)


def sample(key: jax.Array, denoise_fn: DenoiseFn, code: PrimeCode, schedule: Schedule,
           shape: Sequence[int], config: SamplerConfig = SamplerConfig(), *,
           time_agnostic: bool, fixed_tokens=None, fixed_mask=None,
           batch_sharding: Optional[jax.sharding.NamedSharding] = None,
           progress_fn: Optional[Callable[[Any], None]] = None) -> SampleResult:
  """Draws samples of token shape (B, *P); traceable, so wrap it in jax.jit (see make_sample_fn).

  `denoise_fn(y (B, *P, ℓ), t (B,))` returns token logits (B, *P, C). Positions where `fixed_mask`
  is True start fully visible with `fixed_tokens` and never change. With `time_agnostic` (and
  `config.cache_idle_steps`) a step whose input equals the last call's input reuses its logits.
  Invalid codes (>= C): 'resample' re-draws the token from the last logits restricted to its
  longest valid leading digits; 'clip' maps it to C-1; 'keep' returns it as is. A
  `batch_sharding` splits the batch axis over its mesh axes; the samples do not depend on it.
  """
  shape = tuple(int(s) for s in shape)
  check_fixed(code, shape, fixed_tokens, fixed_mask)
  ell, mask_value = code.ell, code.mask_value
  consts = step_constants(schedule, config)
  num_steps = config.num_steps + 1  # The grid's T steps and the final fill.
  draw_dtype = resolve_draw_dtype(config.draw_dtype)
  use_cache = time_agnostic and config.cache_idle_steps
  times = jnp.asarray(consts.times, jnp.float32)
  reveal_probs = jnp.asarray(consts.reveal_probs, jnp.float32)
  remask_probs = jnp.asarray(consts.remask_probs, jnp.float32)
  temperatures = jnp.asarray(consts.temperatures, jnp.float32)
  corrector = config.corrector is not None

  def constrain(x):
    return x if batch_sharding is None else jax.lax.with_sharding_constraint(x, batch_sharding)

  y = jnp.full(shape + (ell,), mask_value, jnp.int32)
  if fixed_tokens is not None:
    fixed_mask = jnp.asarray(fixed_mask, bool)
    fixed_tokens = jnp.where(fixed_mask, jnp.asarray(fixed_tokens, jnp.int32), 0)
    y = jnp.where(fixed_mask[..., None], code.encode(fixed_tokens), y)
    free = ~fixed_mask[..., None]
  else:
    free = jnp.ones(shape + (1,), bool)
  y = constrain(y)
  t_spec = jax.ShapeDtypeStruct((shape[0],), jnp.float32)
  logits_spec = jax.eval_shape(denoise_fn, jax.ShapeDtypeStruct(y.shape, jnp.int32), t_spec)
  expected = shape + (code.vocab_size,)
  if tuple(logits_spec.shape) != expected:
    raise ValueError(f"denoise_fn must return logits of shape {expected}, got {logits_spec.shape}")

  def draw(step_key, logits, y_in, k, row_ids=None):
    return draw_digits(step_key, code, logits, y_in, temperatures[k],
                       digit_source=config.digit_source, carry_over=config.carry_over,
                       top_p=config.top_p, draw_dtype=draw_dtype, row_ids=row_ids)

  batch, num_positions = shape[0], int(np.prod(shape[1:]))
  mesh, batch_axes = _batch_mesh(batch_sharding, batch)
  local_batch = batch // (1 if mesh is None else math.prod(mesh.shape[a] for a in batch_axes))
  slots = draw_slot_count(schedule, config, num_positions, ell, local_batch)

  def gathered_draw(step_key, logits, y_in, revealed, k):
    """Draws at the revealed positions only, `slots` of them at a time among the examples of
    one device (so a sharded batch gathers locally)."""
    def local(logits, y_in, revealed, first_row):
      rows = revealed.size
      padded = -(-rows // slots) * slots
      idx = jnp.nonzero(revealed.reshape(-1), size=padded, fill_value=0)[0]
      count = revealed.sum()
      logits_RC, y_Rl = logits.reshape(rows, -1), y_in.reshape(rows, ell)

      def chunk(i, out):
        idx_S = jax.lax.dynamic_slice_in_dim(idx, i * slots, slots)
        digits_Sl = draw(step_key, logits_RC[idx_S], y_Rl[idx_S], k, first_row + idx_S)
        target_S = jnp.where(i * slots + jnp.arange(slots) < count, idx_S, rows)  # Drop unused.
        return out.at[target_S].set(digits_Sl, mode="drop")

      out = jax.lax.fori_loop(0, (count + slots - 1) // slots, chunk, jnp.zeros_like(y_Rl))
      return out.reshape(y_in.shape)

    if mesh is None:
      return local(logits, y_in, revealed, 0)
    spec = jax.sharding.PartitionSpec(batch_axes)
    first = lambda: jax.lax.axis_index(batch_axes) * (local_batch * num_positions)
    return jax.shard_map(lambda *a: local(*a, first()), mesh=mesh, in_specs=(spec,) * 3,
                         out_specs=spec)(logits, y_in, revealed)

  def propose(step_key, logits, y_in, reveal, k):
    if not slots:
      return draw(step_key, logits, y_in, k)
    return gathered_draw(step_key, logits, y_in, reveal.any(-1), k)

  def body(k, carry):
    y, logits, prev_changed, num_calls, num_idle, changes, called = carry
    step_key = jax.random.fold_in(key, k)
    k_reveal, k_remask, k_draw = jax.random.split(step_key, 3)
    masked = y == mask_value
    any_masked = masked.any()
    need_call = any_masked & prev_changed if use_cache else any_masked
    t_B = jnp.full((shape[0],), times[k], jnp.float32)
    logits = jax.lax.cond(need_call, lambda: constrain(denoise_fn(y, t_B).astype(logits.dtype)),
                          lambda: logits)
    reveal = masked & (jax.random.uniform(k_reveal, y.shape) < reveal_probs[k])
    new_y = y
    if corrector:
      remask = ~masked & free & (jax.random.uniform(k_remask, y.shape) < remask_probs[k])
      new_y = jnp.where(remask, mask_value, new_y)
    if slots:  # A step that reveals nothing runs no round of the gathered draw.
      proposal = propose(k_draw, logits, y, reveal, k)
    else:
      proposal = jax.lax.cond(reveal.any(), lambda: propose(k_draw, logits, y, reveal, k),
                              lambda: jnp.zeros_like(y))
    new_y = constrain(jnp.where(reveal, proposal, new_y))
    num_changed = (new_y != y).sum(dtype=jnp.int32)
    changed = num_changed > 0
    if progress_fn is not None:
      jax.debug.callback(progress_fn, k)
    return (new_y, logits, changed, num_calls + need_call, num_idle + ~changed,
            changes.at[k].set(num_changed), called.at[k].set(need_call))

  init = (y, constrain(jnp.zeros(logits_spec.shape, logits_spec.dtype)), jnp.asarray(True),
          jnp.int32(0), jnp.int32(0), jnp.zeros((num_steps,), jnp.int32),
          jnp.zeros((num_steps,), bool))
  y, logits, _, num_calls, num_idle, changes, called = jax.lax.fori_loop(0, num_steps, body, init)

  codes = code.decode(y)
  invalid = codes >= code.vocab_size
  num_invalid = invalid.reshape(shape[0], -1).sum(-1, dtype=jnp.int32)
  if config.invalid_policy == "keep":
    tokens, digits = codes, y
  else:
    if config.invalid_policy == "clip":
      tokens = jnp.minimum(codes, code.vocab_size - 1)
    else:
      partial = _longest_valid_prefix(code, y)
      redrawn = draw_digits(jax.random.fold_in(key, num_steps), code, logits, partial,
                            temperatures[-1], digit_source="joint", carry_over=True,
                            top_p=config.top_p, draw_dtype=draw_dtype)
      tokens = jnp.where(invalid, code.decode(redrawn), codes)
    digits = code.encode(tokens)
  return SampleResult(tokens=constrain(tokens.astype(jnp.int32)),
                      digits=constrain(digits.astype(jnp.int32)), num_calls=num_calls,
                      num_idle=num_idle, num_invalid=num_invalid, changes_per_step=changes,
                      called_per_step=called)


def make_sample_fn(apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], code: PrimeCode,
                   schedule: Schedule, shape: Sequence[int],
                   config: SamplerConfig = SamplerConfig(), *, time_agnostic: bool,
                   batch_sharding: Optional[jax.sharding.NamedSharding] = None):
  """Returns `fn(params, key, fixed_tokens=None, fixed_mask=None) -> SampleResult`, jitted once.

  `apply_fn(params, y, t)` gives the logits. Fixed tokens are checked on the host before the
  jitted call, so bad ids fail with a ValueError instead of a compile.
  """
  shape = tuple(int(s) for s in shape)

  @jax.jit
  def run(params, key, fixed_tokens, fixed_mask):
    return sample(key, lambda y, t: apply_fn(params, y, t), code, schedule, shape, config,
                  time_agnostic=time_agnostic, fixed_tokens=fixed_tokens, fixed_mask=fixed_mask,
                  batch_sharding=batch_sharding)

  def fn(params, key, fixed_tokens=None, fixed_mask=None):
    check_fixed(code, shape, fixed_tokens, fixed_mask)
    if fixed_tokens is None:
      fixed_tokens = np.zeros(shape, np.int32)
      fixed_mask = np.zeros(shape, bool)
    return run(params, key, fixed_tokens, fixed_mask)

  return fn
