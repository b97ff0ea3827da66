"""Likelihood estimates: the valid bound over a whole split, the paper's joint objective beside.

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
from jax.typing import ArrayLike

from prime_jax import objectives
from prime_jax.forward import mask_subtokens
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

LN2 = math.log(2.0)
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
Batch = Union[np.ndarray, jax.Array, Mapping[str, Any]]


def antithetic_times(key: jax.Array, batch_size: int, num_samples: int,
                     t_min: float = 1e-5) -> jax.Array:
  """(K, B) times: per example one uniform u_i, stratified over K as (u_i + k/K) mod 1."""
  u = jax.random.uniform(key, (batch_size,))
  u = jnp.mod(u[None, :] + jnp.arange(num_samples)[:, None] / num_samples, 1.0)
  return t_min + (1.0 - t_min) * u


def eval_step(key: jax.Array, denoise_fn: DenoiseFn, code: PrimeCode, schedule: Schedule,
              tokens: ArrayLike, mask: Optional[ArrayLike] = None, *, num_time_samples: int = 1,
              carry_over: bool = True, t_min: float = 1e-5) -> dict[str, jax.Array]:
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


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A per-token mean in nats with its standard error."""

  mean: float
  se: float

  def fields(self, name: str, perplexity: bool = True) -> dict[str, float]:
    """The flat result fields `{name}_nats`, `_nats_se`, `_bits`, `_bits_se` (`_perplexity`)."""
    out = {f"{name}_nats": self.mean, f"{name}_nats_se": self.se,
           f"{name}_bits": self.mean / LN2, f"{name}_bits_se": self.se / LN2}
    if perplexity:
      out[f"{name}_perplexity"] = math.exp(self.mean)
    return out



def ratio_estimate(sums: np.ndarray, counts: np.ndarray) -> Estimate:
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


# Per-example sums an evaluation step may return, and whether exp(mean) is a perplexity: the
# joint objective is not a likelihood for ℓ > 1, so it gets none.
QUANTITIES = {"valid": True, "joint": False, "nll": True}


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Split-level estimates ('valid' and 'joint', or the causal baseline's 'nll').

  `per_example` keeps each example's sums and 'count' for inspection; `to_dict` is the one flat
  result format that evaluation files, logs and reports use.
  """

  estimates: Mapping[str, Estimate]
  unit: str
  num_examples: int
  num_tokens: float
  num_time_samples: int
  per_example: Mapping[str, np.ndarray] = dataclasses.field(repr=False)

  @property
  def valid(self) -> Estimate:
    return self.estimates["valid"]

  @property
  def joint(self) -> Estimate:
    return self.estimates["joint"]

  def to_dict(self) -> dict[str, Any]:
    """valid_bits, valid_bits_se, ..., joint_bits, ... (or nll_*), num_examples, num_tokens."""
    out: dict[str, Any] = {}
    for name, estimate in self.estimates.items():
      out.update(estimate.fields(name, perplexity=QUANTITIES[name]))
    out.update(num_examples=self.num_examples, num_tokens=self.num_tokens,
               num_time_samples=self.num_time_samples, unit=self.unit)
    return out

  def summary(self) -> str:
    u = self.unit
    parts = []
    for name, e in self.estimates.items():
      label = {"valid": "valid bound", "joint": "joint (not a bound)", "nll": "NLL"}[name]
      ppl = f", perplexity {math.exp(e.mean):.3f}" if QUANTITIES[name] else ""
      parts.append(f"{label}: {e.mean:.4f} ± {e.se:.4f} nats/{u}, {e.mean / LN2:.4f} ± "
                   f"{e.se / LN2:.4f} bits/{u}{ppl}")
    return "; ".join(parts) + f" [{self.num_examples} examples, K={self.num_time_samples}]"


def summarize(per_example: Mapping[str, Any], *, unit: str = "token",
              num_time_samples: int = 1) -> EvalResult:
  """An EvalResult from concatenated per-example sums (nats) and their 'count' of positions."""
  arrays = {k: np.asarray(v, np.float64) for k, v in per_example.items()}
  counts = arrays["count"]
  unknown = set(arrays) - set(QUANTITIES) - {"count"}
  if unknown:
    raise ValueError(f"unknown per-example sums {sorted(unknown)}; expected {list(QUANTITIES)}")
  estimates = {k: ratio_estimate(arrays[k], counts) for k in QUANTITIES if k in arrays}
  return EvalResult(estimates=estimates, unit=unit, num_examples=int((counts > 0).sum()),
                    num_tokens=float(counts.sum()), num_time_samples=num_time_samples,
                    per_example=arrays)


def split_batch(batch: Batch) -> tuple[Any, Any]:
  """(tokens, mask or None) of a token array or a mapping with 'tokens' and maybe 'mask'."""
  if isinstance(batch, Mapping):
    if "tokens" not in batch:
      raise ValueError(f"a batch mapping needs a 'tokens' entry, got keys {sorted(batch)}")
    return batch["tokens"], batch.get("mask")
  return batch, None


def collect(step_fn: Callable[[int, Batch], Mapping[str, Any]], batches: Iterable[Batch],
            max_batches: Optional[int] = None, empty: str = "no batch to evaluate"
            ) -> dict[str, np.ndarray]:
  """Concatenated per-example outputs of `step_fn(index, batch)` over the first `max_batches`
  batches (None or 0: all); `empty` is the error when there is no batch."""
  parts: dict[str, list] = {}
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    for name, value in step_fn(i, batch).items():
      parts.setdefault(name, []).append(np.asarray(value))
  if not parts:
    raise ValueError(empty)
  return {name: np.concatenate(v) for name, v in parts.items()}


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

  def one(i: int, batch: Batch):
    tokens, mask = split_batch(batch)
    code.encode(np.asarray(tokens))  # Raises ValueError on ids outside [0, C).
    return step(jax.random.fold_in(key, i), tokens=tokens, mask=mask)
  return summarize(collect(one, batches, max_batches), unit=unit,
                   num_time_samples=num_time_samples)
