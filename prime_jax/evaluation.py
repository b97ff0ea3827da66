"""Likelihood evaluation: the valid bound over a whole split, the paper's joint objective beside.

The valid bound (DESIGN §1.4 b) is an upper bound on -log p(x) for any network; the joint
objective (a) is not, for ℓ > 1, and is reported only under the label "joint (not a bound)".

Per example i with n_i counted tokens, v_i is the bound summed over its tokens and averaged over K
antithetic time samples t_ik = t_min + (1 - t_min)((u_i + k/K) mod 1). Over a split,
  mean = Σ_i v_i / Σ_i n_i                      (nats per token),
  s.e. = sqrt(Σ_i (v_i - mean·n_i)² / (N(N-1))) / (Σ_i n_i / N),
the standard error of a ratio of means over the N examples (delta method); with equal n_i it is
std_i(v_i / n) / sqrt(N). Bits are nats / ln 2, perplexity is exp(mean nats per token).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from prime_jax import objectives
from prime_jax.forward import mask_subtokens
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
Batch = Union[np.ndarray, jax.Array, Mapping[str, Any]]


def antithetic_times(key: jax.Array, batch_size: int, num_samples: int,
                     t_min: float = 1e-5) -> jax.Array:
  """(K, B) times: per example one uniform u_i, stratified over K as (u_i + k/K) mod 1."""
  u = jax.random.uniform(key, (batch_size,))
  u = jnp.mod(u[None, :] + jnp.arange(num_samples)[:, None] / num_samples, 1.0)
  return t_min + (1.0 - t_min) * u


def eval_step(key: jax.Array, denoise_fn: DenoiseFn, code: PrimeCode, schedule: Schedule,
              tokens, mask=None, *, num_time_samples: int = 1, carry_over: bool = True,
              t_min: float = 1e-5) -> dict[str, jax.Array]:
  """Per-example sums over tokens of the valid bound and the joint objective, K-averaged.

  tokens (B, *P) ints, mask (B, *P) 0/1 weights of the positions that count (None: all).
  Returns {'valid': (B,), 'joint': (B,), 'count': (B,)} in nats; jittable (K runs as a scan).
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  batch = tokens.shape[0]
  weights = jnp.ones(tokens.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  k_time, k_mask = jax.random.split(key)
  times_KB = antithetic_times(k_time, batch, num_time_samples, t_min)

  def one(totals, inputs):
    k, t_B = inputs
    y = mask_subtokens(jax.random.fold_in(k_mask, k), code, tokens, schedule.alpha(t_B))
    logits = denoise_fn(y, t_B)
    valid = objectives.valid_loss(code, schedule, logits, tokens, y, t_B, carry_over)
    joint = objectives.joint_loss(code, schedule, logits, tokens, y, t_B, carry_over)
    per_example = lambda v: (v * weights).reshape(batch, -1).sum(-1)
    return (totals[0] + per_example(valid), totals[1] + per_example(joint)), None

  zeros = jnp.zeros((batch,), jnp.float32)
  (valid, joint), _ = jax.lax.scan(one, (zeros, zeros), (jnp.arange(num_time_samples), times_KB))
  return {"valid": valid / num_time_samples, "joint": joint / num_time_samples,
          "count": weights.reshape(batch, -1).sum(-1)}


def make_eval_step(apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], code: PrimeCode,
                   schedule: Schedule, *, num_time_samples: int = 1, carry_over: bool = True,
                   t_min: float = 1e-5):
  """`fn(params, key, tokens, mask=None) -> eval_step dict`, jitted; for held-out evaluation
  during training (`apply_fn(params, y, t)` gives the logits, deterministically)."""

  @jax.jit
  def fn(params, key, tokens, mask=None):
    return eval_step(key, lambda y, t: apply_fn(params, y, t), code, schedule, tokens, mask,
                     num_time_samples=num_time_samples, carry_over=carry_over, t_min=t_min)

  return fn


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A per-token mean in nats with its standard error."""

  mean: float
  se: float

  def in_units(self, unit: str) -> dict[str, float]:
    return {f"nats_per_{unit}": self.mean, f"nats_per_{unit}_se": self.se,
            f"bits_per_{unit}": self.mean / math.log(2),
            f"bits_per_{unit}_se": self.se / math.log(2),
            "perplexity": math.exp(self.mean), "perplexity_se": math.exp(self.mean) * self.se}


def ratio_estimate(sums, counts) -> Estimate:
  """Σ sums / Σ counts and its delta-method standard error over examples (module docstring);
  examples with count 0 are left out."""
  sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
  keep = counts > 0
  sums, counts = sums[keep], counts[keep]
  n = len(sums)
  if n == 0:
    raise ValueError("no example with a counted token")
  mean = sums.sum() / counts.sum()
  if n == 1:
    return Estimate(float(mean), float("nan"))
  resid = sums - mean * counts
  se = math.sqrt((resid**2).sum() / (n * (n - 1))) / (counts.sum() / n)
  return Estimate(float(mean), float(se))


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Split-level results; per-example arrays are kept for inspection but left out of to_dict."""

  valid: Estimate
  joint: Estimate
  unit: str
  num_examples: int
  num_tokens: float
  num_time_samples: int
  per_example_valid: np.ndarray = dataclasses.field(repr=False)
  per_example_joint: np.ndarray = dataclasses.field(repr=False)
  per_example_count: np.ndarray = dataclasses.field(repr=False)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: the bound under 'valid_bound', the paper's objective 'joint_not_a_bound'."""
    return {"valid_bound": self.valid.in_units(self.unit),
            "joint_not_a_bound": self.joint.in_units(self.unit),
            "unit": self.unit, "num_examples": self.num_examples,
            "num_tokens": self.num_tokens, "num_time_samples": self.num_time_samples,
            "standard_error": "over examples of each example's K-sample average (ratio estimator)"}

  def summary(self) -> str:
    u = self.unit
    v, j = self.valid, self.joint
    return (f"valid bound: {v.mean:.4f} ± {v.se:.4f} nats/{u}, "
            f"{v.mean / math.log(2):.4f} ± {v.se / math.log(2):.4f} bits/{u}, "
            f"perplexity {math.exp(v.mean):.3f}; joint (not a bound): {j.mean:.4f} ± {j.se:.4f} "
            f"nats/{u} [{self.num_examples} examples, K={self.num_time_samples}]")


