"""The samplers against exact posteriors of tiny enumerable distributions.

Chi-square tests use the 0.999 quantile (Wilson-Hilferty approximation), so a correct sampler
fails one of them about once in a thousand runs; every key is fixed, so the outcome is
reproducible.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prime_jax import sampling
from prime_jax.subtokens import PrimeCode
from sampling_helpers import (LINEAR, chi2, chi2_critical, distribution, exact_denoiser,
                              independent_denoiser, run_sample, sequence_counts)


def _samples(fn, code, runs):
  """{name: output} of `sampling.sample` for runs {name: (key, shape, config)}, compiled as one
  program (on a CPU that compiles several times faster than one program per run)."""
  keys = {name: key for name, (key, _, _) in runs.items()}
  return jax.jit(lambda ks: {name: sampling.sample(ks[name], fn, code, LINEAR, shape, config,
                                                   time_agnostic=True)
                             for name, (_, shape, config) in runs.items()})(keys)


@pytest.mark.parametrize("carry_over", [True, False])
@pytest.mark.parametrize("vocab_size,length", [(6, 2), (5, 3)])
def test_joint_sampler_is_exact_for_one_position_at_any_step_count(vocab_size, length, carry_over):
  """With one position, x̂ ~ exact p(x | y_t) and any reveal pattern gives an exact sample, for any
  T (here T=1 and T=3), and never a zero-probability token."""
  code = PrimeCode(vocab_size, length)
  probs = distribution(vocab_size, vocab_size, zeros=2)
  fn = exact_denoiser(code, probs, 1)
  runs = {str(steps): (jax.random.key(steps), (4000, 1),
                       sampling.SamplerConfig(num_steps=steps, carry_over=carry_over))
          for steps in (1, 3)}
  for steps, out in _samples(fn, code, runs).items():
    counts = sequence_counts(out.tokens, vocab_size)
    assert counts[probs == 0].sum() == 0
    stat, df = chi2(counts, probs)
    assert stat < chi2_critical(df), (steps, stat)
    assert int(out.num_invalid.sum()) == 0


@pytest.mark.parametrize("digit_source", ["joint", "marginal"])
@pytest.mark.parametrize("carry_over", [True, False])
@pytest.mark.parametrize("vocab_size,length,seq_len", [(6, 2, 2), (9, 1, 2)])
def test_samplers_reproduce_data_distribution(digit_source, carry_over, vocab_size, length,
                                              seq_len):
  """Both samplers with the exact posterior reproduce a correlated distribution over C^L
  sequences. Revealing several sub-tokens in one step from separate (per-position or per-digit)
  predictions loses their correlation, so this is exact only as T grows: at T=512 and ℓL=4
  sub-tokens, two land in one step with chance about 6/512, a bias the chi-square test at N=4000
  cannot see (noncentrality well below 1); the negative control below shows what it does see."""
  code = PrimeCode(vocab_size, length)
  probs = distribution(vocab_size * 3 + length, vocab_size**seq_len)
  fn = exact_denoiser(code, probs, seq_len)
  config = sampling.SamplerConfig(num_steps=512, digit_source=digit_source, carry_over=carry_over)
  out = run_sample(jax.random.key(7), fn, code, (4000, seq_len), config)
  stat, df = chi2(sequence_counts(out.tokens, vocab_size), probs)
  assert stat < chi2_critical(df), stat


def test_draws_gathered_at_revealed_positions_land_in_place():
  """With 32 independent positions, each with its own distribution, the joint sampler is exact at
  any T. Drawing only at the revealed positions of the batch, 600 (the default here: about half
  a busy step's reveals) or 7 at a time, in as many rounds as a step needs, gives exactly the
  samples of drawing at every position at once, with or without top-p, since each position's
  noise is keyed by its index. The six runs are compiled as one program: six separate ones take
  three times as long to compile on a CPU."""
  code, seq_len = PrimeCode(6, 2), 32
  probs = np.stack([distribution(i, 6) for i in range(seq_len)])
  fn = independent_denoiser(code, probs)
  configs = {}
  for top_p in (1.0, 0.7):
    for slots, expected_slots in ((None, 600), (7, 7), (0, 0)):
      config = sampling.SamplerConfig(num_steps=seq_len, draw_slots=slots, top_p=top_p)
      assert sampling.draw_slot_count(LINEAR, config, seq_len, 2, batch=600) == expected_slots
      configs[f"{top_p}/{slots}"] = config
  out = _samples(fn, code, {name: (jax.random.key(11), (600, seq_len), config)
                            for name, config in configs.items()})
  tokens = {name: np.asarray(o.tokens) for name, o in out.items()}
  for top_p in (1.0, 0.7):
    np.testing.assert_array_equal(tokens[f"{top_p}/None"], tokens[f"{top_p}/0"])
    np.testing.assert_array_equal(tokens[f"{top_p}/7"], tokens[f"{top_p}/0"])
  exact = tokens["1.0/0"]
  stat = sum(chi2(np.bincount(exact[:, i], minlength=6), probs[i])[0] for i in range(seq_len))
  assert stat < chi2_critical(seq_len * 5)


def test_marginal_sampler_in_one_step_draws_the_product_of_marginals():
  """Negative control: revealing both digits at once from their marginals is detectably wrong on
  a distribution whose digits are correlated (here perfectly: tokens 0 = 00 and 4 = 11)."""
  code = PrimeCode(4, 2)
  probs = np.array([0.5, 0.0, 0.0, 0.5])
  fn = exact_denoiser(code, probs, 1)
  config = sampling.SamplerConfig(num_steps=1, digit_source="marginal")
  out = run_sample(jax.random.key(0), fn, code, (4000, 1), config)
  frac_mixed = np.isin(np.asarray(out.tokens), [1, 2]).mean()
  assert abs(frac_mixed - 0.5) < 0.05  # The product of marginals puts half its mass on 01, 10.
  stat, df = chi2(sequence_counts(out.tokens, 4), probs)
  assert stat > chi2_critical(df)  # The same test that passes above rejects this sampler.


def test_top_p_and_temperature_in_the_sampler():
  code = PrimeCode(8, 1)
  probs = np.array([0.4, 0.3, 0.2, 0.05, 0.03, 0.01, 0.005, 0.005])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  fn = lambda y, t: jnp.broadcast_to(logits, y.shape[:-1] + (8,))
  out = run_sample(jax.random.key(0), fn, code, (500, 8), sampling.SamplerConfig(4, top_p=0.85))
  counts = np.bincount(np.asarray(out.tokens).ravel(), minlength=8)
  assert counts[3:].sum() == 0
  stat, df = chi2(counts, np.where(np.arange(8) < 3, probs, 0) / 0.9)
  assert stat < chi2_critical(df)
  cold = run_sample(jax.random.key(0), fn, code, (50, 8),
                    sampling.SamplerConfig(4, temperature=0.02))
  assert (np.asarray(cold.tokens) == 0).all()
