"""Samplers for Prime: walk a time grid from t=1 (all sub-tokens masked) to t=0 (data).

In a step from t to s < t every masked sub-token is revealed with probability
(α_s - α_t) / (1 - α_t); visible sub-tokens never change (unless the optional corrector re-masks
them); a final step fills whatever is still masked. Revealed digits come from one of two sources:

* ``joint`` (the paper's text sampler): one token x̂ ~ p(· | y_t) per position, revealed digits
  are taken from x̂;
* ``marginal`` (the paper's image sampler, the one that matches the valid bound): each revealed
  digit is drawn from its own marginal μ^{ij}.

Token positions are every axis between the batch axis and the digit axis, so the same code serves
text (B, L) and images (B, H, W, Ch). The whole walk is one ``jax.lax.fori_loop``; a time-agnostic
network is not called on a step whose input equals the previous step's (idle-step caching).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from prime_jax import objectives
from prime_jax.objectives import NEG_INF
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]  # (y (B, *P, ℓ), t (B,)) -> (B, *P, C)

DIGIT_SOURCES = ("joint", "marginal")
GRIDS = ("uniform", "cosine")
INVALID_POLICIES = ("resample", "clip", "keep")
DRAW_DTYPES = ("float64", "float32")


def _as_tuple(value, size: int, name: str):
  if value is None:
    return None
  value = tuple(float(v) for v in value)
  if len(value) != size:
    raise ValueError(f"{name} must have {size} numbers, got {value!r}")
  return value


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Every sampler setting; hashable, so it can be a static argument of a jitted function.

  temperature_schedule (a, p, c): τ(s) = a·s^p + c in the paper's time s = 1 - t, multiplied
    with `temperature` (the image sampler's best CIFAR-10 setting is (-0.2, 2, 1)).
  corrector (a, p): γ(s) = a·s^p·(1-s)^p; visible sub-tokens are re-masked at rate γ·α'/α and
    masked ones revealed at the extra rate γ·α'/(1-α) (CIFAR-10: (16, 2)); see DESIGN §1.5.
  time_warp (a, p, c): the grid's paper times s are mapped to s' = 1 - a·(1-s)^p + c
    (CIFAR-10: (1, 1.7, 0)).
  draw_dtype: float type of the Gumbel race; 'float64' falls back to float32 when jax_enable_x64
    is off (see `resolve_draw_dtype`).
  invalid_policy: what happens to codes that decode to >= C (see `sample`).
  draw_slots: a step draws only at its revealed positions, this many at a time among the examples
    on one device, in as many rounds as it needs (None: chosen from the expected reveals, see
    `draw_slot_count`; 0: draw at every position at once). Samples do not depend on it.
  """

  num_steps: int = 512
  digit_source: str = "joint"
  carry_over: bool = True
  grid: str = "uniform"
  t_min: float = 1e-5
  temperature: float = 1.0
  temperature_schedule: Optional[tuple[float, float, float]] = None
  top_p: float = 1.0
  draw_dtype: str = "float64"
  corrector: Optional[tuple[float, float]] = None
  time_warp: Optional[tuple[float, float, float]] = None
  invalid_policy: str = "resample"
  cache_idle_steps: bool = True
  draw_slots: Optional[int] = None

  def __post_init__(self):
    def choose(field, options):
      if getattr(self, field) not in options:
        raise ValueError(f"unknown {field} {getattr(self, field)!r}; expected one of {options}")
    choose("digit_source", DIGIT_SOURCES)
    choose("grid", GRIDS)
    choose("invalid_policy", INVALID_POLICIES)
    choose("draw_dtype", DRAW_DTYPES)
    if not isinstance(self.num_steps, (int, np.integer)) or self.num_steps < 1:
      raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
    if not 0.0 < self.t_min < 1.0:
      raise ValueError(f"t_min must lie in (0, 1), got {self.t_min!r}")
    if not self.temperature > 0.0:
      raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
    if self.draw_slots is not None and (not isinstance(self.draw_slots, (int, np.integer))
                                        or self.draw_slots < 0):
      raise ValueError(f"draw_slots must be None or an integer >= 0, got {self.draw_slots!r}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
    set_ = lambda f, v: object.__setattr__(self, f, v)
    set_("num_steps", int(self.num_steps))
    set_("temperature_schedule", _as_tuple(self.temperature_schedule, 3, "temperature_schedule"))
    set_("corrector", _as_tuple(self.corrector, 2, "corrector"))
    set_("time_warp", _as_tuple(self.time_warp, 3, "time_warp"))
    if self.temperature_schedule is not None:
      a, p, c = self.temperature_schedule
      if not (c > 0 and a + c > 0 and p > 0):
        raise ValueError(f"temperature_schedule (a, p, c)={self.temperature_schedule} must keep "
                         "τ(s) = a·s^p + c positive on [0, 1]: need p > 0, c > 0, a + c > 0")
    if self.corrector is not None and not (self.corrector[0] >= 0 and self.corrector[1] > 0):
      raise ValueError(f"corrector (a, p)={self.corrector} needs a >= 0 and p > 0")
    if self.time_warp is not None and not (self.time_warp[0] > 0 and self.time_warp[1] > 0):
      raise ValueError(f"time_warp (a, p, c)={self.time_warp} needs a > 0 and p > 0")


# The paper's defaults (DESIGN §1.5). The image corrector is optional there, so it is left off.
TEXT_DEFAULTS = SamplerConfig(num_steps=512, digit_source="joint", top_p=0.95)
IMAGE_DEFAULTS = SamplerConfig(num_steps=512, digit_source="marginal",
                               temperature_schedule=(-0.2, 2.0, 1.0), time_warp=(1.0, 1.7, 0.0))


@flax.struct.dataclass
class SampleResult:
  """What `sample` returns; a pytree, so it passes through jit.

  tokens (B, *P) int32, digits (B, *P, ℓ) int32, num_calls / num_idle () int32 over the T+1 steps,
  num_invalid (B,) codes >= C before the invalid policy was applied, changes_per_step (T+1,) how
  many sub-tokens each step changed, called_per_step (T+1,) whether the network ran in each step.
  """

  tokens: jax.Array
  digits: jax.Array
  num_calls: jax.Array
  num_idle: jax.Array
  num_invalid: jax.Array
  changes_per_step: jax.Array
  called_per_step: jax.Array


def resolve_draw_dtype(name: str) -> jnp.dtype:
  """float64 only where jax_enable_x64 is on; float32 otherwise (float32 Gumbel noise is capped
  near 16, which under-samples rare tokens and biases generative perplexity)."""
  if name not in DRAW_DTYPES:
    raise ValueError(f"unknown draw_dtype {name!r}; expected one of {DRAW_DTYPES}")
  if name == "float64" and jax.config.jax_enable_x64:
    return jnp.float64
  return jnp.float32


# ----------------------------------------------------------------------------------------------
# The time grid and per-step constants.


def time_grid(config: SamplerConfig) -> np.ndarray:
  """(T+1,) float64 times t_0 = 1 > ... > t_T = t_min (non-increasing with a time warp).

  'uniform' is evenly spaced; 'cosine' is t = t_min + (1 - t_min)(1 + cos(πk/T))/2, dense at both
  ends. A time warp maps each paper time s = 1 - t through s' = 1 - a(1-s)^p + c, clipped.
  """
  steps = config.num_steps
  frac = np.arange(steps + 1, dtype=np.float64) / steps
  if config.grid == "uniform":
    t = 1.0 - (1.0 - config.t_min) * frac
  else:
    t = config.t_min + (1.0 - config.t_min) * 0.5 * (1.0 + np.cos(np.pi * frac))
  if config.time_warp is not None:
    a, p, c = config.time_warp
    s = 1.0 - t
    s_warped = np.clip(1.0 - a * (1.0 - s) ** p + c, 0.0, 1.0)
    t = np.clip(1.0 - s_warped, config.t_min, 1.0)
  return t


def _eval_schedule(fn, t: np.ndarray) -> np.ndarray:
  with jax.ensure_compile_time_eval():
    return np.asarray(fn(t), np.float64)


@dataclasses.dataclass(frozen=True)
class StepConstants:
  """Per-step numbers, all (T+1,): the network's time, the reveal and re-mask probabilities of a
  sub-token, and the temperature. Step T is the final fill (reveal probability 1)."""

  times: np.ndarray
  reveal_probs: np.ndarray
  remask_probs: np.ndarray
  temperatures: np.ndarray


def step_constants(schedule: Schedule, config: SamplerConfig) -> StepConstants:
  """Computes every step's constants once, on the host, in float64 where the schedule allows."""
  t = time_grid(config)
  alpha = np.clip(_eval_schedule(schedule.alpha, t), 0.0, 1.0)
  a_t, a_s = alpha[:-1], alpha[1:]
  with np.errstate(divide="ignore", invalid="ignore"):
    reveal = np.where(a_t < 1.0, (a_s - a_t) / (1.0 - a_t), 1.0)
  reveal = np.clip(np.nan_to_num(reveal, nan=1.0), 0.0, 1.0)
  remask = np.zeros_like(reveal)
  if config.corrector is not None:
    gamma_a, gamma_p = config.corrector
    s = 1.0 - t[:-1]
    h = t[:-1] - t[1:]
    gamma = gamma_a * s**gamma_p * (1.0 - s) ** gamma_p
    dalpha_ds = -_eval_schedule(schedule.dalpha, t[:-1])  # dα/ds >= 0 in the paper's time.
    with np.errstate(divide="ignore", invalid="ignore"):
      remask_rate = np.where(gamma > 0, gamma * dalpha_ds / a_t, 0.0)
      extra_rate = np.where(gamma > 0, gamma * dalpha_ds / (1.0 - a_t), 0.0)
    remask = -np.expm1(-h * np.nan_to_num(remask_rate, nan=0.0, posinf=np.inf))
    keep_masked = (1.0 - reveal) * np.exp(-h * np.nan_to_num(extra_rate, nan=0.0, posinf=np.inf))
    reveal = np.clip(1.0 - keep_masked, 0.0, 1.0)
    remask = np.clip(np.nan_to_num(remask, nan=0.0), 0.0, 1.0)
  temps = np.full(t.shape, config.temperature, np.float64)
  if config.temperature_schedule is not None:
    a, p, c = config.temperature_schedule
    temps = temps * (a * (1.0 - t) ** p + c)
  return StepConstants(times=t, reveal_probs=np.append(reveal, 1.0),
                       remask_probs=np.append(remask, 0.0), temperatures=temps)


def idle_probability(schedule: Schedule, config: SamplerConfig, num_subtokens: int) -> np.ndarray:
  """(T+1,) chance that each step reveals nothing when `num_subtokens` start masked: every
  sub-token is revealed in step t->s with probability α_s - α_t, independently (no corrector)."""
  consts = step_constants(schedule, config)
  alpha = np.clip(_eval_schedule(schedule.alpha, consts.times), 0.0, 1.0)
  start = alpha[0]
  revealed = np.append(alpha[1:] - alpha[:-1], 1.0 - alpha[-1]) / (1.0 - start)
  return (1.0 - revealed) ** num_subtokens


def draw_slot_count(schedule: Schedule, config: SamplerConfig, num_positions: int,
                    length: int, batch: int = 1) -> int:
  """Positions a step draws for at a time among `batch` examples (0: every position at once).

  A step gathers the revealed positions of the examples on one device and draws for them in
  chunks of this many, looping until all have a draw. The busiest grid step reveals on average
  m = ℓ·L·max_k P(a sub-token is revealed in step k) sub-tokens per example; chunks of
  max(2, ⌈batch·m/2⌉) keep the work near what is revealed. Past m > L/4 most positions reveal
  anyway and one full draw is cheaper.
  """
  if config.draw_slots is not None:
    slots = config.draw_slots
  else:
    idle_one = idle_probability(schedule, config, 1)[:-1]  # Per sub-token: 1 - P(revealed).
    m = length * num_positions * float(np.max(1.0 - idle_one))
    slots = 0 if 4.0 * m > num_positions else max(2, int(math.ceil(batch * m / 2.0)))
  return 0 if slots >= batch * num_positions else int(slots)


# ----------------------------------------------------------------------------------------------
# Categorical draws.


# Rows wider than this race in two levels: a block by its mass, then an entry inside it.
FLAT_RACE_MAX = 1024


def _block_shape(size: int) -> tuple[int, int]:
  """(blocks, width) of a race over `size` outcomes: one block up to FLAT_RACE_MAX, else about
  √size blocks of √size entries."""
  if size <= FLAT_RACE_MAX:
    return 1, size
  width = math.isqrt(size - 1) + 1
  return -(-size // width), width


def _as_blocks(logits: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """(..., n) -> (..., *shape), padded with NEG_INF."""
  size, (blocks, width) = logits.shape[-1], shape
  padded = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, blocks * width - size)],
                   constant_values=NEG_INF)
  return padded.reshape(logits.shape[:-1] + (blocks, width))