def summarize(valid, joint, counts, *, unit: str = "token", num_time_samples: int = 1
              ) -> EvalResult:
  """Builds an EvalResult from concatenated per-example eval_step outputs."""
  valid, joint, counts = (np.asarray(a, np.float64) for a in (valid, joint, counts))
  return EvalResult(valid=ratio_estimate(valid, counts), joint=ratio_estimate(joint, counts),
                    unit=unit, num_examples=int((counts > 0).sum()),
                    num_tokens=float(counts.sum()), num_time_samples=num_time_samples,
                    per_example_valid=valid, per_example_joint=joint, per_example_count=counts)


def _split_batch(batch: Batch):
  if isinstance(batch, Mapping):
    if "tokens" not in batch:
      raise ValueError(f"a batch mapping needs a 'tokens' entry, got keys {sorted(batch)}")
    return batch["tokens"], batch.get("mask")
  return batch, None


def evaluate_bound(denoise_fn: DenoiseFn, code: PrimeCode, schedule: Schedule,
                   batches: Iterable[Batch], key: jax.Array, *, num_time_samples: int = 1,
                   carry_over: bool = True, t_min: float = 1e-5, unit: str = "token",
                   max_batches: Optional[int] = None) -> EvalResult:
  """The valid bound (and the joint objective) over every batch of a split.

  Batches are token arrays (B, *P) or mappings with 'tokens' and an optional 'mask' (0/1 per
  position; an all-zero row drops a padding example). `unit` only names the outputs.
  """
  if num_time_samples < 1:
    raise ValueError(f"num_time_samples must be >= 1, got {num_time_samples}")
  step = jax.jit(functools.partial(eval_step, denoise_fn=denoise_fn, code=code,
                                   schedule=schedule, num_time_samples=num_time_samples,
                                   carry_over=carry_over, t_min=t_min))
  parts = {"valid": [], "joint": [], "count": []}
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    tokens, mask = _split_batch(batch)
    code.encode(np.asarray(tokens))  # Raises ValueError on ids outside [0, C).
    out = step(jax.random.fold_in(key, i), tokens=tokens, mask=mask)
    for name in parts:
      parts[name].append(np.asarray(out[name]))
  if not parts["valid"]:
    raise ValueError("no batch to evaluate")
  cat = {name: np.concatenate(v) for name, v in parts.items()}
  return summarize(cat["valid"], cat["joint"], cat["count"], unit=unit,
                   num_time_samples=num_time_samples)
