"""Fréchet distance on the penultimate features of a small Fashion-MNIST classifier.

The project trains the classifier itself (`python -m prime_jax.quality train-classifier`), so the
figure works offline: the samples' features against those of the 10,000 test images.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from flax import serialization
import jax
import numpy as np
import optax

from prime_jax.data import embedded
from prime_jax.data import images as image_data
from prime_jax.models import classifier
from prime_jax.quality import frechet

DEFAULT_CLASSIFIER = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
    "prime_jax", "fmnist_classifier.msgpack")
FASHION_MNIST_NAMES = ("fashion_mnist_local", "fashion_mnist")


def fashion_mnist_labels(split: str) -> np.ndarray:
  """Class labels (N,) of fashion_mnist_local's 'train' or 'validation' (= test) split."""
  embedded.fashion_mnist_local(split)  # Checks the split and gives the install hint.
  prefix = "train" if split == "train" else "t10k"
  return image_data.read_idx(os.path.join(embedded.FASHION_MNIST_DIR,
                                          f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int32)


def classifier_accuracy(params: Any, images: np.ndarray, labels: np.ndarray,
                        batch_size: int = 1000) -> float:
  """Top-1 accuracy of the classifier on uint8 images (N, 28, 28, 1)."""
  logits = _classifier_apply(params, images, batch_size, return_features=False)
  return float((logits.argmax(-1) == np.asarray(labels)).mean())


def _fit(model: classifier.ImageClassifier, x: np.ndarray, y: np.ndarray, *, steps: int,
         batch_size: int, lr: float, seed: int, log_every: int) -> Any:
  """Adam with a cosine decay on shuffled minibatches (reshuffled each epoch); host params."""
  params = model.init(jax.random.key(seed), np.zeros((1,) + x.shape[1:], np.uint8))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits = model.apply({"params": p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  order, pos = rng.permutation(len(x)), 0
  for i in range(steps):
    if pos + batch_size > len(order):
      order, pos = rng.permutation(len(x)), 0
    idx = order[pos:pos + batch_size]
    pos += batch_size
    params, opt_state, loss = step(params, opt_state, x[idx], y[idx])
    if log_every and (i + 1) % log_every == 0:
      print(f"[classifier] step {i + 1}/{steps}: loss {float(loss):.4f}", flush=True)
  return jax.device_get(params)


def train_classifier(out: str = DEFAULT_CLASSIFIER, *, steps: int = 1500, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, train_examples: int = 0,
                     eval_examples: int = 0, features: int = 128,
                     log_every: int = 0) -> dict[str, Any]:
  """Trains the Fashion-MNIST classifier on the train split and saves it to `out` (msgpack).

  Accuracy is measured on the test images (the first `eval_examples`; 0 = all 10,000).
  Returns {'path', 'accuracy', 'seconds', 'steps'}; `train_examples` > 0 uses a subset.
  """
  start = time.perf_counter()
  x, y = embedded.fashion_mnist_local("train"), fashion_mnist_labels("train")
  if train_examples:
    x, y = x[:train_examples], y[:train_examples]
  params = _fit(classifier.ImageClassifier(features=features), x, y, steps=steps,
                batch_size=batch_size, lr=lr, seed=seed, log_every=log_every)
  test_x, test_y = embedded.fashion_mnist_local("validation"), fashion_mnist_labels("validation")
  if eval_examples:
    test_x, test_y = test_x[:eval_examples], test_y[:eval_examples]
  accuracy = classifier_accuracy(params, test_x, test_y)
  seconds = time.perf_counter() - start
  meta = {"accuracy": accuracy, "test_examples": len(test_y), "steps": steps,
          "batch_size": batch_size, "train_examples": len(x), "features": features,
          "seconds": seconds}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(serialization.msgpack_serialize({"params": params, "meta": meta}))
  os.replace(tmp, out)
  return {"path": out, **meta}


def load_classifier(path: str) -> tuple[Any, dict[str, Any]]:
  """(params, meta) of a classifier saved by `train_classifier`; a clear error when missing."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"no classifier at {path}: train it once (about two minutes on a CPU) with\n"
        f"  python -m prime_jax.quality train-classifier --out={path}")
  with open(path, "rb") as f:
    tree = serialization.msgpack_restore(f.read())
  return tree["params"], dict(tree["meta"])


@functools.lru_cache(maxsize=4)
def _classifier_fn(width: int, return_features: bool):
  model = classifier.ImageClassifier(features=width)
  return jax.jit(lambda p, x: model.apply({"params": p}, x, return_features=return_features))


def _classifier_apply(params: Any, images: np.ndarray, batch_size: int = 1000, *,
                      return_features: bool = True) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
    raise ValueError(f"the classifier takes images of shape (N, 28, 28, 1), got {images.shape}")
  fn = _classifier_fn(int(params["Dense_0"]["kernel"].shape[-1]), return_features)
  return frechet.in_batches(fn, params, images, batch_size)


def classifier_features(params: Any, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """Penultimate-layer features (N, D) of uint8 images (N, 28, 28, 1)."""
  return _classifier_apply(params, images, batch_size, return_features=True)


def reference_images(levels: int = 256) -> np.ndarray:
  """Fashion-MNIST test images passed through `levels` grey levels, as the samples are."""
  x = embedded.fashion_mnist_local("validation")
  return image_data.to_uint8(image_data.quantise(x, 256, levels), levels)


def reference_statistics(classifier_path: str, levels: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Feature mean and covariance of the 10,000 test images, cached beside the classifier.

  The cache name carries a digest of the classifier file, so retraining never reuses old stats.
  """
  digest = frechet.file_digest(classifier_path)[:16]
  cache = f"{classifier_path}.test_stats_L{levels}_{digest}.npz"

  def compute():
    params, _ = load_classifier(classifier_path)
    return frechet.feature_statistics(classifier_features(params, reference_images(levels)))
  return frechet.cached_statistics(cache, compute)


def fashion_fd(classifier_path: str, images: np.ndarray, levels: int = 256) -> dict[str, Any]:
  """Fréchet distance between uint8 images (N, 28, 28, 1) and the Fashion-MNIST test set.

  Small N biases it upwards (the covariance is estimated from N samples): compare like with like.
  """
  params, meta = load_classifier(classifier_path)
  mu, sigma = frechet.feature_statistics(classifier_features(params, images))
  ref_mu, ref_sigma = reference_statistics(classifier_path, levels)
  return {"fd_fashion_mnist": frechet.frechet_distance(mu, sigma, ref_mu, ref_sigma),
          "fd_num_samples": len(images), "fd_classifier": classifier_path,
          "fd_classifier_accuracy": meta.get("accuracy"),
          "fd_reference": f"Fashion-MNIST test images (10,000) at {levels} levels"}
