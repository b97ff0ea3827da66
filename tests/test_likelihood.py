"""Evaluation: the Monte Carlo valid bound against its exact value and the model's exact NLL.

For a network that is a function of y, both numbers are enumerable on tiny problems: with n = ℓL
sub-tokens, integrating the masking probability against w(t) gives weight 1/m to each masked count
m, so the expected bound of x is Σ_{S≠∅} [1/C(n,|S|)] (1/|S|) Σ_{j∈S} -log μ^j(x_j | x with S
masked). The model's own likelihood is that of revealing one sub-token at a time in a uniformly
random order, p(x) = E_order Π_k μ(x_{σk} | ...); Jensen's inequality puts the bound above -log p.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prime_jax import likelihood, objectives, schedules
from prime_jax.quality import frechet
from prime_jax.quality import text as quality_text
from prime_jax.subtokens import PrimeCode
from sampling_helpers import exact_denoiser

LINEAR = schedules.LogLinear(eps=0.0)


def random_denoiser(code, seq_len, seed, scale=1.5):
  n = seq_len * code.ell
  table = jnp.asarray(np.random.default_rng(seed).normal(
      0, scale, ((code.base + 1) ** n, seq_len, code.vocab_size)), jnp.float32)
  radix = jnp.asarray((code.base + 1) ** np.arange(n)[::-1], jnp.int32)
  return lambda y, t: table[(y.reshape(y.shape[0], n) * radix).sum(-1)]


def exact_bound_and_nll(code, denoise_fn, x):
  """x (L,) -> (expected valid bound, -log p_model(x)) by enumerating all 2^n masked sets."""
  seq_len, n = len(x), len(x) * code.ell
  digits = code.encode(np.asarray(x)).reshape(n)
  subsets = np.arange(2**n)
  masked = (subsets[:, None] >> np.arange(n)) & 1 == 1  # (2^n, n); bit j: sub-token j masked.
  y = np.where(masked, code.mask_value, digits).reshape(-1, seq_len, code.ell)
  log_mu = objectives.digit_log_marginals(code, denoise_fn(jnp.asarray(y), None), y)
  log_mu = np.asarray(log_mu, np.float64).reshape(2**n, n, code.base)
  target = log_mu[:, np.arange(n), digits]  # (2^n, n)
  size = masked.sum(1)
  bound = sum(-(target[s] * masked[s]).sum() / (math.comb(n, size[s]) * size[s])
              for s in subsets if size[s])
  prob = np.zeros(2**n)
  prob[-1] = 1.0
  for s in sorted(subsets, key=lambda s: -size[s]):
    for j in np.flatnonzero(masked[s]):
      prob[s & ~(1 << j)] += prob[s] * np.exp(target[s, j]) / size[s]
  return bound, -math.log(prob[0])


def _dataset(rng, probs, vocab_size, seq_len, count):
  index = rng.choice(len(probs), count, p=probs)
  return np.stack([(index // vocab_size ** (seq_len - 1 - i)) % vocab_size
                   for i in range(seq_len)], 1).astype(np.int32)


def _batches(data, size):
  return [data[i:i + size] for i in range(0, len(data), size)]


def test_enumeration_is_tight_at_the_exact_posterior():
  """Sanity of the helper itself: at the exact posterior the bound equals -log p(x) per x."""
  code = PrimeCode(6, 2)
  probs = np.random.default_rng(0).dirichlet(np.ones(36))
  fn = exact_denoiser(code, probs, 2)
  for index in (0, 7, 35):
    x = [index // 6, index % 6]
    bound, nll = exact_bound_and_nll(code, fn, x)
    assert bound == pytest.approx(-math.log(probs[index]), rel=1e-4)
    assert nll == pytest.approx(-math.log(probs[index]), rel=1e-4)


@pytest.mark.parametrize("vocab_size,length", [(6, 2), (5, 2)])
def test_valid_bound_is_above_exact_nll_and_estimated_without_bias(vocab_size, length):
  code, seq_len = PrimeCode(vocab_size, length), 2
  fn = random_denoiser(code, seq_len, seed=vocab_size)
  seqs = np.array([[a, b] for a in range(vocab_size) for b in range(vocab_size)])
  exact = np.array([exact_bound_and_nll(code, fn, x) for x in seqs])  # (C^2, 2)
  assert np.exp(-exact[:, 1]).sum() == pytest.approx(1.0, abs=1e-4)  # A proper distribution.
  assert (exact[:, 0] > exact[:, 1] + 1e-3).all()  # Jensen, strictly for a random network.
  rng = np.random.default_rng(1)
  probs = rng.dirichlet(np.ones(vocab_size**2))
  data = _dataset(rng, probs, vocab_size, seq_len, 800)
  result = likelihood.evaluate_bound(fn, code, LINEAR, _batches(data, 200), jax.random.key(0),
                                     num_time_samples=4)
  index = data[:, 0] * vocab_size + data[:, 1]
  expected_bound = exact[index, 0].mean() / seq_len
  exact_nll = exact[index, 1].mean() / seq_len
  est = result.valid
  assert abs(est.mean - expected_bound) < 4 * est.se, (est, expected_bound)
  assert est.mean - 3 * est.se > exact_nll  # The Jensen gap is large for a random network.
  assert result.num_examples == 800 and result.num_tokens == 1600


def test_valid_bound_is_the_entropy_and_joint_is_half_on_correlated_digits():
  """DESIGN §1.4: one token, two perfectly correlated binary digits (tokens 0 = 00, 3 = 11). At
  the exact posterior the bound is log 2 per token and the paper's joint objective log 2 / 2."""
  code = PrimeCode(4, 2)
  fn = exact_denoiser(code, np.array([0.5, 0.0, 0.0, 0.5]), 1)
  data = np.repeat(np.array([[0], [3]], np.int32), 300, axis=0)
  result = likelihood.evaluate_bound(fn, code, LINEAR, _batches(data, 150), jax.random.key(2),
                                     num_time_samples=8)
  assert abs(result.valid.mean - math.log(2)) < 4 * result.valid.se
  assert abs(result.joint.mean - math.log(2) / 2) < 4 * result.joint.se
  assert result.valid.se < 0.05 and result.joint.se < 0.05
  d = result.to_dict()
  assert set(d) >= {"valid_bits", "valid_bits_se", "joint_bits", "num_examples", "num_tokens"}
  assert "joint_perplexity" not in d  # The joint objective is not a likelihood.
  assert d["valid_bits"] == pytest.approx(result.valid.mean / math.log(2))
  assert d["valid_perplexity"] == pytest.approx(math.exp(result.valid.mean))
  assert "joint (not a bound)" in result.summary()


