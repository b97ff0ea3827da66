"""The time grids (uniform, cosine, warped) and the per-step reveal, re-mask and temperature
values."""

import numpy as np

from prime_jax import sampling
from sampling_helpers import LINEAR


def test_time_grids_and_step_constants():
  uniform = sampling.time_grid(sampling.SamplerConfig(num_steps=4, t_min=0.1))
  np.testing.assert_allclose(uniform, [1.0, 0.775, 0.55, 0.325, 0.1])
  cosine = sampling.time_grid(sampling.SamplerConfig(num_steps=4, grid="cosine", t_min=0.1))
  np.testing.assert_allclose(cosine[[0, 2, 4]], [1.0, 0.55, 0.1])
  assert cosine[0] - cosine[1] < uniform[0] - uniform[1]  # Dense near the start.
  warped = sampling.time_grid(sampling.SamplerConfig(num_steps=4, time_warp=(1.0, 2.0, 0.0)))
  s = 1 - uniform_default(4)
  np.testing.assert_allclose(warped, np.clip((1 - s) ** 2, 1e-5, 1))
  config = sampling.SamplerConfig(num_steps=4, corrector=(16.0, 2.0),
                                  temperature_schedule=(-0.2, 2.0, 1.0))
  c = sampling.step_constants(LINEAR, config)
  t, h = c.times[2], c.times[2] - c.times[3]
  gamma = 16 * (1 - t) ** 2 * t**2
  np.testing.assert_allclose(c.remask_probs[2], 1 - np.exp(-h * gamma / (1 - t)), rtol=1e-5)
  plain = (t - c.times[3]) / t  # (α_s - α_t)/(1 - α_t) for α = 1 - t.
  np.testing.assert_allclose(c.reveal_probs[2], 1 - (1 - plain) * np.exp(-h * gamma / t),
                             rtol=1e-5)
  np.testing.assert_allclose(c.temperatures, -0.2 * (1 - c.times) ** 2 + 1.0)
  assert c.reveal_probs[-1] == 1.0 and c.remask_probs[-1] == 0.0 and c.remask_probs[0] == 0.0


def uniform_default(steps):
  return 1.0 - (1.0 - 1e-5) * np.arange(steps + 1) / steps
