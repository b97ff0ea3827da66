"""The samplers, checked against exact posteriors of tiny enumerable distributions.

Chi-square tests use the 0.999 quantile (Wilson-Hilferty approximation), so a correct sampler fails
one of them about once in a thousand runs; every key is fixed, so the outcome is reproducible.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from exact_posterior import exact_posterior
from prime_jax import sampling, schedules
from prime_jax.sampling import draws
from prime_jax.subtokens import PrimeCode

LINEAR = schedules.LogLinear(eps=0.0)


def _chi2_critical(df: int, z: float = 3.09) -> float:
  """Upper 0.999 quantile of χ²(df) by the Wilson-Hilferty cube approximation."""
  c = 2.0 / (9.0 * df)
  return df * (1.0 - c + z * np.sqrt(c)) ** 3


def _chi2(counts, probs):
  support = probs > 0
  expected = counts.sum() * probs[support]
  stat = float((((counts[support] - expected) ** 2) / expected).sum())
  return stat, int(support.sum()) - 1


def _distribution(seed, size, zeros=0):
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.full(size, 3.0)) + 0.5 / size
  if zeros:
    p[rng.choice(size, zeros, replace=False)] = 0.0
  return p / p.sum()


def exact_denoiser(code: PrimeCode, probs: np.ndarray, seq_len: int):
  """denoise_fn(y, t) returning the exact posterior's log-probs, looked up by y (t is unused)."""
  n = seq_len * code.ell
  patterns = np.array(list(itertools.product(range(code.base + 1), repeat=n)), np.int32)
  post = exact_posterior(code, probs, patterns.reshape(-1, seq_len, code.ell))
  table = jnp.asarray(np.log(np.maximum(post, 1e-30)), jnp.float32)
  radix = jnp.asarray((code.base + 1) ** np.arange(n)[::-1], jnp.int32)

  def denoise_fn(y, t):
    del t
    return table[(y.reshape(y.shape[0], n) * radix).sum(-1)]

  return denoise_fn


def hashed_denoiser(vocab_size: int):
  """A deterministic, time-agnostic stand-in network: logits are a fixed function of y."""
  def denoise_fn(y, t):
    del t
    s = (y * jnp.arange(1, y.shape[-1] + 1)).sum(-1, keepdims=True).astype(jnp.float32)
    return 2.0 * jnp.sin(0.7 * s + 1.3 * jnp.arange(vocab_size) + jnp.cumsum(s, axis=1) * 0.1)
  return denoise_fn


def _sample(key, fn, code, shape, config, time_agnostic=True, **kw):
  run = jax.jit(lambda k: sampling.sample(k, fn, code, LINEAR, shape, config,
                                          time_agnostic=time_agnostic, **kw))
  return run(key)


def _sequence_counts(tokens, vocab_size):
  seq_len = tokens.shape[1]
  index = (np.asarray(tokens) * vocab_size ** np.arange(seq_len)[::-1]).sum(-1)
  return np.bincount(index, minlength=vocab_size**seq_len)


# ----------------------------------------------------------------------------------------------
# Distributions.


@pytest.mark.parametrize("carry_over", [True, False])
@pytest.mark.parametrize("vocab_size,length", [(6, 2), (5, 3)])
def test_joint_sampler_is_exact_for_one_position_at_any_step_count(vocab_size, length, carry_over):
  """With one position, x̂ ~ exact p(x | y_t) and any reveal pattern gives an exact sample, for any
  T (here T=1 and T=3), and never a zero-probability token."""
  code = PrimeCode(vocab_size, length)
  probs = _distribution(vocab_size, vocab_size, zeros=2)
  fn = exact_denoiser(code, probs, 1)
  for steps in (1, 3):
    config = sampling.SamplerConfig(num_steps=steps, carry_over=carry_over)
    out = _sample(jax.random.key(steps), fn, code, (4000, 1), config)
    counts = _sequence_counts(out.tokens, vocab_size)
    assert counts[probs == 0].sum() == 0
    stat, df = _chi2(counts, probs)
    assert stat < _chi2_critical(df), (steps, stat)
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
  probs = _distribution(vocab_size * 3 + length, vocab_size**seq_len)
  fn = exact_denoiser(code, probs, seq_len)
  config = sampling.SamplerConfig(num_steps=512, digit_source=digit_source, carry_over=carry_over)
  out = _sample(jax.random.key(7), fn, code, (4000, seq_len), config)
  stat, df = _chi2(_sequence_counts(out.tokens, vocab_size), probs)
  assert stat < _chi2_critical(df), stat


