"""Categorical digit draws: exact top-p nuclei, both precisions, two-level races, position-keyed
noise and joint draws restricted to the visible digits.

Chi-square tests use the 0.999 quantile (Wilson-Hilferty approximation), so a correct sampler
fails one of them about once in a thousand runs; every key is fixed, so the outcome is
reproducible.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prime_jax import sampling
from prime_jax.sampling import draws
from prime_jax.subtokens import PrimeCode
from sampling_helpers import chi2, chi2_critical, nucleus, token_draws


def _token_draws(runs, rows=40000):
  """[tokens] of `token_draws` for several (key, probs, top_p) runs, as one jitted program: op by
  op, every primitive of the race and its rejection rounds would compile on its own."""
  def one(key, probs, top_p):
    code = PrimeCode(probs.shape[-1], 1)
    logits = jnp.broadcast_to(jnp.log(probs), (rows, probs.shape[-1]))
    y = jnp.full((rows, 1), code.mask_value, jnp.int32)
    return sampling.draw_digits(key, code, logits, y, 1.0, digit_source="joint",
                                carry_over=True, top_p=top_p)[..., 0]
  keys = [key for key, _, _ in runs]
  probs = [jnp.asarray(p, jnp.float32) for _, p, _ in runs]
  out = jax.jit(lambda ks, ps: [one(k, p, top_p) for k, p, (_, _, top_p) in zip(ks, ps, runs)])(
      keys, probs)
  return [np.asarray(o) for o in out]


@pytest.mark.parametrize("width,scale", [(37, 2.0), (2000, 0.5), (2000, 8.0)])
def test_nucleus_draws_follow_the_sorted_reference(width, scale):
  """Top-p draws never leave the sorted reference's nucleus and follow its renormalised law, for
  flat and two-level races, wide nuclei (hundreds of entries) and narrow ones; top_p = 0.3 on
  flat rows needs several rejection rounds."""
  rng = np.random.default_rng(width + int(scale))
  probs = np.exp(rng.normal(0, scale, width))
  probs /= probs.sum()
  top_ps = (0.3, 0.9)
  drawn = _token_draws([(jax.random.key(i), probs, top_p) for i, top_p in enumerate(top_ps)])
  for top_p, tokens in zip(top_ps, drawn):
    kept = nucleus(probs, top_p)
    counts = np.bincount(tokens, minlength=width)
    assert counts[~kept].sum() == 0, (top_p, np.nonzero(counts * ~kept))
    stat, df = chi2(counts, np.where(kept, probs, 0.0) / probs[kept].sum())
    assert df == 0 or stat < chi2_critical(df), (top_p, stat, df)


def test_nucleus_cut_is_exact_and_keeps_ties():
  cases = (([0.5, 0.3, 0.15, 0.05], 0.7, [1, 1, 0, 0]),
           ([0.5, 0.3, 0.15, 0.05], 0.85, [1, 1, 1, 0]),
           ([0.5, 0.3, 0.15, 0.05], 0.8, [1, 1, 0, 0]),
           ([0.3, 0.3, 0.2, 0.2], 0.5, [1, 1, 0, 0]),
           ([0.4, 0.2, 0.2, 0.2], 0.5, [1, 1, 1, 1]),
           ([0.4, 0.2, 0.2, 0.2], 0.3, [1, 0, 0, 0]))
  drawn = _token_draws([(jax.random.key(3), np.asarray(probs), top_p)
                        for probs, top_p, _ in cases], rows=4000)
  for (probs, top_p, kept), tokens in zip(cases, drawn):
    probs, kept = np.asarray(probs), np.asarray(kept, bool)
    np.testing.assert_array_equal(nucleus(probs, top_p), kept)
    np.testing.assert_array_equal(np.bincount(tokens, minlength=4) > 0, kept)


def test_draws_follow_probabilities_in_both_precisions():
  probs = np.array([0.6, 0.25, 0.1, 0.05])
  assert sampling.resolve_draw_dtype("float64") == jnp.float32  # x64 is off in the tests.
  for dtype in (jnp.float32, jnp.float64):
    with jax.enable_x64(dtype == jnp.float64):
      assert sampling.resolve_draw_dtype(dtype.__name__) == dtype
      draws = token_draws(jax.random.key(5), probs, rows=20000, draw_dtype=dtype)
    stat, df = chi2(np.bincount(draws, minlength=4), probs)
    assert stat < chi2_critical(df)


def test_two_level_race_follows_probabilities(monkeypatch):
  """Past FLAT_RACE_MAX entries the race picks a block by its mass, then an entry: same law."""
  monkeypatch.setattr(draws, "FLAT_RACE_MAX", 8)  # 37 entries race as 6 blocks of 7.
  probs = np.random.default_rng(3).dirichlet(np.full(37, 0.7))
  top_ps = (1.0, 0.8)
  drawn = _token_draws([(jax.random.key(6), probs, top_p) for top_p in top_ps])
  for top_p, tokens in zip(top_ps, drawn):
    kept = nucleus(probs, top_p)
    counts = np.bincount(tokens, minlength=37)
    assert counts[~kept].sum() == 0
    stat, df = chi2(counts, np.where(kept, probs, 0.0) / probs[kept].sum())
    assert stat < chi2_critical(df), (top_p, stat)


def test_a_position_draws_the_same_whatever_it_is_drawn_with():
  """Noise is keyed by row id, so drawing rows 5 and 2 alone (as a step's gathered draw does)
  gives what drawing all rows gives there, top-p rejection rounds included."""
  code = PrimeCode(300, 2)
  logits = jax.random.normal(jax.random.key(0), (2, 4, 300)) * 0.3
  y = jnp.full((2, 4, 2), code.mask_value, jnp.int32).at[1, 1, 0].set(3)
  rows = jnp.array([5, 2])

  @jax.jit  # One program for every draw: compiled once, rather than op by op.
  def draws_(key, logits, y, rows):
    out = {}
    for source in sampling.DIGIT_SOURCES:
      kw = dict(digit_source=source, carry_over=True, top_p=0.3)
      full = sampling.draw_digits(key, code, logits, y, 1.0, **kw)
      part = sampling.draw_digits(key, code, logits.reshape(8, 300)[rows], y.reshape(8, 2)[rows],
                                  1.0, row_ids=rows, **kw)
      out[source] = (full, part)
    return out

  for full, part in draws_(jax.random.key(1), logits, y, rows).values():
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
    stat, df = chi2(counts, expected)
    assert df == 0 or stat < chi2_critical(df), (top_p, stat, df)