def _race(logits: jax.Array, noise: jax.Array) -> jax.Array:
  """The first index of the maximum of logits + noise along the last axis."""
  scores = logits.astype(noise.dtype) + noise
  # As argmax, but as two plain reductions: XLA's CPU argmax (a variadic reduce) is several
  # times slower than a max and a min.
  best = scores.max(-1, keepdims=True)
  size = scores.shape[-1]
  return jnp.where(scores == best, jnp.arange(size, dtype=jnp.int32), size).min(-1)


def _row_noise(key: jax.Array, row_ids: jax.Array, width: int, dtype) -> jax.Array:
  """(*R, width) Gumbel noise; row r's comes from fold_in(key, row_ids[r]) alone."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids.reshape(-1))
  noise = jax.vmap(lambda k: jax.random.gumbel(k, (width,), dtype))(keys)
  return noise.reshape(row_ids.shape + (width,))


def _block_race(x_ROI: jax.Array, noise_fn: Callable[[int], jax.Array], top_p: float
                ) -> jax.Array:
  """(*R,) flat indices o·I + i drawn from softmax(x) over the last two axes (blocks × entries),
  restricted to the top-p nucleus: the most probable entries whose mass first reaches top_p.

  `noise_fn(round)` gives (*R, O + I) Gumbel noise, fresh for each round. A block is raced by its
  mass, then an entry inside it. With top_p < 1 a draw outside the nucleus — whose larger
  entries already hold top_p — is rejected and redrawn among the entries larger than it: an
  exact nucleus draw that never sorts, and a round accepts with probability >= top_p.
  """
  num_blocks = x_ROI.shape[-2]
  e_ROI = jnp.exp(x_ROI - x_ROI.max((-2, -1), keepdims=True))  # Largest entry: exactly 1.

  def draw(noise, pivot):
    """Entries above `pivot` (..., 1, 1) race; returns the index and its e."""
    e_kept = e_ROI if pivot is None else jnp.where(e_ROI > pivot, e_ROI, 0.0)
    block = jnp.zeros(x_ROI.shape[:-2], jnp.int32)
    if num_blocks > 1:
      block = _race(jnp.log(e_kept.sum(-1)), noise[..., :num_blocks])
    pick = lambda a: jnp.take_along_axis(a, block[..., None, None], axis=-2)[..., 0, :]
    row_x, row_e = pick(x_ROI), pick(e_kept)
    entry = _race(jnp.where(row_e > 0, row_x, NEG_INF), noise[..., num_blocks:])
    value = jnp.take_along_axis(row_e, entry[..., None], axis=-1)
    return block * x_ROI.shape[-1] + entry, value[..., None]

  index, value = draw(noise_fn(0), None)
  if top_p >= 1.0:
    return index
  threshold = top_p * e_ROI.sum((-2, -1), keepdims=True)

  def in_nucleus(value):
    """An entry is in the nucleus iff the entries larger than it hold less than top_p (written
    so that a row of NaN logits is accepted rather than redrawn forever)."""
    return ~(jnp.where(e_ROI > value, e_ROI, 0.0).sum((-2, -1), keepdims=True) >= threshold)

  def redraw(state):
    round_, index, value, done = state
    new_index, new_value = draw(noise_fn(round_), value)
    keep = done[..., 0, 0]
    return (round_ + 1, jnp.where(keep, index, new_index), jnp.where(done, value, new_value),
            done | in_nucleus(new_value))

  state = (1, index, value, in_nucleus(value))
  return jax.lax.while_loop(lambda s: ~s[3].all(), redraw, state)[1]


def _noise_width(code: PrimeCode, digit_source: str) -> int:
  """Gumbel numbers a position's draw takes per round."""
  if digit_source == "joint":
    return sum(_joint_shape(code))
  return code.ell * sum(_block_shape(code.base))


