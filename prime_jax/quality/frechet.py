"""The Fréchet distance of two Gaussians fitted to features, and the plumbing its users share.

`feature_statistics` fits (mean, covariance); `frechet_distance` compares two fits;
`in_batches` runs a jitted feature function over images in batches of one shape; and
`cached_statistics` keeps reference statistics in a pytorch-fid style .npz.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(N, D) features -> mean (D,) and unbiased covariance (D, D), in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"features must have shape (N >= 2, D), got {features.shape}")
  return features.mean(0), np.cov(features, rowvar=False)


def _drop_round_off(eigval: np.ndarray) -> np.ndarray:
  """Eigenvalues below the rank tolerance (D·eps·largest) set to 0: for covariances of N < D
  samples their square roots would otherwise add up to visible noise."""
  tol = max(float(eigval.max(initial=0.0)), 0.0) * len(eigval) * np.finfo(np.float64).eps
  return np.where(eigval > tol, eigval, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  eigval, eigvec = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigvec * np.sqrt(_drop_round_off(eigval))) @ eigvec.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||μ1 - μ2||² + tr(Σ1 + Σ2 - 2 (Σ1^½ Σ2 Σ1^½)^½): the Fréchet distance of two Gaussians.

  tr((Σ1 Σ2)^½) is taken through the symmetric form, so only symmetric eigen-solves are needed;
  eigenvalues within round-off of zero count as zero, so identical statistics give 0.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1 = np.atleast_2d(sigma1).astype(np.float64)
  sigma2 = np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"mismatched shapes: {mu1.shape}, {mu2.shape}, {sigma1.shape}, {sigma2.shape}")
  root1 = _psd_sqrt(sigma1)
  middle = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
  trace_sqrt = np.sqrt(_drop_round_off(middle)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def in_batches(fn: Callable[[Any, np.ndarray], Any], params: Any, images: np.ndarray,
               batch_size: int) -> np.ndarray:
  """fn(params, batch) over `images` (at least one) in batches of one shape, the last padded, so
  a jitted fn compiles once."""
  batch_size = max(1, min(batch_size, len(images)))
  out = []
  for start in range(0, len(images), batch_size):
    part = images[start:start + batch_size]
    padded = np.zeros((batch_size,) + images.shape[1:], images.dtype)
    padded[:len(part)] = part
    out.append(np.asarray(fn(params, padded))[:len(part)])
  return np.concatenate(out)


def cached_statistics(cache: str, compute: Callable[[], tuple[np.ndarray, np.ndarray]]
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) read from the .npz `cache`, or computed and written there atomically."""
  if os.path.isfile(cache):
    with np.load(cache) as z:
      return z["mu"], z["sigma"]
  mu, sigma = compute()
  tmp = cache + ".tmp.npz"
  np.savez(tmp, mu=mu, sigma=sigma)
  os.replace(tmp, cache)
  return mu, sigma


def file_digest(path: str) -> str:
  """sha256 hex digest of a file, read in 4 MiB blocks; names caches after what made them."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()
