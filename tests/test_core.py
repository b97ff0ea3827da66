"""Sub-token code, schedules, forward process and the ℓ = 1 reduction to MDLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prime_jax import forward, losses, objectives, schedules
from prime_jax.subtokens import PrimeCode, smallest_base


@pytest.mark.parametrize("vocab_size,length,base", [
    (50257, 1, 50257), (50257, 2, 225), (50257, 3, 37), (50257, 4, 15), (50257, 6, 7),
    (50257, 8, 4), (256, 2, 16), (256, 4, 4), (256, 8, 2), (27, 3, 3), (2, 5, 2), (1000, 3, 10)])
def test_base_is_smallest_integer_with_enough_codes(vocab_size, length, base):
  assert smallest_base(vocab_size, length) == base
  assert base**length >= vocab_size and (base - 1)**length < vocab_size or base == 2


@pytest.mark.parametrize("vocab_size,length", [(4, 1), (10, 3), (256, 4), (50257, 2), (50257, 6)])
def test_encode_decode_round_trip_every_token(vocab_size, length):
  code = PrimeCode(vocab_size, length)
  tokens = np.arange(vocab_size)
  digits = code.encode(tokens)
  assert digits.shape == (vocab_size, length)
  assert digits.min() >= 0 and digits.max() < code.base
  np.testing.assert_array_equal(code.decode(digits), tokens)
  assert code.is_valid(digits).all()
  assert digits[:, 0].max() == code.first_digit_size - 1
  # jnp path agrees with the numpy path.
  np.testing.assert_array_equal(np.asarray(code.encode(jnp.asarray(tokens))), digits)


def test_digit_table_is_most_significant_first():
  code = PrimeCode(10, 3)  # base 3
  np.testing.assert_array_equal(code.digit_table()[7], [0, 2, 1])
  np.testing.assert_array_equal(code.digit_table()[9], [1, 0, 0])


def test_invalid_codes_detected():
  code = PrimeCode(10, 3)  # 27 codes, 10 valid
  all_codes = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
  valid = code.is_valid(all_codes)
  np.testing.assert_array_equal(valid, code.decode(all_codes) < 10)
  assert valid.sum() == 10
  assert not code.is_valid(np.array([0, 3, 0]))  # the mask value is not a digit


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab_size=1, ell=2), "vocab_size"), (dict(vocab_size=10, ell=0), "ell"),
    (dict(vocab_size=2.5, ell=1), "vocab_size")])
def test_bad_code_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    PrimeCode(**kwargs)


def test_out_of_range_tokens_rejected():
  code = PrimeCode(10, 2)
  with pytest.raises(ValueError, match=r"tokens must lie in \[0, 10\)"):
    code.encode(np.array([3, 10]))
  with pytest.raises(ValueError, match="tokens must lie"):
    code.encode(np.array([-1]))


def test_code_is_hashable_static_argument():
  code = PrimeCode(256, 2)
  assert hash(code) == hash(PrimeCode(256, 2)) and code == PrimeCode(256, 2)
  f = jax.jit(lambda x, c: c.encode(x), static_argnums=1)
  np.testing.assert_array_equal(f(jnp.array([255]), code), [[15, 15]])


@pytest.mark.parametrize("schedule", [schedules.LogLinear(), schedules.LogLinear(0.0),
                                      schedules.Polynomial(3.0), schedules.Polynomial(1.5),
                                      schedules.Cosine()])
def test_schedule_derivative_and_weight(schedule):
  t = jnp.linspace(0.01, 0.99, 33)
  np.testing.assert_allclose(schedule.dalpha(t), jax.vmap(jax.grad(schedule.alpha))(t), rtol=1e-5)
  np.testing.assert_allclose(schedule.weight(t), -schedule.dalpha(t) / (1 - schedule.alpha(t)),
                             rtol=1e-5)
  assert float(schedule.alpha(0.0)) == pytest.approx(1.0)
  assert np.all(np.diff(np.asarray(schedule.alpha(t))) < 0)


def test_loglinear_weight_is_one_over_t_and_endpoints():
  s = schedules.LogLinear(eps=1e-3)
  np.testing.assert_allclose(s.weight(jnp.array([0.25, 0.5])), [4.0, 2.0])
  assert float(s.alpha(1.0)) == pytest.approx(1e-3)
  assert float(schedules.Polynomial(3.0).alpha(0.5)) == pytest.approx(0.125)


def test_unknown_schedule_lists_known():
  with pytest.raises(ValueError, match="cosine.*loglinear.*polynomial"):
    schedules.make_schedule("linear")


def test_antithetic_times_are_stratified():
  t = np.sort(np.asarray(schedules.sample_times(jax.random.key(0), 16, t_min=0.0)))
  np.testing.assert_allclose(np.diff(t), 1 / 16, atol=1e-6)
  t = np.asarray(schedules.sample_times(jax.random.key(1), 1000, t_min=0.1))
  assert t.min() >= 0.1 and t.max() < 1.0


def test_forward_masks_each_subtoken_with_probability_one_minus_alpha():
  code = PrimeCode(256, 4)
  x0 = jax.random.randint(jax.random.key(0), (4, 5000), 0, 256)
  alpha = jnp.array([0.0, 0.3, 0.7, 1.0])
  y = forward.mask_subtokens(jax.random.key(1), code, x0, alpha)
  masked = np.asarray(y == code.mask_value).reshape(4, -1).mean(-1)
  n = 5000 * 4
  for frac, a in zip(masked, [0.0, 0.3, 0.7, 1.0]):
    assert abs(frac - (1 - a)) <= 4 * np.sqrt(a * (1 - a) / n) + 1e-9
  visible = np.asarray(y != code.mask_value)
  np.testing.assert_array_equal(np.asarray(y)[visible], np.asarray(code.encode(x0))[visible])


def _mdlm_loss(logits, x0, masked, t):
  """MDLM's masked cross-entropy, written without any Prime machinery."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, x0[..., None], axis=-1)[..., 0]
  return jnp.where(masked, nll, 0.0) / t[:, None]