def _digit_split(code: PrimeCode) -> int:
  """How many leading digits index the blocks of a joint draw (ℓ > 1): the split of the digit
  grid nearest √C, where carry-over is one small bias per axis."""
  dims = code.grid_shape
  sizes = [math.prod(dims[:k]) + math.prod(dims[k:]) for k in range(1, code.ell)]
  return 1 + int(np.argmin(sizes))


def _joint_shape(code: PrimeCode) -> tuple[int, int]:
  """(blocks, width) of a joint draw: leading digits × trailing digits for ℓ > 1."""
  if code.ell == 1:
    return _block_shape(code.vocab_size)
  k, dims = _digit_split(code), code.grid_shape
  return math.prod(dims[:k]), math.prod(dims[k:])


def _joint_blocks(code: PrimeCode, scaled: jax.Array, y: jax.Array, carry_over: bool
                  ) -> jax.Array:
  """(…, C) scaled logits -> (…, O, I) the joint draw's blocks, NEG_INF where a code is padding
  or (with carry-over) disagrees with the visible digits of y."""
  blocks_OI = _as_blocks(scaled, _joint_shape(code))
  if code.ell > 1 and carry_over:
    k = _digit_split(code)
    blocks_OI = (blocks_OI + objectives.consistent_bias(code, y, range(k))[..., :, None]
                 + objectives.consistent_bias(code, y, range(k, code.ell))[..., None, :])
  return blocks_OI


