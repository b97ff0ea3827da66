"""The likelihood bound, checked by exact enumeration of tiny data distributions.

With the exact posterior as the network, the valid bound integrated over t equals the data
entropy; any other network gives more; the paper's joint objective can fall below the entropy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exact_posterior import entropy, exact_posterior, noised_batch
from prime_jax import objectives, schedules
from prime_jax.subtokens import PrimeCode

CASES = [(4, 1, 2), (4, 2, 2), (6, 2, 2), (9, 2, 2), (10, 3, 1), (10, 3, 2), (6, 3, 2), (9, 1, 1)]
SCHEDULES = [schedules.LogLinear(eps=0.0), schedules.Polynomial(3.0), schedules.Cosine()]


def _random_distribution(rng, size, zeros=0):
  p = rng.dirichlet(np.full(size, 0.5))
  if zeros:
    p[rng.choice(size, zeros, replace=False)] = 0.0
  return p / p.sum()


def _integrate(loss_fn, code, schedule, probs, seq_len, logits, nodes=96):
  """Σ_x p(x) ∫ E_{y~q(.|x,t)} [Σ_i loss_i] dt by Gauss-Legendre quadrature over t."""
  x0, y, k, seq_index = noised_batch(code, seq_len)
  n = seq_len * code.ell
  weight_x = probs[seq_index]
  keep = weight_x > 0
  x0, y, k, weight_x, logits = x0[keep], y[keep], k[keep], weight_x[keep], logits[keep]
  fn = jax.jit(lambda t: loss_fn(code, schedule, logits, x0, y, t).sum(-1))
  u, w = np.polynomial.legendre.leggauss(nodes)
  total = 0.0
  for t_q, w_q in zip((u + 1) / 2, w / 2):
    alpha = float(schedule.alpha(t_q))
    q_mask = alpha ** (n - k) * (1 - alpha) ** k
    loss = np.asarray(fn(jnp.full((len(x0),), t_q, jnp.float32)), np.float64)
    total += w_q * np.sum(weight_x * q_mask * loss)
  return total


def _posterior_logits(code, probs, seq_len):
  _, y, _, _ = noised_batch(code, seq_len)
  return np.log(np.maximum(exact_posterior(code, probs, y), 1e-30)).astype(np.float32)


@pytest.mark.parametrize("carry_over", [True, False])
@pytest.mark.parametrize("vocab_size,length,seq_len", CASES)
def test_valid_bound_at_exact_posterior_equals_entropy(vocab_size, length, seq_len, carry_over):
  code = PrimeCode(vocab_size, length)
  probs = _random_distribution(np.random.default_rng(vocab_size * 7 + length), vocab_size**seq_len)
  logits = _posterior_logits(code, probs, seq_len)
  loss = lambda *a: objectives.valid_loss(*a, carry_over=carry_over)
  for schedule in SCHEDULES:
    bound = _integrate(loss, code, schedule, probs, seq_len, logits)
    assert bound == pytest.approx(entropy(probs), rel=1e-4), schedule


@pytest.mark.parametrize("carry_over", [True, False])
@pytest.mark.parametrize("vocab_size,length,seq_len", [(4, 2, 2), (10, 3, 1), (6, 2, 2)])
def test_valid_bound_of_any_network_is_above_entropy(vocab_size, length, seq_len, carry_over):
  code = PrimeCode(vocab_size, length)
  rng = np.random.default_rng(3)
  probs = _random_distribution(rng, vocab_size**seq_len, zeros=vocab_size // 2)
  _, y, _, _ = noised_batch(code, seq_len)
  # A denoiser must be a function of y alone: index a random table by y's base-(b+1) number.
  y_index = (y.reshape(len(y), -1) * (code.base + 1) ** np.arange(y[0].size)).sum(-1)
  table = rng.normal(0, 2, ((code.base + 1) ** y[0].size, seq_len, vocab_size))
  posterior = _posterior_logits(code, probs, seq_len)
  loss = lambda *a: objectives.valid_loss(*a, carry_over=carry_over)
  h = entropy(probs)
  schedule = schedules.LogLinear(eps=0.0)
  for scale in (0.1, 1.0):
    logits = (posterior + scale * table[y_index]).astype(np.float32)
    assert _integrate(loss, code, schedule, probs, seq_len, logits) > h + 1e-4
  random_bound = _integrate(loss, code, schedule, probs, seq_len, table[y_index].astype(np.float32))
  assert random_bound > h + 1e-2


def test_joint_objective_is_half_the_entropy_on_two_perfectly_correlated_digits():
  """The paper's error in one token: digits 00 or 11, each with probability 1/2."""
  code = PrimeCode(4, 2)
  probs = np.array([0.5, 0.0, 0.0, 0.5])
  logits = _posterior_logits(code, probs, 1)
  for schedule in SCHEDULES:
    joint = _integrate(objectives.joint_loss, code, schedule, probs, 1, logits)
    valid = _integrate(objectives.valid_loss, code, schedule, probs, 1, logits)
    assert joint == pytest.approx(0.5 * np.log(2), rel=1e-4)
    assert valid == pytest.approx(np.log(2), rel=1e-4)


@pytest.mark.parametrize("vocab_size,length,seq_len", [(9, 2, 2), (10, 3, 1)])
def test_joint_objective_falls_below_entropy_on_correlated_data(vocab_size, length, seq_len):
  code = PrimeCode(vocab_size, length)
  probs = _random_distribution(np.random.default_rng(11), vocab_size**seq_len)
  logits = _posterior_logits(code, probs, seq_len)
  joint = _integrate(objectives.joint_loss, code, schedules.LogLinear(0.0), probs, seq_len, logits)
  assert joint < entropy(probs) - 0.05


def test_joint_and_valid_agree_with_exact_coefficients():
  """∫ w α^{n-k} (1-α)^k dt = B(n-k+1, k) for any schedule: check the quadrature against it."""
  from math import factorial
  code, seq_len = PrimeCode(6, 2), 2
  probs = _random_distribution(np.random.default_rng(5), 36)
  logits = _posterior_logits(code, probs, seq_len)
  x0, y, k, seq_index = noised_batch(code, seq_len)
  n = 4
  coeff = np.array([0.0 if kk == 0 else factorial(n - kk) * factorial(kk - 1) / factorial(n)
                    for kk in k])
  t = jnp.full((len(x0),), 0.5)
  unweighted = np.asarray(objectives.valid_loss(
      code, schedules.LogLinear(0.0), logits, x0, y, t).sum(-1)) * 0.5  # w(0.5) = 2
  exact = np.sum(probs[seq_index] * coeff * unweighted)
  assert exact == pytest.approx(entropy(probs), rel=1e-5)
