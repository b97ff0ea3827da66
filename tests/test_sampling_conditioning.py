"""Conditioning: prefixes and infilled positions stay fixed and visible to every network call."""

import jax
import numpy as np
import pytest

from prime_jax import sampling
from prime_jax.subtokens import PrimeCode
from sampling_helpers import hashed_denoiser, run_sample


def _recording(fn, inputs):
  def wrapped(y, t):
    jax.debug.callback(lambda y: inputs.append(np.asarray(y)), y)
    return fn(y, t)
  return wrapped


@pytest.mark.parametrize("digit_source", ["joint", "marginal"])
def test_prefix_is_visible_at_every_call_and_kept_in_text(digit_source):
  code, shape = PrimeCode(10, 3), (3, 12)
  prefix = np.array([[1, 2, 3, 9], [0, 0, 0, 0], [7, 8, 9, 5]])
  tokens, mask = sampling.condition_on_prefix(code, prefix, shape)
  inputs = []
  config = sampling.SamplerConfig(num_steps=12, digit_source=digit_source, corrector=(16.0, 2.0))
  out = run_sample(jax.random.key(0), _recording(hashed_denoiser(10), inputs), code, shape, config,
                   fixed_tokens=tokens, fixed_mask=mask)
  jax.effects_barrier()
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, :4], prefix)
  assert len(inputs) == int(out.num_calls) > 1
  for y in inputs:
    np.testing.assert_array_equal(y[:, :4], code.encode(prefix))
  # The corrector re-masked some free sub-token on the way (so it was active), never a fixed one.
  masked = np.stack([y == code.mask_value for y in inputs])
  assert (masked[1:] & ~masked[:-1]).any()


def test_prefix_and_infilling_for_images():
  code, shape = PrimeCode(256, 2), (2, 4, 4, 3)
  prefix = np.arange(20) * 12 % 256
  tokens, mask = sampling.condition_on_prefix(code, prefix, shape)
  assert mask.reshape(2, -1)[:, :20].all() and not mask.reshape(2, -1)[:, 20:].any()
  config = sampling.SamplerConfig(num_steps=6, digit_source="marginal", carry_over=False,
                                  temperature_schedule=(-0.2, 2.0, 1.0), time_warp=(1, 1.7, 0))
  out = run_sample(jax.random.key(1), hashed_denoiser(256), code, shape, config,
                   fixed_tokens=tokens, fixed_mask=mask)
  assert out.tokens.shape == shape and out.digits.shape == shape + (2,)
  np.testing.assert_array_equal(np.asarray(out.tokens).reshape(2, -1)[:, :20], [prefix] * 2)
  # Infilling: an arbitrary scatter of fixed pixels.
  rng = np.random.default_rng(0)
  mask = rng.random(shape) < 0.3
  fixed = rng.integers(0, 256, shape)
  out = run_sample(jax.random.key(2), hashed_denoiser(256), code, shape, config,
                   fixed_tokens=fixed, fixed_mask=mask)
  np.testing.assert_array_equal(np.asarray(out.tokens)[mask], fixed[mask])
  assert (np.asarray(out.tokens)[~mask] != fixed[~mask]).any()


def test_fully_fixed_input_needs_no_network_call():
  code, shape = PrimeCode(6, 2), (2, 3)
  fixed = np.array([[1, 2, 3], [4, 5, 0]])
  out = run_sample(jax.random.key(0), hashed_denoiser(6), code, shape,
                   sampling.SamplerConfig(num_steps=5), fixed_tokens=fixed,
                   fixed_mask=np.ones(shape, bool))
  np.testing.assert_array_equal(out.tokens, fixed)
  assert int(out.num_calls) == 0 and int(out.num_idle) == 6