@pytest.mark.parametrize("carry_over", [True, False])
def test_length_one_objectives_equal_mdlm(carry_over):
  code = PrimeCode(50, 1)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  logits = 3 * jax.random.normal(k1, (4, 32, 50))
  x0 = jax.random.randint(k2, (4, 32), 0, 50)
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  y = forward.mask_subtokens(k3, code, x0, 1 - t)
  s = schedules.LogLinear(eps=0.0)
  expected = _mdlm_loss(logits, x0, y[..., 0] == code.mask_value, t)
  joint = objectives.joint_loss(code, s, logits, x0, y, t, carry_over)
  valid = objectives.valid_loss(code, s, logits, x0, y, t, carry_over)
  np.testing.assert_allclose(joint, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(valid, expected, rtol=1e-6, atol=1e-6)


def test_marginals_are_distributions_consistent_with_visible_digits():
  code = PrimeCode(1000, 3)  # base 10, exact
  logits = jax.random.normal(jax.random.key(0), (2, 3, 1000))
  y = jnp.array([[[10, 10, 10], [3, 10, 7], [1, 2, 3]]] * 2)
  log_mu = objectives.digit_log_marginals(code, logits, y)
  assert log_mu.shape == (2, 3, 3, 10)
  np.testing.assert_allclose(jnp.exp(log_mu).sum(-1), 1.0, rtol=1e-5)
  mu = np.asarray(jnp.exp(log_mu))
  assert mu[0, 1, 0, 3] == pytest.approx(1.0) and mu[0, 1, 2, 7] == pytest.approx(1.0)
  # Brute force: marginal of digit 1 at position 1 from the explicit restricted distribution.
  p = np.asarray(jax.nn.softmax(logits[0, 1]))
  digits = code.digit_table()
  keep = (digits[:, 0] == 3) & (digits[:, 2] == 7)
  p = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
  np.testing.assert_allclose(mu[0, 1, 1], np.bincount(digits[:, 1], p, 10), rtol=1e-5)
  assert mu[0, 2, :, :].max(-1).min() == pytest.approx(1.0)  # fully visible: point masses


def test_leading_digit_marginal_gives_no_mass_to_unused_values():
  code = PrimeCode(10, 3)  # base 3, leading digit only 0 or 1
  log_mu = objectives.digit_log_marginals(code, jnp.zeros((1, 10)), None)
  np.testing.assert_allclose(jnp.exp(log_mu[0, 0]), [0.9, 0.1, 0.0], atol=1e-7)


@pytest.mark.parametrize("objective", ["valid", "joint", "cross_entropy"])
@pytest.mark.parametrize("length", [1, 2, 3])
def test_gradients_finite_with_bfloat16_logits_and_singleton_sets(objective, length):
  code = PrimeCode(300, length)
  k1, k2 = jax.random.split(jax.random.key(length))
  logits = (20 * jax.random.normal(k1, (2, 8, 300))).astype(jnp.bfloat16)
  x0 = jax.random.randint(k2, (2, 8), 0, 300)
  digits = code.encode(x0)
  # Row 0 fully visible (every consistency set has one element); row 1 fully masked.
  y = jnp.stack([digits[0], jnp.full_like(digits[1], code.mask_value)])
  t = jnp.array([0.3, 0.9])

  def loss(lg):
    return losses.get(objective).token_loss(code, schedules.LogLinear(), lg, x0, y, t).mean()

  value, grad = jax.value_and_grad(loss)(logits)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad, np.float32)))
  per_token = losses.get(objective).token_loss(code, schedules.LogLinear(), logits, x0, y, t)
  np.testing.assert_array_equal(per_token[0], 0.0)  # fully visible with carry-over costs nothing


