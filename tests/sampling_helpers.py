"""Shared pieces of the sampler tests: tiny distributions, exact and stand-in denoisers,
a jitted sampler run, chi-square checks and single-position draws.

Chi-square tests use the 0.999 quantile (Wilson-Hilferty approximation), so a correct sampler
fails one of them about once in a thousand runs; every key is fixed, so the outcome is
reproducible.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from exact_posterior import exact_posterior
from prime_jax import sampling, schedules
from prime_jax.subtokens import PrimeCode

LINEAR = schedules.LogLinear(eps=0.0)


def chi2_critical(df: int, z: float = 3.09) -> float:
  """Upper 0.999 quantile of χ²(df) by the Wilson-Hilferty cube approximation."""
  c = 2.0 / (9.0 * df)
  return df * (1.0 - c + z * np.sqrt(c)) ** 3


def chi2(counts, probs):
  """(Pearson statistic, degrees of freedom) of counts against probs over probs' support."""
  support = probs > 0
  expected = counts.sum() * probs[support]
  stat = float((((counts[support] - expected) ** 2) / expected).sum())
  return stat, int(support.sum()) - 1


def distribution(seed, size, zeros=0):
  """A random distribution over `size` outcomes, bounded away from 0 but for `zeros` of them."""
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


def run_sample(key, fn, code, shape, config, time_agnostic=True, **kw):
  """One jitted `sampling.sample` run under the linear schedule."""
  run = jax.jit(lambda k: sampling.sample(k, fn, code, LINEAR, shape, config,
                                          time_agnostic=time_agnostic, **kw))
  return run(key)


def sequence_counts(tokens, vocab_size):
  """(C^L,) how often each whole sequence occurs among the rows of tokens (N, L)."""
  seq_len = tokens.shape[1]
  index = (np.asarray(tokens) * vocab_size ** np.arange(seq_len)[::-1]).sum(-1)
  return np.bincount(index, minlength=vocab_size**seq_len)


def token_draws(key, probs, top_p=1.0, rows=40000, draw_dtype=jnp.float32):
  """Tokens from `draw_digits` with ℓ = 1 (a digit is a token), `rows` draws of `probs`."""
  probs = np.asarray(probs)
  code = PrimeCode(probs.shape[-1], 1)
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (rows, probs.shape[-1]))
  y = jnp.full((rows, 1), code.mask_value, jnp.int32)
  digits = sampling.draw_digits(key, code, logits, y, 1.0, digit_source="joint",
                                carry_over=True, top_p=top_p, draw_dtype=draw_dtype)
  return np.asarray(digits[..., 0])


def nucleus(probs, top_p):
  """The sorted reference: the most probable entries whose mass first reaches top_p, and every
  entry tied with the last of them."""
  order = np.argsort(-probs, kind="stable")
  size = int((np.cumsum(probs[order]) < top_p).sum()) + 1
  return probs >= probs[order[size - 1]]