def independent_denoiser(code: PrimeCode, probs_LC: np.ndarray):
  """Exact posterior of independent positions, position i with token distribution probs_LC[i]."""
  seq_len = len(probs_LC)
  patterns = np.array(list(itertools.product(range(code.base + 1), repeat=code.ell)), np.int32)
  digits = code.digit_table()  # (C, ℓ)
  visible = patterns != code.mask_value
  agree = ((digits[None] == patterns[:, None]) | ~visible[:, None]).all(-1)  # (Pat, C)
  post = agree[None] * probs_LC[:, None, :]  # (L, Pat, C)
  post = post / np.maximum(post.sum(-1, keepdims=True), 1e-300)
  table = jnp.asarray(np.log(np.maximum(post, 1e-30)), jnp.float32)
  radix = jnp.asarray((code.base + 1) ** np.arange(code.ell)[::-1], jnp.int32)

  def denoise_fn(y, t):
    del t
    return table[jnp.arange(seq_len), (y * radix).sum(-1)]

  return denoise_fn


def test_draws_gathered_at_revealed_positions_land_in_place():
  """With 32 independent positions, each with its own distribution, the joint sampler is exact at
  any T. Drawing only at the revealed positions of the batch, 600 (the default here: about half
  a busy step's reveals) or 7 at a time, in as many rounds as a step needs, gives exactly the
  samples of drawing at every position at once, with or without top-p, since each position's
  noise is keyed by its index."""
  code, seq_len = PrimeCode(6, 2), 32
  probs = np.stack([_distribution(i, 6) for i in range(seq_len)])
  fn = independent_denoiser(code, probs)
  exact = None
  for top_p in (1.0, 0.7):
    tokens = {}
    for slots, expected_slots in ((None, 600), (7, 7), (0, 0)):
      config = sampling.SamplerConfig(num_steps=seq_len, draw_slots=slots, top_p=top_p)
      assert sampling.draw_slot_count(LINEAR, config, seq_len, 2, batch=600) == expected_slots
      tokens[slots] = np.asarray(_sample(jax.random.key(11), fn, code, (600, seq_len),
                                         config).tokens)
    np.testing.assert_array_equal(tokens[None], tokens[0])
    np.testing.assert_array_equal(tokens[7], tokens[0])
    exact = tokens[0] if top_p == 1.0 else exact
  stat = sum(_chi2(np.bincount(exact[:, i], minlength=6), probs[i])[0] for i in range(seq_len))
  assert stat < _chi2_critical(seq_len * 5)


def test_marginal_sampler_in_one_step_draws_the_product_of_marginals():
  """Negative control: revealing both digits at once from their marginals is detectably wrong on
  a distribution whose digits are correlated (here perfectly: tokens 0 = 00 and 4 = 11)."""
  code = PrimeCode(4, 2)
  probs = np.array([0.5, 0.0, 0.0, 0.5])
  fn = exact_denoiser(code, probs, 1)
  config = sampling.SamplerConfig(num_steps=1, digit_source="marginal")
  out = _sample(jax.random.key(0), fn, code, (4000, 1), config)
  frac_mixed = np.isin(np.asarray(out.tokens), [1, 2]).mean()
  assert abs(frac_mixed - 0.5) < 0.05  # The product of marginals puts half its mass on 01, 10.
  stat, df = _chi2(_sequence_counts(out.tokens, 4), probs)
  assert stat > _chi2_critical(df)  # The same test that passes above rejects this sampler.


