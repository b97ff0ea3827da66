"""Text sample figures: generative perplexity under an autoregressive model, unigram entropy.

Pure maths on token arrays and a `log_prob_fn`; restoring the scoring model from a workdir is
`prime_jax.sample_quality.load_scorer`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


def generative_perplexity(log_prob_fn: Callable[[np.ndarray], np.ndarray], tokens: np.ndarray,
                          *, batch_size: int = 64, skip_first: bool = True) -> dict[str, float]:
  """exp of the mean NLL of samples under an autoregressive model.

  `log_prob_fn(tokens (B, L)) -> (B, L)` gives log p(x_i | x_<i); the first column has no context
  and is left out when `skip_first`. Every remaining token counts equally.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must have shape (N, L), got {tokens.shape}")
  total, count = 0.0, 0
  for start in range(0, len(tokens), batch_size):
    logp = np.asarray(log_prob_fn(tokens[start:start + batch_size]), np.float64)
    if skip_first:
      logp = logp[:, 1:]
    total -= logp.sum()
    count += logp.size
  nats = total / count
  return {"gen_ppl": math.exp(nats), "nats_per_token": nats, "num_tokens": count}


def unigram_entropy(tokens: np.ndarray) -> float:
  """Mean over samples of the entropy (nats) of each sample's token histogram; low values flag
  repetitive samples that a low generative perplexity can hide."""
  tokens = np.asarray(tokens)
  tokens = tokens.reshape(tokens.shape[0], -1)
  values = []
  for row in tokens:
    _, counts = np.unique(row, return_counts=True)
    p = counts / counts.sum()
    values.append(float(-(p * np.log(p)).sum()))
  return float(np.mean(values))