def test_one_digit_joint_equals_valid_per_example():
  code = PrimeCode(7, 1)
  fn = random_denoiser(code, 2, seed=3)
  data = np.random.default_rng(0).integers(0, 7, (64, 2)).astype(np.int32)
  out = likelihood.eval_step(jax.random.key(0), fn, code, LINEAR, data, num_time_samples=3)
  np.testing.assert_allclose(out["valid"], out["joint"], rtol=1e-6)


def test_mean_and_standard_error_as_documented():
  rng = np.random.default_rng(0)
  sums, counts = rng.gamma(2.0, 3.0, 50), rng.integers(1, 9, 50).astype(float)
  counts[[3, 17]] = 0  # Padding examples are dropped.
  keep = counts > 0
  s, c = sums[keep], counts[keep]
  n = len(s)
  mean = s.sum() / c.sum()
  se = np.sqrt(((s - mean * c) ** 2).sum() / (n * (n - 1))) / c.mean()
  est = likelihood.ratio_estimate(sums, counts)
  assert est.mean == pytest.approx(mean) and est.se == pytest.approx(se)
  equal = likelihood.ratio_estimate(sums, np.full(50, 4.0))
  per_token = sums / 4.0
  assert equal.mean == pytest.approx(per_token.mean())
  assert equal.se == pytest.approx(per_token.std(ddof=1) / np.sqrt(50))
  r = likelihood.summarize({"valid": sums, "joint": sums / 2, "count": counts}, unit="character",
                           num_time_samples=2)
  d = r.to_dict()
  assert d["num_examples"] == 48 and d["unit"] == "character"
  assert d["valid_bits_se"] == pytest.approx(se / math.log(2))
  assert d["joint_nats"] == pytest.approx(mean / 2)


