"""Bad sampler input fails with a ValueError that names the value, before anything compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prime_jax import sampling
from prime_jax.subtokens import PrimeCode
from sampling_helpers import LINEAR, hashed_denoiser, run_sample


def test_bad_input_raises_clear_errors():
  code = PrimeCode(50257, 2)
  with pytest.raises(ValueError, match="50300"):
    sampling.condition_on_prefix(code, [1, 2, 50300], (2, 8))
  with pytest.raises(ValueError, match="-1"):
    sampling.condition_on_prefix(code, [[1, -1], [0, 0]], (2, 8))
  with pytest.raises(ValueError, match="9 tokens .* only 8 positions"):
    sampling.condition_on_prefix(code, np.arange(9), (2, 8))
  for field, value in (("digit_source", "product"), ("grid", "log"), ("invalid_policy", "drop"),
                       ("draw_dtype", "bfloat16")):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'"):
      sampling.SamplerConfig(**{field: value})
  with pytest.raises(ValueError, match="num_steps"):
    sampling.SamplerConfig(num_steps=0)
  with pytest.raises(ValueError, match="temperature_schedule"):
    sampling.SamplerConfig(temperature_schedule=(-2.0, 2.0, 1.0))
  small = PrimeCode(6, 2)
  compiled = []

  def apply_fn(params, y, t):
    compiled.append(1)
    return hashed_denoiser(6)(y, t)

  fn = sampling.make_sample_fn(apply_fn, small, LINEAR, (2, 4), sampling.SamplerConfig(4),
                               time_agnostic=True)
  fixed = np.array([[0, 6, 0, 0], [0, 0, 0, 0]])
  with pytest.raises(ValueError, match="fixed token id 6 at index \\(0, 1\\)"):
    fn(None, jax.random.key(0), fixed, np.ones((2, 4), bool))
  assert not compiled  # Rejected before tracing.
  out = fn(None, jax.random.key(0), np.where(fixed == 6, 5, fixed), np.ones((2, 4), bool))
  np.testing.assert_array_equal(out.tokens, np.where(fixed == 6, 5, fixed))
  with pytest.raises(ValueError, match="logits of shape"):
    run_sample(jax.random.key(0), lambda y, t: jnp.zeros(y.shape[:-1] + (7,)), small, (2, 4),
               sampling.SamplerConfig(4))
