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

from prime_jax.sampling.conditioning import check_fixed, condition_on_prefix
from prime_jax.sampling.draws import FLAT_RACE_MAX, draw_digits
from prime_jax.sampling.grid import (StepConstants, draw_slot_count, expected_idle_fraction,
                                     idle_probability, step_constants, time_grid)
from prime_jax.sampling.loop import make_sample_fn, sample
from prime_jax.sampling.settings import (DIGIT_SOURCES, DRAW_DTYPES, GRIDS, IMAGE_DEFAULTS,
                                         INVALID_POLICIES, TEXT_DEFAULTS, DenoiseFn, SampleResult,
                                         SamplerConfig, resolve_draw_dtype)

__all__ = [
    "SamplerConfig", "SampleResult", "TEXT_DEFAULTS", "IMAGE_DEFAULTS", "sample", "make_sample_fn",
    "condition_on_prefix", "check_fixed", "draw_digits",
    "time_grid", "step_constants", "idle_probability", "expected_idle_fraction", "draw_slot_count",
    "resolve_draw_dtype",
]