# ----------------------------------------------------------------------------------------------
# Idle steps and caching.


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

  out = _sample(jax.random.key(3), fn, code, (1, 3), config, time_agnostic=False)
  jax.effects_barrier()
  remaining = 6 - np.concatenate([[0], np.cumsum(out.changes_per_step)[:-1]])
  assert int(out.num_calls) == int((remaining > 0).sum()) == len(seen_t)
  np.testing.assert_allclose(seen_t, sampling.time_grid(config)[:len(seen_t)], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Conditioning.


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
  out = _sample(jax.random.key(0), _recording(hashed_denoiser(10), inputs), code, shape, config,
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
  out = _sample(jax.random.key(1), hashed_denoiser(256), code, shape, config,
                fixed_tokens=tokens, fixed_mask=mask)
  assert out.tokens.shape == shape and out.digits.shape == shape + (2,)
  np.testing.assert_array_equal(np.asarray(out.tokens).reshape(2, -1)[:, :20], [prefix] * 2)
  # Infilling: an arbitrary scatter of fixed pixels.
  rng = np.random.default_rng(0)
  mask = rng.random(shape) < 0.3
  fixed = rng.integers(0, 256, shape)
  out = _sample(jax.random.key(2), hashed_denoiser(256), code, shape, config,
                fixed_tokens=fixed, fixed_mask=mask)
  np.testing.assert_array_equal(np.asarray(out.tokens)[mask], fixed[mask])
  assert (np.asarray(out.tokens)[~mask] != fixed[~mask]).any()


def test_fully_fixed_input_needs_no_network_call():
  code, shape = PrimeCode(6, 2), (2, 3)
  fixed = np.array([[1, 2, 3], [4, 5, 0]])
  out = _sample(jax.random.key(0), hashed_denoiser(6), code, shape,
                sampling.SamplerConfig(num_steps=5), fixed_tokens=fixed,
                fixed_mask=np.ones(shape, bool))
  np.testing.assert_array_equal(out.tokens, fixed)
  assert int(out.num_calls) == 0 and int(out.num_idle) == 6


# ----------------------------------------------------------------------------------------------
# Invalid codes.


def test_invalid_codes_counted_and_handled_by_policy():
  """C=5, ℓ=2 (b=3): codes 12 and 2x decode to >= 5. Without carry-over, digits revealed at
  different steps from separate joint draws form such codes; each policy sees the same walk."""
  code, shape = PrimeCode(5, 2), (64, 16)
  uniform = lambda y, t: jnp.zeros(y.shape[:-1] + (5,))
  out = {}
  for policy in sampling.INVALID_POLICIES:
    config = sampling.SamplerConfig(num_steps=16, carry_over=False, invalid_policy=policy)
    out[policy] = _sample(jax.random.key(4), uniform, code, shape, config)
  keep = np.asarray(out["keep"].tokens)
  invalid = keep >= 5
  assert invalid.sum() > 20
  for policy in sampling.INVALID_POLICIES:
    np.testing.assert_array_equal(out[policy].num_invalid, invalid.sum(1))
  np.testing.assert_array_equal(code.decode(np.asarray(out["keep"].digits)), keep)
  np.testing.assert_array_equal(out["clip"].tokens, np.minimum(keep, 4))
  res = np.asarray(out["resample"].tokens)
  assert res.max() < 5
  np.testing.assert_array_equal(res[~invalid], keep[~invalid])
  # A code 12 keeps its valid leading digit 1: it is re-drawn among 10 = 3 and 11 = 4.
  assert np.isin(res[keep == 5], [3, 4]).all() and (keep == 5).any()
  np.testing.assert_array_equal(out["resample"].digits, code.encode(res))
  # With carry-over the joint sampler never forms an invalid code.
  config = sampling.SamplerConfig(num_steps=16, carry_over=True, invalid_policy="keep")
  assert int(_sample(jax.random.key(4), uniform, code, shape, config).num_invalid.sum()) == 0


# ----------------------------------------------------------------------------------------------
# Draws, grid, options.


def _token_draws(key, probs, top_p=1.0, rows=40000, draw_dtype=jnp.float32):
  """Tokens from `draw_digits` with ℓ = 1 (a digit is a token), `rows` draws of `probs`."""
  probs = np.asarray(probs)
  code = PrimeCode(probs.shape[-1], 1)
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (rows, probs.shape[-1]))
  y = jnp.full((rows, 1), code.mask_value, jnp.int32)
  digits = sampling.draw_digits(key, code, logits, y, 1.0, digit_source="joint",
                                carry_over=True, top_p=top_p, draw_dtype=draw_dtype)
  return np.asarray(digits[..., 0])


def _nucleus(probs, top_p):
  """The sorted reference: the most probable entries whose mass first reaches top_p, and every
  entry tied with the last of them."""
  order = np.argsort(-probs, kind="stable")
  size = int((np.cumsum(probs[order]) < top_p).sum()) + 1
  return probs >= probs[order[size - 1]]


@pytest.mark.parametrize("width,scale", [(37, 2.0), (2000, 0.5), (2000, 8.0)])
def test_nucleus_draws_follow_the_sorted_reference(width, scale):
  """Top-p draws never leave the sorted reference's nucleus and follow its renormalised law, for
  flat and two-level races, wide nuclei (hundreds of entries) and narrow ones; top_p = 0.3 on
  flat rows needs several rejection rounds."""
  rng = np.random.default_rng(width + int(scale))
  probs = np.exp(rng.normal(0, scale, width))
  probs /= probs.sum()
  for i, top_p in enumerate((0.3, 0.9)):
    kept = _nucleus(probs, top_p)
    counts = np.bincount(_token_draws(jax.random.key(i), probs, top_p), minlength=width)
    assert counts[~kept].sum() == 0, (top_p, np.nonzero(counts * ~kept))
    stat, df = _chi2(counts, np.where(kept, probs, 0.0) / probs[kept].sum())
    assert df == 0 or stat < _chi2_critical(df), (top_p, stat, df)


def test_nucleus_cut_is_exact_and_keeps_ties():
  for probs, top_p, kept in (([0.5, 0.3, 0.15, 0.05], 0.7, [1, 1, 0, 0]),
                             ([0.5, 0.3, 0.15, 0.05], 0.85, [1, 1, 1, 0]),
                             ([0.5, 0.3, 0.15, 0.05], 0.8, [1, 1, 0, 0]),
                             ([0.3, 0.3, 0.2, 0.2], 0.5, [1, 1, 0, 0]),
                             ([0.4, 0.2, 0.2, 0.2], 0.5, [1, 1, 1, 1]),
                             ([0.4, 0.2, 0.2, 0.2], 0.3, [1, 0, 0, 0])):
    probs, kept = np.asarray(probs), np.asarray(kept, bool)
    np.testing.assert_array_equal(_nucleus(probs, top_p), kept)
    counts = np.bincount(_token_draws(jax.random.key(3), probs, top_p, rows=4000), minlength=4)
    np.testing.assert_array_equal(counts > 0, kept)


def test_top_p_and_temperature_in_the_sampler():
  code = PrimeCode(8, 1)
  probs = np.array([0.4, 0.3, 0.2, 0.05, 0.03, 0.01, 0.005, 0.005])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  fn = lambda y, t: jnp.broadcast_to(logits, y.shape[:-1] + (8,))
  out = _sample(jax.random.key(0), fn, code, (500, 8), sampling.SamplerConfig(4, top_p=0.85))
  counts = np.bincount(np.asarray(out.tokens).ravel(), minlength=8)
  assert counts[3:].sum() == 0
  stat, df = _chi2(counts, np.where(np.arange(8) < 3, probs, 0) / 0.9)
  assert stat < _chi2_critical(df)
  cold = _sample(jax.random.key(0), fn, code, (50, 8), sampling.SamplerConfig(4, temperature=0.02))
  assert (np.asarray(cold.tokens) == 0).all()


def test_draws_follow_probabilities_in_both_precisions():
  probs = np.array([0.6, 0.25, 0.1, 0.05])
  assert sampling.resolve_draw_dtype("float64") == jnp.float32  # x64 is off in the tests.
  for dtype in (jnp.float32, jnp.float64):
    with jax.enable_x64(dtype == jnp.float64):
      assert sampling.resolve_draw_dtype(dtype.__name__) == dtype
      draws = _token_draws(jax.random.key(5), probs, rows=20000, draw_dtype=dtype)
    stat, df = _chi2(np.bincount(draws, minlength=4), probs)
    assert stat < _chi2_critical(df)


def test_two_level_race_follows_probabilities(monkeypatch):
  """Past FLAT_RACE_MAX entries the race picks a block by its mass, then an entry: same law."""
  monkeypatch.setattr(draws, "FLAT_RACE_MAX", 8)  # 37 entries race as 6 blocks of 7.
  probs = np.random.default_rng(3).dirichlet(np.full(37, 0.7))
  for top_p in (1.0, 0.8):
    kept = _nucleus(probs, top_p)
    counts = np.bincount(_token_draws(jax.random.key(6), probs, top_p), minlength=37)
    assert counts[~kept].sum() == 0
    stat, df = _chi2(counts, np.where(kept, probs, 0.0) / probs[kept].sum())
    assert stat < _chi2_critical(df), (top_p, stat)


def test_a_position_draws_the_same_whatever_it_is_drawn_with():
  """Noise is keyed by row id, so drawing rows 5 and 2 alone (as a step's gathered draw does)
  gives what drawing all rows gives there, top-p rejection rounds included."""
  code = PrimeCode(300, 2)
  logits = jax.random.normal(jax.random.key(0), (2, 4, 300)) * 0.3
  y = jnp.full((2, 4, 2), code.mask_value, jnp.int32).at[1, 1, 0].set(3)
  for source in sampling.DIGIT_SOURCES:
    kw = dict(digit_source=source, carry_over=True, top_p=0.3)
    full = sampling.draw_digits(jax.random.key(1), code, logits, y, 1.0, **kw)
    rows = jnp.array([5, 2])
    part = sampling.draw_digits(jax.random.key(1), code, logits.reshape(8, 300)[rows],
                                y.reshape(8, 2)[rows], 1.0, row_ids=rows, **kw)
    np.testing.assert_array_equal(part, full.reshape(8, 2)[rows])


def _restricted(code, probs, y):
  """The joint sampler's target: probs restricted to the tokens whose digits agree with y."""
  digits = code.digit_table()
  ok = ((y == code.mask_value) | (digits == y)).all(-1)
  return np.where(ok, probs, 0.0) / np.where(ok, probs, 0.0).sum()


@pytest.mark.parametrize("vocab,visible", [(37, (-1, 2, -1)), (37, (1, -1, -1)), (37, (1, -1, 3)),
                                           (37, (-1, -1, 1)), (50, (-1, 3)), (50, (4, -1)),
                                           (37, (-1,))])
def test_joint_draws_follow_the_distribution_restricted_to_visible_digits(vocab, visible):
  """The joint draw works on blocks of the digit grid with carry-over as per-axis biases."""
  code = PrimeCode(vocab, len(visible))  # ℓ=3: grid (3, 4, 4) as 12 blocks × 4; ℓ=2: (7, 8).
  ell = code.ell
  y = np.where(np.asarray(visible) < 0, code.mask_value, visible)
  probs = np.random.default_rng(4).dirichlet(np.full(vocab, 0.8))
  target = _restricted(code, probs, y)
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (40000, vocab))
  y_B = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (40000, ell))
  for top_p in (1.0, 0.8):
    digits = sampling.draw_digits(jax.random.key(7), code, logits, y_B, 1.0,
                                  digit_source="joint", carry_over=True, top_p=top_p)
    counts = np.bincount(np.asarray(code.decode(digits)), minlength=vocab)
    expected = target
    if top_p < 1.0:
      order = np.argsort(-target)
      size = int((np.cumsum(target[order]) < top_p).sum()) + 1
      expected = np.zeros(vocab)
      expected[order[:size]] = target[order[:size]]
      expected /= expected.sum()
    assert counts[expected == 0].sum() == 0, (top_p, np.nonzero(counts * (expected == 0)))
    stat, df = _chi2(counts, expected)
    assert df == 0 or stat < _chi2_critical(df), (top_p, stat, df)


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


