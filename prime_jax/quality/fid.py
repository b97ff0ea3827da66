"""FID: the Fréchet distance on the pool3 features of the FID Inception network.

The weights are the PyTorch file that pytorch-fid uses (INCEPTION_WEIGHTS_URL), read without
torch; the reference is a pytorch-fid `.npz` of statistics or a split of the dataset's own images.
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections
import numpy as np

from prime_jax import data, torch_state
from prime_jax.models import inception
from prime_jax.quality import frechet

INCEPTION_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                         "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_BATCH = 50  # pytorch-fid's default batch.


def missing_weights(path: str, field: str = "the Inception weights") -> FileNotFoundError:
  """The error for a weights file that is not there: it names `field` and the download."""
  return FileNotFoundError(
      f"{field}: {path} does not exist; download pytorch-fid's FID Inception weights (sha256 "
      f"{INCEPTION_SHA256_PREFIX}...) once, on a machine with internet:\n  {INCEPTION_WEIGHTS_URL}")


@functools.lru_cache(maxsize=2)
def _inception_variables(path: str, mtime_ns: int, size: int) -> dict:
  del mtime_ns, size  # Cache keys: a rewritten file is read again.
  variables = inception.variables_from_torch(torch_state.load_state_dict(path), source=path)
  return jax.device_put(variables)


def load_inception(path: str) -> dict:
  """The Flax variables of the FID Inception from pytorch-fid's weights file (cached per file).

  A missing file names the download; an unreadable or different file raises ValueError.
  """
  if not os.path.isfile(path):
    raise missing_weights(path)
  stat = os.stat(path)
  return _inception_variables(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _inception_fn():
  model = inception.InceptionV3()
  return jax.jit(lambda v, x: model.apply(v, x.astype("float32") / 255.0))


def inception_features(weights_path: str, images_uint8: np.ndarray,
                       batch_size: int = INCEPTION_BATCH) -> np.ndarray:
  """pool3 features (N, 2048) of uint8 images (N, H, W, 1 or 3), as pytorch-fid computes them.

  Grey images are repeated to three channels. Batches are padded to `batch_size`, so each image
  size compiles once.
  """
  variables = load_inception(weights_path)
  images = np.asarray(images_uint8)
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
    raise ValueError("Inception features take uint8 images of shape (N, H, W, 1 or 3), got "
                     f"{images.dtype} {images.shape}")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if not len(images):
    return np.zeros((0, 2048), np.float32)
  return frechet.in_batches(_inception_fn(), variables, images, batch_size)


def load_fid_statistics(path: str,
                        field: str = "reference statistics") -> tuple[np.ndarray, np.ndarray]:
  """mu (2048,) and sigma (2048, 2048) from a pytorch-fid style .npz; errors name `field`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{field}: {path} does not exist")
  try:
    with np.load(path) as z:
      stats = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"{field}: {path} is not a readable .npz file ({e})") from e
  if "mu" not in stats or "sigma" not in stats:
    raise ValueError(f"{field}: {path} holds {sorted(stats)}; expected arrays 'mu' (2048,) and "
                     "'sigma' (2048, 2048), as pytorch-fid saves them")
  mu, sigma = np.asarray(stats["mu"], np.float64), np.asarray(stats["sigma"], np.float64)
  if mu.shape != (2048,) or sigma.shape != (2048, 2048):
    raise ValueError(f"{field}: {path} has mu {mu.shape} and sigma {sigma.shape}; expected "
                     "(2048,) and (2048, 2048), the pool3 features' mean and covariance")
  return mu, sigma


def dataset_images(data_config: ml_collections.ConfigDict, split: str, num: int = 0,
                   batch_size: int = 256) -> np.ndarray:
  """uint8 images (N, H, W, C) of a split of an image dataset (the first `num`; 0 = all), at the
  config's image_levels, as the project's loader serves them."""
  info = data.dataset_info(data_config)
  if info.kind != "image":
    raise ValueError(f"dataset {info.name!r} is {info.kind}, not images")
  loader = data.make_loader(data_config, split, batch_size=min(batch_size, num or batch_size),
                            shuffle=False, num_epochs=1, drop_remainder=False)
  rows, have = [], 0
  for batch in loader:
    rows.append(info.decode(np.asarray(batch["tokens"])))
    have += len(rows[-1])
    if num and have >= num:
      break
  images = np.concatenate(rows)
  return images[:num] if num else images


def inception_reference_statistics(
    weights_path: str, data_config: ml_collections.ConfigDict, split: str = "train", num: int = 0,
    batch_size: int = INCEPTION_BATCH) -> tuple[np.ndarray, np.ndarray]:
  """Inception feature mean and covariance of a split's images, cached beside the weights.

  The cache (a pytorch-fid style .npz) is named after the dataset, split, levels, count and a
  digest of the weights file, so other weights never reuse it.
  """
  info = data.dataset_info(data_config)
  levels = info.vocab_size
  digest = frechet.file_digest(weights_path)[:16]
  cache = f"{weights_path}.{info.name}_{split}_L{levels}_N{num or 'all'}_{digest}.npz"
  return frechet.cached_statistics(cache, lambda: frechet.feature_statistics(inception_features(
      weights_path, dataset_images(data_config, split, num), batch_size)))


def fid(weights_path: str, images_uint8: np.ndarray, reference: tuple[np.ndarray, np.ndarray],
        batch_size: int = INCEPTION_BATCH) -> float:
  """FID of uint8 images (N, H, W, C) against reference (mu, sigma) of pool3 features.

  Like any Fréchet distance it is biased upwards for small N: compare figures of equal N.
  """
  mu, sigma = frechet.feature_statistics(inception_features(weights_path, images_uint8,
                                                            batch_size))
  return frechet.frechet_distance(mu, sigma, *reference)
