"""Masking schedules α_t (probability a sub-token is still visible at time t) and time sampling.

Time runs from t=0 (data, α≈1) to t=1 (all masked, α≈0). Each schedule gives α_t, α'_t and the
ELBO weight w(t) = -α'_t / (1 - α_t) that multiplies the masked cross-entropy. t may be a float
or an array of any shape; a result built from arithmetic alone keeps t's kind (NumPy stays NumPy).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class LogLinear:
  """MDLM's text schedule α_t = 1 - (1-ε)t, whose weight is exactly 1/t."""

  eps: float = 1e-3

  def alpha(self, t: ArrayLike) -> ArrayLike:
    return 1.0 - (1.0 - self.eps) * t

  def dalpha(self, t: ArrayLike) -> jax.Array:
    return -(1.0 - self.eps) * jnp.ones_like(t)

  def weight(self, t: ArrayLike) -> ArrayLike:
    return 1.0 / t


@dataclasses.dataclass(frozen=True)
class Polynomial:
  """The image schedule α_t = (1-t)^n (the paper's s^n in its reversed time)."""

  power: float = 3.0

  def alpha(self, t: ArrayLike) -> ArrayLike:
    return (1.0 - t) ** self.power

  def dalpha(self, t: ArrayLike) -> ArrayLike:
    return -self.power * (1.0 - t) ** (self.power - 1.0)

  def weight(self, t: ArrayLike) -> jax.Array:
    # 1 - (1-t)^n computed without cancellation near t = 0.
    one_minus_alpha = -jnp.expm1(self.power * jnp.log1p(-t))
    return self.power * (1.0 - t) ** (self.power - 1.0) / one_minus_alpha


@dataclasses.dataclass(frozen=True)
class Cosine:
  """MD4's cosine schedule α_t = 1 - cos(π/2 · (1-t))."""

  def alpha(self, t: ArrayLike) -> jax.Array:
    return 1.0 - jnp.cos(0.5 * math.pi * (1.0 - t))

  def dalpha(self, t: ArrayLike) -> jax.Array:
    return -0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))

  def weight(self, t: ArrayLike) -> jax.Array:
    return 0.5 * math.pi * jnp.tan(0.5 * math.pi * (1.0 - t))


Schedule = LogLinear | Polynomial | Cosine
SCHEDULES = {"loglinear": LogLinear, "polynomial": Polynomial, "cosine": Cosine}


def make_schedule(name: str, **settings: float) -> Schedule:
  """Builds a schedule by config name ('loglinear', 'polynomial', 'cosine').

  `settings` may hold every schedule's field (eps, power): each class takes the ones it has.
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
  cls = SCHEDULES[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(settings) - {"eps", "power"}
  if unknown:
    raise ValueError(f"unknown schedule settings {sorted(unknown)}; expected eps or power")
  return cls(**{k: v for k, v in settings.items() if k in fields})


def sample_times(key: jax.Array, batch_size: int, t_min: float = 1e-5,
                 antithetic: bool = True) -> jax.Array:
  """(B,) times in [t_min, 1): stratified u_i = (u + i/B) mod 1 when antithetic, else iid."""
  if antithetic:
    u = jax.random.uniform(key, ())
    u = jnp.mod(u + jnp.arange(batch_size) / batch_size, 1.0)
  else:
    u = jax.random.uniform(key, (batch_size,))
  return t_min + (1.0 - t_min) * u
