"""The one registry of training objectives, and the loss a config trains and evaluates.

An objective is named in `OBJECTIVES` and nowhere else: its per-token loss, the metrics a
training step reports, the per-example sums evaluation returns, and whether the model it trains
can be sampled from. `Loss` binds one objective to a code, a schedule and the noise settings.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from prime_jax import errors, forward, fused_head, fused_loss, likelihood, objectives, schedules
from prime_jax.schedules import Schedule
from prime_jax.subtokens import PrimeCode

# (code, schedule, logits (B, *P, C), x0 (B, *P), y_t (B, *P, ℓ), t (B,), carry_over) -> (B, *P)
TokenLoss = Callable[..., jax.Array]
# (y (B, *P, ℓ), t (B,) or None, dropout key) -> logits (B, *P, C)
ApplyFn = Callable[[jax.Array, Optional[jax.Array], jax.Array], jax.Array]


def _cross_entropy(code: PrimeCode, schedule: Schedule, logits, x0, y_t, t,
                   carry_over: bool = True) -> jax.Array:
  del schedule, t  # The unweighted cross-entropy on every position.
  return objectives.cross_entropy_loss(code, logits, x0, y_t, carry_over)


def _fused_cross_entropy(code: PrimeCode, schedule: Schedule, h, kernel_DC, bias_C, x0, y_t, t,
                         carry_over: bool = True, **chunking) -> jax.Array:
  del schedule, t
  return fused_head.cross_entropy_loss(code, h, kernel_DC, bias_C, x0, y_t, carry_over,
                                       **chunking)


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a config name means: the loss per token and what training and evaluation report."""

  name: str
  causal: bool  # The autoregressive baseline: ℓ = 1, causal attention, inputs shifted right.
  token_loss: Optional[TokenLoss]  # Diffusion objectives only.
  # The same loss from the head's input h, kernel and bias, never forming the logits:
  # (code, schedule, h (B, *P, D), kernel (D, C), bias (C,), x0, y_t, t, carry_over, *,
  #  chunk_size, compute_dtype) -> (B, *P).
  fused_loss: Optional[TokenLoss]
  metrics: tuple[str, ...]  # Per-token means a training step reports besides 'loss'.
  eval_sums: tuple[str, ...]  # Per-example sums evaluation returns besides 'count'.
  # Whether a token with no masked digit has a loss (else the fused head skips its row).
  every_token: bool = False

  @property
  def can_sample(self) -> bool:
    """Whether the sampler can draw from the model (the causal baseline only scores)."""
    return not self.causal


_DIFFUSION_METRICS = ("valid", "joint")
OBJECTIVES = {
    "valid": Objective("valid", False, objectives.valid_loss, fused_head.valid_loss,
                       _DIFFUSION_METRICS, _DIFFUSION_METRICS),
    "joint": Objective("joint", False, objectives.joint_loss, fused_head.joint_loss,
                       _DIFFUSION_METRICS, _DIFFUSION_METRICS),
    "cross_entropy": Objective("cross_entropy", False, _cross_entropy, _fused_cross_entropy,
                               _DIFFUSION_METRICS, _DIFFUSION_METRICS, every_token=True),
    "autoregressive": Objective("autoregressive", True, None, None, ("nll",), ("nll",)),
}


def get(name: str) -> Objective:
  """The registered objective of a config name; an unknown name lists the accepted ones."""
  if name not in OBJECTIVES:
    raise errors.UserError(f"config.diffusion.objective={name!r} is invalid: expected one of "
                           f"{tuple(OBJECTIVES)}")
  return OBJECTIVES[name]


def autoregressive_inputs(code: PrimeCode, tokens_BL: jax.Array) -> jax.Array:
  """(B, L) -> (B, L, 1): the sequence shifted right behind a mask token, all visible."""
  start = jnp.full_like(tokens_BL[:, :1], code.mask_value)
  return jnp.concatenate([start, tokens_BL[:, :-1]], axis=1)[..., None]


