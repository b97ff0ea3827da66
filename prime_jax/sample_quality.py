"""Sample-quality figures that need no particular network: generative perplexity under a given
autoregressive model, the samples' unigram entropy, and the Fréchet distance of two feature sets.

FID proper (Inception features) and the Fréchet distance on a Fashion-MNIST classifier's features
only need a feature extractor in front of `feature_statistics`/`frechet_distance`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


def generative_perplexity(log_prob_fn: Callable[[np.ndarray], np.ndarray], tokens,
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


def unigram_entropy(tokens) -> float:
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


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(N, D) features -> mean (D,) and unbiased covariance (D, D), in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"features must have shape (N >= 2, D), got {features.shape}")
  return features.mean(0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  eigval, eigvec = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||μ1 - μ2||² + tr(Σ1 + Σ2 - 2 (Σ1^½ Σ2 Σ1^½)^½): the Fréchet distance of two Gaussians.

  tr((Σ1 Σ2)^½) is taken through the symmetric form, so only symmetric eigen-solves are needed.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1 = np.atleast_2d(sigma1).astype(np.float64)
  sigma2 = np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"mismatched shapes: {mu1.shape}, {mu2.shape}, {sigma1.shape}, {sigma2.shape}")
  root1 = _psd_sqrt(sigma1)
  middle = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
  trace_sqrt = np.sqrt(np.clip(middle, 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
