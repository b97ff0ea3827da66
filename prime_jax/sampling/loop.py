"""The sampling loop: one `jax.lax.fori_loop` over the time grid, then the invalid-code policy.

Shape suffixes: B batch, P the token-position axes, l the ℓ digits of a token, C vocabulary,
K the T+1 steps (the grid's T and the final fill), S the rows of one round of a gathered draw.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from prime_jax.sampling.conditioning import check_fixed
from prime_jax.sampling.draws import draw_digits
from prime_jax.sampling.gathered import batch_mesh, gathered_draw
from prime_jax.sampling.grid import draw_slot_count, step_constants
from prime_jax.sampling.invalid import apply_invalid_policy
from prime_jax.sampling.settings import (DenoiseFn, SampleResult, SamplerConfig,
                                         resolve_draw_dtype)
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode


def _constrain(x: jax.Array, batch_sharding: Optional[jax.sharding.NamedSharding]) -> jax.Array:
  """x laid out by `batch_sharding` (unchanged without one)."""
  return x if batch_sharding is None else jax.lax.with_sharding_constraint(x, batch_sharding)


@dataclasses.dataclass(frozen=True, eq=False)
class _Walk:
  """What every step of one run shares: the network, the settings, the (T+1,) per-step constants
  and how the gathered draw splits the batch (`slots` 0: draw at every position at once)."""

  denoise_fn: DenoiseFn
  code: PrimeCode
  config: SamplerConfig
  batch_sharding: Optional[jax.sharding.NamedSharding]
  progress_fn: Optional[Callable[[Any], None]]
  use_cache: bool
  draw_dtype: jnp.dtype
  times_K: jax.Array
  reveal_probs_K: jax.Array
  remask_probs_K: jax.Array
  temperatures_K: jax.Array
  slots: int
  mesh: Optional[jax.sharding.Mesh]
  batch_axes: tuple[str, ...]

  def constrain(self, x: jax.Array) -> jax.Array:
    return _constrain(x, self.batch_sharding)


class _Carry(NamedTuple):
  """The loop state: current sub-tokens, the last logits and the running counts."""

  y_BPl: jax.Array
  logits_BPC: jax.Array
  prev_changed: jax.Array  # () bool: the last step changed some sub-token.
  num_calls: jax.Array
  num_idle: jax.Array
  changes_K: jax.Array
  called_K: jax.Array


def _initial_digits(code: PrimeCode, shape: tuple[int, ...], fixed_tokens: Optional[ArrayLike],
                    fixed_mask: Optional[ArrayLike]) -> tuple[jax.Array, jax.Array]:
  """(y (B, *P, ℓ) all masked but the fixed tokens' digits, free (B, *P, 1) not fixed)."""
  y_BPl = jnp.full(shape + (code.ell,), code.mask_value, jnp.int32)
  if fixed_tokens is None:
    return y_BPl, jnp.ones(shape + (1,), bool)
  fixed_mask = jnp.asarray(fixed_mask, bool)
  fixed_tokens = jnp.where(fixed_mask, jnp.asarray(fixed_tokens, jnp.int32), 0)
  y_BPl = jnp.where(fixed_mask[..., None], code.encode(fixed_tokens), y_BPl)
  return y_BPl, ~fixed_mask[..., None]


def _logits_spec(denoise_fn: DenoiseFn, code: PrimeCode, y_shape: tuple[int, ...]
                 ) -> jax.ShapeDtypeStruct:
  """The network's output (B, *P, C), checked without running it."""
  t_spec = jax.ShapeDtypeStruct((y_shape[0],), jnp.float32)
  spec = jax.eval_shape(denoise_fn, jax.ShapeDtypeStruct(y_shape, jnp.int32), t_spec)
  expected = tuple(y_shape[:-1]) + (code.vocab_size,)
  if tuple(spec.shape) != expected:
    raise ValueError(f"denoise_fn must return logits of shape {expected}, got {spec.shape}")
  return spec


def _make_walk(denoise_fn: DenoiseFn, code: PrimeCode, schedule: Schedule,
               shape: tuple[int, ...], config: SamplerConfig, time_agnostic: bool,
               batch_sharding: Optional[jax.sharding.NamedSharding],
               progress_fn: Optional[Callable[[Any], None]]) -> _Walk:
  """Computes the per-step constants on the host and the gathered draw's chunk size."""
  consts = step_constants(schedule, config)
  batch, num_positions = shape[0], int(np.prod(shape[1:]))
  mesh, batch_axes = batch_mesh(batch_sharding, batch)
  local_batch = batch // (1 if mesh is None else math.prod(mesh.shape[a] for a in batch_axes))
  as_f32 = lambda a: jnp.asarray(a, jnp.float32)
  return _Walk(
      denoise_fn=denoise_fn, code=code, config=config, batch_sharding=batch_sharding,
      progress_fn=progress_fn, use_cache=time_agnostic and config.cache_idle_steps,
      draw_dtype=resolve_draw_dtype(config.draw_dtype), times_K=as_f32(consts.times),
      reveal_probs_K=as_f32(consts.reveal_probs), remask_probs_K=as_f32(consts.remask_probs),
      temperatures_K=as_f32(consts.temperatures),
      slots=draw_slot_count(schedule, config, num_positions, code.ell, local_batch),
      mesh=mesh, batch_axes=batch_axes)


def _draw(walk: _Walk, key: jax.Array, logits: jax.Array, y: jax.Array, k: jax.Array,
          row_ids: Optional[jax.Array] = None) -> jax.Array:
  """Step k's proposed digits (…, ℓ) for the rows of logits (…, C) and y (…, ℓ)."""
  config = walk.config
  return draw_digits(key, walk.code, logits, y, walk.temperatures_K[k],
                     digit_source=config.digit_source, carry_over=config.carry_over,
                     top_p=config.top_p, draw_dtype=walk.draw_dtype, row_ids=row_ids)


def _propose(walk: _Walk, key: jax.Array, logits_BPC: jax.Array, y_BPl: jax.Array,
             reveal_BPl: jax.Array, k: jax.Array) -> jax.Array:
  """(B, *P, ℓ) proposed digits, valid where `reveal_BPl` is set."""
  if not walk.slots:
    return _draw(walk, key, logits_BPC, y_BPl, k)
  draw_fn = lambda key, logits_SC, y_Sl, row_ids_S: _draw(walk, key, logits_SC, y_Sl, k, row_ids_S)
  return gathered_draw(draw_fn, key, walk.slots, logits_BPC, y_BPl, reveal_BPl.any(-1),
                       walk.mesh, walk.batch_axes)


def _call_network(walk: _Walk, carry: _Carry, masked_BPl: jax.Array, k: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """(step k's logits, whether the network ran): it is skipped once nothing is masked, and
  with caching also when the last step changed nothing (the input equals the last call's)."""
  any_masked = masked_BPl.any()
  need_call = any_masked & carry.prev_changed if walk.use_cache else any_masked
  y_BPl, logits_BPC = carry.y_BPl, carry.logits_BPC
  t_B = jnp.full((y_BPl.shape[0],), walk.times_K[k], jnp.float32)
  logits_BPC = jax.lax.cond(
      need_call, lambda: walk.constrain(walk.denoise_fn(y_BPl, t_B).astype(logits_BPC.dtype)),
      lambda: logits_BPC)
  return logits_BPC, need_call


def _step(walk: _Walk, key: jax.Array, free_BP1: jax.Array, k: jax.Array, carry: _Carry
          ) -> _Carry:
  """Step k: reveal each masked sub-token with probability reveal_probs[k] (digits from one
  draw), re-mask visible free ones with probability remask_probs[k] (corrector only)."""
  y_BPl, mask_value = carry.y_BPl, walk.code.mask_value
  k_reveal, k_remask, k_draw = jax.random.split(jax.random.fold_in(key, k), 3)
  masked_BPl = y_BPl == mask_value
  logits_BPC, need_call = _call_network(walk, carry, masked_BPl, k)
  reveal_BPl = masked_BPl & (jax.random.uniform(k_reveal, y_BPl.shape) < walk.reveal_probs_K[k])
  new_y_BPl = y_BPl
  if walk.config.corrector is not None:
    remask_BPl = ~masked_BPl & free_BP1 & (jax.random.uniform(k_remask, y_BPl.shape)
                                           < walk.remask_probs_K[k])
    new_y_BPl = jnp.where(remask_BPl, mask_value, new_y_BPl)
  propose = lambda: _propose(walk, k_draw, logits_BPC, y_BPl, reveal_BPl, k)
  if walk.slots:  # A step that reveals nothing runs no round of the gathered draw.
    proposal_BPl = propose()
  else:
    proposal_BPl = jax.lax.cond(reveal_BPl.any(), propose, lambda: jnp.zeros_like(y_BPl))
  new_y_BPl = walk.constrain(jnp.where(reveal_BPl, proposal_BPl, new_y_BPl))
  num_changed = (new_y_BPl != y_BPl).sum(dtype=jnp.int32)
  changed = num_changed > 0
  if walk.progress_fn is not None:
    jax.debug.callback(walk.progress_fn, k)
  return _Carry(new_y_BPl, logits_BPC, changed, carry.num_calls + need_call,
                carry.num_idle + ~changed, carry.changes_K.at[k].set(num_changed),
                carry.called_K.at[k].set(need_call))


def sample(key: jax.Array, denoise_fn: DenoiseFn, code: PrimeCode, schedule: Schedule,
           shape: Sequence[int], config: SamplerConfig = SamplerConfig(), *,
           time_agnostic: bool, fixed_tokens: Optional[ArrayLike] = None,
           fixed_mask: Optional[ArrayLike] = None,
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
  y_BPl, free_BP1 = _initial_digits(code, shape, fixed_tokens, fixed_mask)
  y_BPl = _constrain(y_BPl, batch_sharding)
  logits_spec = _logits_spec(denoise_fn, code, y_BPl.shape)
  walk = _make_walk(denoise_fn, code, schedule, shape, config, time_agnostic, batch_sharding,
                    progress_fn)
  num_steps = config.num_steps + 1  # The grid's T steps and the final fill.
  init = _Carry(y_BPl, walk.constrain(jnp.zeros(logits_spec.shape, logits_spec.dtype)),
                jnp.asarray(True), jnp.int32(0), jnp.int32(0), jnp.zeros((num_steps,), jnp.int32),
                jnp.zeros((num_steps,), bool))
  out = jax.lax.fori_loop(0, num_steps, functools.partial(_step, walk, key, free_BP1), init)
  tokens, digits, num_invalid = apply_invalid_policy(
      code, config, key, num_steps, out.y_BPl, out.logits_BPC, walk.temperatures_K,
      walk.draw_dtype)
  return SampleResult(tokens=walk.constrain(tokens.astype(jnp.int32)),
                      digits=walk.constrain(digits.astype(jnp.int32)), num_calls=out.num_calls,
                      num_idle=out.num_idle, num_invalid=num_invalid,
                      changes_per_step=out.changes_K, called_per_step=out.called_K)

def make_sample_fn(apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], code: PrimeCode,
                   schedule: Schedule, shape: Sequence[int],
                   config: SamplerConfig = SamplerConfig(), *, time_agnostic: bool,
                   batch_sharding: Optional[jax.sharding.NamedSharding] = None,
                   compiler_options: Optional[dict] = None) -> Callable[..., SampleResult]:
  """Returns `fn(params, key, fixed_tokens=None, fixed_mask=None) -> SampleResult`, jitted once.

  `apply_fn(params, y, t)` gives the logits. Fixed tokens are checked on the host before the
  jitted call, so bad ids fail with a ValueError instead of a compile. `compiler_options` go
  to `jax.jit` (an experiment's are `Experiment.compiler_options`).
  """
  shape = tuple(int(s) for s in shape)

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def run(params: Any, key: jax.Array, fixed_tokens: ArrayLike, fixed_mask: ArrayLike
          ) -> SampleResult:
    return sample(key, lambda y, t: apply_fn(params, y, t), code, schedule, shape, config,
                  time_agnostic=time_agnostic, fixed_tokens=fixed_tokens, fixed_mask=fixed_mask,
                  batch_sharding=batch_sharding)

  def fn(params: Any, key: jax.Array, fixed_tokens: Optional[ArrayLike] = None,
         fixed_mask: Optional[ArrayLike] = None) -> SampleResult:
    check_fixed(code, shape, fixed_tokens, fixed_mask)
    if fixed_tokens is None:
      fixed_tokens = np.zeros(shape, np.int32)
      fixed_mask = np.zeros(shape, bool)
    return run(params, key, fixed_tokens, fixed_mask)

  return fn