def test_unknown_objective_and_wrong_logit_width():
  code = PrimeCode(10, 2)
  with pytest.raises(ValueError, match="objective='elbo' is invalid.*'valid', 'joint'"):
    losses.get("elbo")
  with pytest.raises(ValueError, match="C=10"):
    objectives.digit_log_marginals(code, jnp.zeros((1, 16)))


def test_restrict_logits_matches_consistency_set():
  code = PrimeCode(10, 3)
  y = jnp.array([[1, 3, 3]])  # leading digit 1 visible -> tokens 9..17 (only 9 is valid)
  restricted = objectives.restrict_logits(code, jnp.zeros((1, 10)), y)
  allowed = np.asarray(restricted[0]) > -1e29
  np.testing.assert_array_equal(np.flatnonzero(allowed), [9])
  y = jnp.array([[3, 3, 2]])
  allowed = np.asarray(objectives.restrict_logits(code, jnp.zeros((1, 10)), y)[0]) > -1e29
  np.testing.assert_array_equal(np.flatnonzero(allowed), [2, 5, 8])


def _reference_valid(code, logits, x0, y, carry_over):
  """The valid loss by plain autodiff: every digit marginal as a logsumexp over the other axes."""
  grid = objectives.grid_logits(code, logits, y if carry_over else None)
  axes = tuple(range(grid.ndim - code.ell, grid.ndim))
  log_z = jax.nn.logsumexp(grid, axis=axes)
  digits = code.encode(x0)
  total = 0.0
  for j in range(code.ell):
    others = tuple(a for a in axes if a != axes[j])
    row = jax.nn.logsumexp(grid, axis=others) if others else grid
    hit = jnp.take_along_axis(row, digits[..., j, None], axis=-1)[..., 0]
    total = total + jnp.where(y[..., j] == code.mask_value, log_z - hit, 0.0)
  return total


def _reference_joint(code, logits, x0, y, carry_over):
  grid = objectives.grid_logits(code, logits, y if carry_over else None)
  flat = grid.reshape(grid.shape[:-code.ell] + (-1,))
  nll = -jnp.take_along_axis(jax.nn.log_softmax(flat), x0[..., None], axis=-1)[..., 0]
  return jnp.where((y == code.mask_value).any(-1), nll, 0.0)


@pytest.mark.parametrize("carry_over", [True, False])
@pytest.mark.parametrize("vocab_size,length", [(50, 1), (300, 2), (1000, 3), (250, 4)])
def test_custom_gradients_match_plain_autodiff(vocab_size, length, carry_over):
  code = PrimeCode(vocab_size, length)
  k1, k2, k3 = jax.random.split(jax.random.key(vocab_size), 3)
  logits = 2 * jax.random.normal(k1, (3, 16, vocab_size))
  x0 = jax.random.randint(k2, (3, 16), 0, vocab_size)
  t = jnp.array([0.2, 0.5, 0.8])
  y = forward.mask_subtokens(k3, code, x0, 1 - t)
  s = schedules.LogLinear(eps=0.0)
  cot = jax.random.uniform(k1, (3, 16))
  for ours, ref in [(objectives.valid_loss, _reference_valid),
                    (objectives.joint_loss, _reference_joint)]:
    f = lambda lg: (ours(code, s, lg, x0, y, t, carry_over) * t[:, None] * cot).sum()
    g = lambda lg: (ref(code, lg, x0, y, carry_over) * cot).sum()
    np.testing.assert_allclose(f(logits), g(logits), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(f)(logits), jax.grad(g)(logits), rtol=1e-4, atol=1e-6)
