"""The time grid a sampler walks and the per-step numbers computed from it on the host: reveal
and re-mask probabilities, temperatures, idle chances and the gathered draw's chunk size."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from prime_jax.sampling.settings import SamplerConfig
from prime_jax.schedules import Schedule


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


def expected_idle_fraction(schedule: Schedule, config: SamplerConfig, num_subtokens: int
                           ) -> float:
  """Mean over the T grid steps of the idle probability: the fraction of network calls caching
  saves, for one example (num_subtokens = ℓ·L) or a batch (ℓ·L·B), final fill step excluded."""
  return float(np.mean(idle_probability(schedule, config, num_subtokens)[:-1]))