@dataclasses.dataclass(frozen=True)
class Loss:
  """An objective with the code, schedule and noise settings it is trained and evaluated with."""

  objective: Objective
  code: PrimeCode
  schedule: Schedule
  carry_over: bool = True
  t_min: float = 1e-5
  antithetic: bool = True
  head_chunk: int = 0  # > 0: training never forms (B, *P, C) logits (`fused_head`).
  head_skip_rows: bool = True  # The fused head skips blocks of tokens with no masked digit.

  def token_losses(self, logits: jax.Array, tokens: jax.Array, y_t: jax.Array, t: jax.Array
                   ) -> jax.Array:
    """(B, *P) nats of the trained objective at given logits (a diffusion objective)."""
    return self.objective.token_loss(self.code, self.schedule, logits, tokens, y_t, t,
                                     self.carry_over)

  def train(self, apply_fn: ApplyFn, tokens: jax.Array, key: jax.Array, head: Optional[tuple] = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss: the mean over the batch's tokens, per-example metrics (B,)) in nats per token.

    Diffusion objectives report the valid bound and the paper's joint objective on the same
    noised batch, whichever one is trained. With `head` = (kernel (D, C), bias (C,)),
    `apply_fn` gives the head's input h instead of logits (`head_chunk` > 0).
    """
    k_t, k_mask, k_drop = jax.random.split(key, 3)
    axes = tuple(range(1, tokens.ndim))
    if self.objective.causal:
      out = apply_fn(autoregressive_inputs(self.code, tokens), None, k_drop)
      if head is None:
        nll = -objectives.token_log_probs(self.code, out, tokens)
      else:
        nll = fused_head.autoregressive_nll(self.code, out, *head, tokens,
                                            chunk_size=self.head_chunk, compute_dtype=out.dtype)
      per_example = nll.mean(axes)
      return per_example.mean(), {"nll": per_example}
    t = schedules.sample_times(k_t, tokens.shape[0], self.t_min, self.antithetic)
    y = forward.mask_subtokens(k_mask, self.code, tokens, self.schedule.alpha(t))
    out = apply_fn(y, t, k_drop)
    if head is not None:
      return self._fused_train(out, head, tokens, y, t, axes)
    logits = out
    per_token = self.token_losses(logits, tokens, y, t)
    fixed = jax.lax.stop_gradient(logits)
    metrics = {}
    for name in self.objective.metrics:
      value = per_token if name == self.objective.name else OBJECTIVES[name].token_loss(
          self.code, self.schedule, fixed, tokens, y, t, self.carry_over)
      metrics[name] = jax.lax.stop_gradient(value).mean(axes)
    return per_token.mean(axes).mean(), metrics

  def _fused_train(self, h, head: tuple, tokens, y, t, axes: tuple[int, ...]
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The diffusion loss and metrics from one pass of the fused head: `fused_head` where it
    keeps its logits, else `fused_loss`, which forms the gradient in that pass."""
    skip = self.head_skip_rows and not self.objective.every_token
    active = (y == self.code.mask_value).any(-1) if skip else None
    if not fused_head.keeps_logits(self.code, tokens.size):
      loss, per = fused_loss.mean_loss(self.code, self.schedule, self.objective.name, h, *head,
                                       tokens, y, t, self.carry_over, active=active,
                                       compute_dtype=h.dtype)
      return loss, {name: per[name].mean(axes) for name in self.objective.metrics}
    stats = fused_head.head_stats(self.code, h, *head, tokens, y if self.carry_over else None,
                                  chunk_size=self.head_chunk, compute_dtype=h.dtype,
                                  active=active)
    per = fused_head.losses_from_stats(self.code, self.schedule, stats, y, t)
    metrics = {name: jax.lax.stop_gradient(per[name]).mean(axes)
               for name in self.objective.metrics}
    return per[self.objective.name].mean(axes).mean(), metrics

  def log_probs(self, denoise_fn: likelihood.DenoiseFn, tokens: jax.Array) -> jax.Array:
    """(B, *P) log p(x_i | x_<i) of the causal baseline (`denoise_fn(y, t)` gives logits)."""
    logits = denoise_fn(autoregressive_inputs(self.code, tokens), None)
    return objectives.token_log_probs(self.code, logits, tokens)

  def eval_sums(self, denoise_fn: likelihood.DenoiseFn, tokens: jax.Array, mask: jax.Array,
                key: jax.Array, num_time_samples: int = 1) -> dict[str, jax.Array]:
    """Per-example sums (nats) of `objective.eval_sums` and the counted positions, (B,) each.

    Diffusion: the valid bound and the joint objective over K antithetic times
    (`likelihood.eval_step`); the causal baseline: its exact NLL.
    """
    if not self.objective.causal:
      return likelihood.eval_step(key, denoise_fn, self.code, self.schedule, tokens, mask,
                                  num_time_samples=num_time_samples,
                                  carry_over=self.carry_over, t_min=self.t_min)
    weights = jnp.ones(tokens.shape, jnp.float32) if mask is None else mask
    nll = -self.log_probs(denoise_fn, tokens) * weights
    batch = tokens.shape[0]
    return {"nll": nll.reshape(batch, -1).sum(-1),
            "count": weights.reshape(batch, -1).sum(-1)}


def make_schedule(diffusion: ml_collections.ConfigDict) -> Schedule:
  """The masking schedule a config's diffusion section names, with the fields it takes."""
  return schedules.make_schedule(diffusion.schedule, eps=diffusion.schedule_eps,
                                 power=diffusion.schedule_power)


def from_config(config: ml_collections.ConfigDict, code: PrimeCode) -> Loss:
  """The loss a config trains and evaluates for `code`."""
  d = config.diffusion
  return Loss(get(d.objective), code, make_schedule(d), d.carry_over, d.t_min, d.antithetic,
              config.model.get("fused_head_chunk", 0),
              config.model.get("fused_head_skip_rows", True))