def draw_digits(key: jax.Array, code: PrimeCode, logits: jax.Array, y: jax.Array,
                temperature, *, digit_source: str, carry_over: bool, top_p: float = 1.0,
                draw_dtype=jnp.float32, row_ids: Optional[jax.Array] = None) -> jax.Array:
  """(…, C) logits and sub-tokens y (…, ℓ) -> (…, ℓ) proposed digits for every sub-token.

  joint: the digits of one token x̂ ~ p(· | y); marginal: each digit from its own marginal μ^j.
  Temperature divides the logits first; top-p then acts on the distribution that is drawn from.
  Position r's noise comes from fold_in(key, row_ids[r]) (default: its flat index), so a draw
  does not depend on which other positions are drawn with it.
  """
  if digit_source not in DIGIT_SOURCES:
    raise ValueError(f"unknown digit_source {digit_source!r}; expected one of {DIGIT_SOURCES}")
  lead = logits.shape[:-1]
  if row_ids is None:
    row_ids = jnp.arange(math.prod(lead), dtype=jnp.int32).reshape(lead)
  width = _noise_width(code, digit_source)
  noise_fn = lambda round_: _row_noise(jax.random.fold_in(key, round_), row_ids, width,
                                       draw_dtype)
  scaled = logits.astype(jnp.float32) / temperature
  if digit_source == "joint":
    blocks_OI = _joint_blocks(code, scaled, y, carry_over)
    return code.encode(_block_race(blocks_OI, noise_fn, top_p))
  log_mu = objectives.digit_log_marginals(code, scaled, y if carry_over else None)  # (…, ℓ, b)
  shape = _block_shape(code.base)
  per_digit = lambda round_: noise_fn(round_).reshape(lead + (code.ell, sum(shape)))
  return _block_race(_as_blocks(log_mu, shape), per_digit, top_p)


# ----------------------------------------------------------------------------------------------
# Conditioning.


def _concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


def check_fixed(code: PrimeCode, shape: Sequence[int], fixed_tokens, fixed_mask) -> None:
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


def condition_on_prefix(code: PrimeCode, prefix, shape: Sequence[int]
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


# ----------------------------------------------------------------------------------------------
# The sampler.


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


def expected_idle_fraction(schedule: Schedule, config: SamplerConfig, num_subtokens: int) -> float:
  """Mean over the T grid steps of the idle probability: the fraction of network calls caching
  saves, for one example (num_subtokens = ℓ·L) or a batch (ℓ·L·B), final fill step excluded."""
  return float(np.mean(idle_probability(schedule, config, num_subtokens)[:-1]))


__all__ = [
    "SamplerConfig", "SampleResult", "TEXT_DEFAULTS", "IMAGE_DEFAULTS", "sample", "make_sample_fn",
    "condition_on_prefix", "check_fixed", "draw_digits",
    "time_grid", "step_constants", "idle_probability", "expected_idle_fraction", "draw_slot_count",
    "resolve_draw_dtype",
]