def test_split_statistics_use_the_per_example_k_averages():
  """evaluate_bound's figures are ratio_estimate of its own per-example values, and masked
  positions and all-masked (padding) rows are not counted."""
  code = PrimeCode(6, 2)
  fn = random_denoiser(code, 2, seed=5)
  data = np.random.default_rng(1).integers(0, 6, (40, 2)).astype(np.int32)
  mask = np.ones((40, 2))
  mask[:10, 1] = 0
  mask[-5:] = 0
  result = likelihood.evaluate_bound(fn, code, LINEAR, [{"tokens": data, "mask": mask}],
                                     jax.random.key(3), num_time_samples=2)
  np.testing.assert_array_equal(result.per_example["count"], mask.sum(1))
  assert result.num_examples == 35 and result.num_tokens == 60
  again = likelihood.ratio_estimate(result.per_example["valid"], result.per_example["count"])
  assert result.valid == again
  assert (result.per_example["valid"][-5:] == 0).all()


def test_antithetic_times_are_stratified_per_example():
  times = np.asarray(likelihood.antithetic_times(jax.random.key(0), 16, 4, t_min=0.0))
  assert times.shape == (4, 16) and times.min() >= 0 and times.max() < 1
  gaps = np.diff(np.sort(times, axis=0), axis=0)
  np.testing.assert_allclose(gaps, 0.25, atol=1e-6)
  assert len(np.unique(times[0])) == 16  # Examples get different offsets.


def test_eval_step_for_training_and_bad_input():
  code = PrimeCode(6, 2)
  table = jnp.asarray(np.random.default_rng(0).normal(size=(6,)), jnp.float32)
  apply_fn = lambda params, y, t: jnp.broadcast_to(params, y.shape[:-1] + (6,))
  step = jax.jit(lambda params, key, tokens: likelihood.eval_step(
      key, lambda y, t: apply_fn(params, y, t), code, LINEAR, tokens, num_time_samples=2))
  out = step(table, jax.random.key(0), np.zeros((4, 3), np.int32))
  assert out["valid"].shape == (4,) and (np.asarray(out["count"]) == 3).all()
  assert np.isfinite(np.asarray(out["valid"])).all()
  with pytest.raises(ValueError, match="tokens must lie in \\[0, 6\\)"):
    likelihood.evaluate_bound(lambda y, t: apply_fn(table, y, t), code, LINEAR,
                              [np.array([[0, 6]])], jax.random.key(0))
  with pytest.raises(ValueError, match="num_time_samples"):
    likelihood.evaluate_bound(None, code, LINEAR, [], jax.random.key(0), num_time_samples=0)
  with pytest.raises(ValueError, match="no batch"):
    likelihood.evaluate_bound(None, code, LINEAR, [], jax.random.key(0))


# ----------------------------------------------------------------------------------------------
# Sample quality.


def test_generative_perplexity_and_unigram_entropy():
  tokens = np.random.default_rng(0).integers(0, 50, (10, 9))
  uniform = lambda t: np.full(t.shape, -math.log(50.0))
  out = quality_text.generative_perplexity(uniform, tokens, batch_size=3)
  assert out["gen_ppl"] == pytest.approx(50.0) and out["num_tokens"] == 80
  assert quality_text.unigram_entropy(np.arange(16).reshape(2, 8)) == pytest.approx(math.log(8))
  assert quality_text.unigram_entropy(np.zeros((3, 5), int)) == 0.0
  assert quality_text.unigram_entropy([[0, 0, 1, 1]]) == pytest.approx(math.log(2))


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 6))
  sigma = a @ a.T + 0.1 * np.eye(6)
  mu = rng.normal(size=6)
  assert frechet.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
  d1, d2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
  expected = 4.0 + (d1 + d2 - 2 * np.sqrt(d1 * d2)).sum()
  shifted = np.zeros(6)
  shifted[0] = 2.0
  got = frechet.frechet_distance(np.zeros(6), np.diag(d1), shifted, np.diag(d2))
  assert got == pytest.approx(expected)
  # Commuting case with full matrices: Σ2 = Σ1², so tr((Σ1Σ2)^½) = tr(Σ1^{3/2}).
  eig = np.linalg.eigvalsh(sigma)
  expected = (eig + eig**2 - 2 * eig**1.5).sum()
  assert frechet.frechet_distance(mu, sigma, mu, sigma @ sigma) == pytest.approx(expected)
  feats = rng.normal(size=(500, 3))
  m, s = frechet.feature_statistics(feats)
  np.testing.assert_allclose(s, np.cov(feats.T))
