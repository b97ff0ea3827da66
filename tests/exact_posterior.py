"""Exact posteriors of tiny sequence distributions, by enumeration (a test helper).

A distribution over all C**L sequences is a vector `probs` indexed by the sequence's base-C number
(position 0 most significant). Given sub-tokens y (..., L, ℓ), the exact posterior of every token
is proportional to the mass of sequences consistent with the visible digits; with independent
masking it does not depend on t.
"""

from __future__ import annotations

import itertools

import numpy as np

from prime_jax.subtokens import PrimeCode


def all_sequences(vocab_size: int, seq_len: int) -> np.ndarray:
  """(C**L, L) every sequence, in the order `probs` is indexed."""
  return np.array(list(itertools.product(range(vocab_size), repeat=seq_len)), np.int32)


def all_mask_patterns(num_subtokens: int) -> np.ndarray:
  """(2**n, n) bool: every subset of masked sub-tokens."""
  return np.array(list(itertools.product([False, True], repeat=num_subtokens)), bool)


def exact_posterior(code: PrimeCode, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
  """y (N, L, ℓ) -> (N, L, C) p(x0^i = v | y) under the enumerated data distribution."""
  n, seq_len, ell = y.shape
  seqs = all_sequences(code.vocab_size, seq_len)  # (S, L)
  digits = code.encode(seqs)  # (S, L, ℓ)
  visible = y != code.mask_value  # (N, L, ℓ)
  agree = (digits[None] == y[:, None]) | ~visible[:, None]  # (N, S, L, ℓ)
  consistent = agree.all(axis=(2, 3))  # (N, S)
  mass = consistent * probs[None]  # (N, S)
  post = np.zeros((n, seq_len, code.vocab_size))
  for i in range(seq_len):
    onehot = np.eye(code.vocab_size)[seqs[:, i]]  # (S, C)
    post[:, i] = mass @ onehot
  # Rows for y that no sequence in the support explains stay zero (callers drop them).
  return post / np.maximum(post.sum(-1, keepdims=True), 1e-300)


def entropy(probs: np.ndarray) -> float:
  p = probs[probs > 0]
  return float(-(p * np.log(p)).sum())


def noised_batch(code: PrimeCode, seq_len: int):
  """Every (sequence, mask pattern) pair: x0 (N, L), y (N, L, ℓ), and each pair's masked count."""
  seqs = all_sequences(code.vocab_size, seq_len)
  masks = all_mask_patterns(seq_len * code.ell).reshape(-1, seq_len, code.ell)
  x0 = np.repeat(seqs, len(masks), axis=0)
  m = np.tile(masks, (len(seqs), 1, 1))
  y = np.where(m, code.mask_value, code.encode(x0)).astype(np.int32)
  return x0, y, m.reshape(len(x0), -1).sum(-1), np.repeat(np.arange(len(seqs)), len(masks))
