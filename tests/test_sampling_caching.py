"""Idle steps (nothing revealed) and the network-call cache of time-agnostic networks."""

import jax
import numpy as np

from prime_jax import sampling
from prime_jax.subtokens import PrimeCode
from sampling_helpers import LINEAR, hashed_denoiser, run_sample


def test_idle_fraction_matches_formula_and_calls_equal_busy_steps():
  """Per grid step, idle runs ~ Binomial(R, (1 - (α_s - α_t))^{ℓL}); each run's calls equal its
  busy (non-idle) steps, and called_per_step marks exactly the steps after a busy one."""
  code, seq_len, runs = PrimeCode(6, 2), 8, 1000
  config = sampling.SamplerConfig(num_steps=seq_len)
  fn = hashed_denoiser(6)
  run = jax.jit(jax.vmap(lambda k: sampling.sample(k, fn, code, LINEAR, (1, seq_len), config,
                                                   time_agnostic=True)))
  out = run(jax.random.split(jax.random.key(1), runs))
  changes = np.asarray(out.changes_per_step)  # (R, T+1)
  idle = changes == 0
  p_idle = sampling.idle_probability(LINEAR, config, code.ell * seq_len)
  np.testing.assert_allclose(p_idle[:-1], (1.0 - (1 - 1e-5) / seq_len) ** 16, rtol=1e-5)
  for k in range(seq_len):
    sd = np.sqrt(runs * p_idle[k] * (1 - p_idle[k]))
    assert abs(idle[:, k].sum() - runs * p_idle[k]) < 4 * sd, k
  np.testing.assert_array_equal(out.num_idle, idle.sum(1))
  np.testing.assert_array_equal(out.num_calls, (~idle).sum(1))
  called = np.asarray(out.called_per_step)
  assert called[:, 0].all()
  np.testing.assert_array_equal(called[:, 1:], ~idle[:, :-1] & (np.cumsum(changes, 1)[:, :-1] < 16))


def test_network_calls_counted_independently_and_cache_changes_nothing():
  """A host-side counter sees exactly num_calls network calls; with caching off the network runs
  on every step that has a masked sub-token, and the samples are identical."""
  code, shape = PrimeCode(6, 2), (1, 8)
  calls = []
  base = hashed_denoiser(6)

  def counting_fn(y, t):
    jax.debug.callback(lambda: calls.append(1))
    return base(y, t)

  results = {}
  for cache in (True, False):
    config = sampling.SamplerConfig(num_steps=8, cache_idle_steps=cache)
    run = jax.jit(lambda k: sampling.sample(k, counting_fn, code, LINEAR, shape, config,
                                            time_agnostic=True))
    results[cache] = []
    for seed in range(12):
      calls.clear()
      out = run(jax.random.key(seed))
      jax.effects_barrier()
      assert len(calls) == int(out.num_calls)
      results[cache].append(out)
  saved = 0
  for on, off in zip(results[True], results[False]):
    np.testing.assert_array_equal(on.tokens, off.tokens)
    np.testing.assert_array_equal(on.changes_per_step, off.changes_per_step)
    busy = int((np.asarray(on.changes_per_step) > 0).sum())
    assert int(on.num_calls) == busy
    remaining = 16 - np.concatenate([[0], np.cumsum(off.changes_per_step)[:-1]])
    assert int(off.num_calls) == int((remaining > 0).sum())
    saved += int(off.num_calls) - int(on.num_calls)
  assert saved > 0


def test_time_dependent_network_is_called_every_step():
  code = PrimeCode(6, 2)
  config = sampling.SamplerConfig(num_steps=4)
  seen_t = []

  def fn(y, t):
    jax.debug.callback(lambda t: seen_t.append(float(t[0])), t)
    return hashed_denoiser(6)(y, t)

  out = run_sample(jax.random.key(3), fn, code, (1, 3), config, time_agnostic=False)
  jax.effects_barrier()
  remaining = 6 - np.concatenate([[0], np.cumsum(out.changes_per_step)[:-1]])
  assert int(out.num_calls) == int((remaining > 0).sum()) == len(seen_t)
  np.testing.assert_allclose(seen_t, sampling.time_grid(config)[:len(seen_t)], rtol=1e-6)
