"""The sampler's settings (`SamplerConfig`), their accepted values and the paper's defaults, and
the pytree a sampler run returns (`SampleResult`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

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