def test_sharded_batch_gives_the_same_samples():
  """Over 8 devices the samples equal the unsharded ones, for a full draw at every position
  (short sequences) and for draws gathered among each device's own revealed positions."""
  devices = np.array(jax.devices()[:8])
  mesh = Mesh(devices, ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  code = PrimeCode(10, 2)
  fn = hashed_denoiser(10)
  for seq_len, slots in ((6, 0), (32, 2)):
    shape = (8, seq_len)
    config = sampling.SamplerConfig(num_steps=seq_len, top_p=0.9)
    assert sampling.draw_slot_count(LINEAR, config, seq_len, 2, batch=1) == slots
    plain = _sample(jax.random.key(9), fn, code, shape, config)
    sharded = _sample(jax.random.key(9), fn, code, shape, config, batch_sharding=sharding)
    np.testing.assert_array_equal(plain.tokens, sharded.tokens)
    assert sharded.tokens.sharding.is_equivalent_to(sharding, 2)
  with pytest.raises(ValueError, match="batch of 12 samples must be a multiple of the 8 shards"):
    _sample(jax.random.key(9), fn, code, (12, 6), config, batch_sharding=sharding)


# ----------------------------------------------------------------------------------------------
# Bad input.


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
    _sample(jax.random.key(0), lambda y, t: jnp.zeros(y.shape[:-1] + (7,)), small, (2, 4),
            sampling.SamplerConfig(4))
