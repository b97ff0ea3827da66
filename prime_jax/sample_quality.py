"""Sample-quality figures: generative perplexity, unigram entropy and Fréchet distances.

* Text: generative perplexity of samples under an autoregressive model trained with this project
  (the causal baseline, `load_scorer(workdir)`), with the samples' unigram entropy beside it.
* Images: a Fréchet distance on the penultimate features of a small Fashion-MNIST classifier that
  the project trains itself (`python -m prime_jax.sample_quality train-classifier`), usable offline.
* Images: FID, the Fréchet distance on the pool3 features of the FID Inception network, from the
  PyTorch weights file that pytorch-fid uses (INCEPTION_WEIGHTS_URL; read without torch), against
  a pytorch-fid `.npz` of reference statistics or the dataset's own images.
* `sample_metrics(config, run)` wires these into `--mode=sample`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

DEFAULT_CLASSIFIER = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
    "prime_jax", "fmnist_classifier.msgpack")
FASHION_MNIST_NAMES = ("fashion_mnist_local", "fashion_mnist")
INCEPTION_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                         "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_BATCH = 50  # pytorch-fid's default batch.


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


def _drop_round_off(eigval: np.ndarray) -> np.ndarray:
  """Eigenvalues below the rank tolerance (D·eps·largest) set to 0: for covariances of N < D
  samples their square roots would otherwise add up to visible noise."""
  tol = max(float(eigval.max(initial=0.0)), 0.0) * len(eigval) * np.finfo(np.float64).eps
  return np.where(eigval > tol, eigval, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  eigval, eigvec = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigvec * np.sqrt(_drop_round_off(eigval))) @ eigvec.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
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


# --- Generative perplexity under the project's own autoregressive baseline. ---------------------

@dataclasses.dataclass
class Scorer:
  """An autoregressive model restored from a workdir; `log_prob_fn(tokens (B, L)) -> (B, L)`."""

  log_prob_fn: Callable[[np.ndarray], np.ndarray]
  run: Any
  step: int
  workdir: str


def load_scorer(workdir: str, *, use_ema: bool = True, step: int = -1,
                batch_size: int = 64) -> Scorer:
  """Restores the causal baseline trained in `workdir` (its config.json and checkpoint).

  `log_prob_fn` gives log p(x_i | x_<i) for every position (position 0 is predicted from no
  context); it runs in fixed chunks of `batch_size` rows, padded, so it compiles once.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from prime_jax import config as config_lib, experiment, sharding  # pylint: disable=g-import-not-at-top
  config = config_lib.load_json(workdir)
  if config.diffusion.objective != "autoregressive":
    raise ValueError(
        f"{workdir} holds a model with diffusion.objective={config.diffusion.objective!r}; "
        "scoring samples needs the causal baseline (e.g. configs/shakespeare.py:baseline=ar)")
  run = experiment.build(config)
  found, state = experiment.restore(run, workdir, step)
  params = state.ema_params if use_ema else state.params
  jitted = experiment.make_log_prob_step(run)
  batch = sharding.batch_sharding(run.mesh)
  shards = run.mesh.shape["data"] * run.mesh.shape["fsdp"]
  chunk = -(-batch_size // shards) * shards
  length = run.example_shape[0]

  def log_prob_fn(tokens):
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] != length:
      raise ValueError(f"the scorer takes tokens of shape (N, {length}), got {tokens.shape}")
    out = []
    for start in range(0, len(tokens), chunk):
      part = tokens[start:start + chunk]
      padded = np.zeros((chunk, length), np.int32)
      padded[:len(part)] = part
      array = jax.make_array_from_callback(padded.shape, batch, lambda idx: padded[idx])
      with sharding.activate(run.mesh, run.rules):
        out.append(np.asarray(jitted(params, array))[:len(part)])
    return np.concatenate(out) if out else np.zeros((0, length), np.float32)
  return Scorer(log_prob_fn, run, int(found), workdir)


def check_scorer_fits(scorer_run, run, scorer_workdir: str) -> None:
  """Raises ValueError unless the scorer shares the sampled model's vocabulary and length."""
  problems = []
  mine, theirs = run.task.code.vocab_size, scorer_run.task.code.vocab_size
  if mine != theirs or run.info.tokenizer != scorer_run.info.tokenizer:
    problems.append(f"vocabulary: {theirs} tokens ({scorer_run.info.tokenizer}, dataset "
                    f"{scorer_run.info.name!r}) in the scorer, {mine} tokens "
                    f"({run.info.tokenizer}, dataset {run.info.name!r}) in the sampled model")
  if tuple(scorer_run.example_shape) != tuple(run.example_shape):
    problems.append(f"sequence length: {scorer_run.example_shape[0]} in the scorer, "
                    f"{run.example_shape[0]} in the sampled model")
  if problems:
    raise ValueError(f"config.sample.scorer_workdir={scorer_workdir!r} cannot score these "
                     "samples: " + "; ".join(problems))


def held_out_tokens(run, num: int, split: str = "validation") -> np.ndarray:
  """The first `num` examples of a held-out split of the run's data (fewer if it is shorter)."""
  from prime_jax import data  # pylint: disable=g-import-not-at-top
  loader = data.make_loader(run.config.data, split, batch_size=min(num, 256), shuffle=False,
                            num_epochs=1, drop_remainder=False)
  rows, have = [], 0
  for batch in loader:
    rows.append(np.asarray(batch["tokens"]))
    have += len(rows[-1])
    if have >= num:
      break
  return np.concatenate(rows)[:num]


def text_quality(scorer: Scorer, tokens, reference=None, *, skip_first: bool = True,
                 batch_size: int = 64) -> dict[str, Any]:
  """Generative perplexity and unigram entropy of samples, and of real `reference` data."""
  ppl = generative_perplexity(scorer.log_prob_fn, tokens, batch_size=batch_size,
                              skip_first=skip_first)
  out = {"gen_ppl": ppl["gen_ppl"], "gen_nats_per_token": ppl["nats_per_token"],
         "gen_ppl_num_tokens": ppl["num_tokens"], "unigram_entropy": unigram_entropy(tokens),
         "gen_ppl_skip_first": skip_first, "scorer_workdir": scorer.workdir,
         "scorer_step": scorer.step, "scorer_dataset": scorer.run.info.name}
  if reference is not None and len(reference):
    ref = generative_perplexity(scorer.log_prob_fn, reference, batch_size=batch_size,
                                skip_first=skip_first)
    out.update(reference_gen_ppl=ref["gen_ppl"], reference_unigram_entropy=unigram_entropy(
        reference), reference_num_examples=len(reference))
  return out


# --- Fréchet distance on a Fashion-MNIST classifier's features. ---------------------------------

def fashion_mnist_labels(split: str) -> np.ndarray:
  """Class labels (N,) of fashion_mnist_local's 'train' or 'validation' (= test) split."""
  from prime_jax.data import embedded, images  # pylint: disable=g-import-not-at-top
  embedded.fashion_mnist_local(split)  # Checks the split and gives the install hint.
  prefix = "train" if split == "train" else "t10k"
  return images.read_idx(os.path.join(embedded.FASHION_MNIST_DIR,
                                      f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int32)


def classifier_accuracy(params, images, labels, batch_size: int = 1000) -> float:
  """Top-1 accuracy of the classifier on uint8 images (N, 28, 28, 1)."""
  logits = _classifier_apply(params, images, batch_size, return_features=False)
  return float((logits.argmax(-1) == np.asarray(labels)).mean())


def train_classifier(out: str = DEFAULT_CLASSIFIER, *, steps: int = 1500, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, train_examples: int = 0,
                     eval_examples: int = 0, features: int = 128,
                     log_every: int = 0) -> dict[str, Any]:
  """Trains the Fashion-MNIST classifier on the train split and saves it to `out` (msgpack).

  Accuracy is measured on the test images (the first `eval_examples`; 0 = all 10,000).
  Returns {'path', 'accuracy', 'seconds', 'steps'}; `train_examples` > 0 uses a subset.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from prime_jax.data import embedded  # pylint: disable=g-import-not-at-top
  from prime_jax.models import classifier  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  x, y = embedded.fashion_mnist_local("train"), fashion_mnist_labels("train")
  if train_examples:
    x, y = x[:train_examples], y[:train_examples]
  model = classifier.ImageClassifier(features=features)
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
  params = jax.device_get(params)
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
  from flax import serialization  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"no classifier at {path}: train it once (about two minutes on a CPU) with\n"
        f"  python -m prime_jax.sample_quality train-classifier --out={path}")
  with open(path, "rb") as f:
    tree = serialization.msgpack_restore(f.read())
  return tree["params"], dict(tree["meta"])


@functools.lru_cache(maxsize=4)
def _classifier_fn(width: int, return_features: bool):
  import jax  # pylint: disable=g-import-not-at-top
  from prime_jax.models import classifier  # pylint: disable=g-import-not-at-top
  model = classifier.ImageClassifier(features=width)
  return jax.jit(lambda p, x: model.apply({"params": p}, x, return_features=return_features))


def _classifier_apply(params, images, batch_size: int = 1000, *, return_features: bool = True):
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
    raise ValueError(f"the classifier takes images of shape (N, 28, 28, 1), got {images.shape}")
  fn = _classifier_fn(int(params["Dense_0"]["kernel"].shape[-1]), return_features)
  return _in_batches(fn, params, images, batch_size)


def _in_batches(fn, params, images: np.ndarray, batch_size: int) -> np.ndarray:
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


def classifier_features(params, images, batch_size: int = 1000) -> np.ndarray:
  """Penultimate-layer features (N, D) of uint8 images (N, 28, 28, 1)."""
  return _classifier_apply(params, images, batch_size, return_features=True)


def reference_images(levels: int = 256) -> np.ndarray:
  """Fashion-MNIST test images passed through `levels` grey levels, as the samples are."""
  from prime_jax.data import embedded, images  # pylint: disable=g-import-not-at-top
  x = embedded.fashion_mnist_local("validation")
  return images.to_uint8(images.quantise(x, 256, levels), levels)


def reference_statistics(classifier_path: str, levels: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Feature mean and covariance of the 10,000 test images, cached beside the classifier.

  The cache name carries a digest of the classifier file, so retraining never reuses old stats.
  """
  cache = f"{classifier_path}.test_stats_L{levels}_{_file_digest(classifier_path)[:16]}.npz"

  def compute():
    params, _ = load_classifier(classifier_path)
    return feature_statistics(classifier_features(params, reference_images(levels)))
  return _cached_statistics(cache, compute)


def _cached_statistics(cache: str, compute: Callable[[], tuple[np.ndarray, np.ndarray]]
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


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def fashion_fd(classifier_path: str, images, levels: int = 256) -> dict[str, Any]:
  """Fréchet distance between uint8 images (N, 28, 28, 1) and the Fashion-MNIST test set.

  Small N biases it upwards (the covariance is estimated from N samples): compare like with like.
  """
  params, meta = load_classifier(classifier_path)
  mu, sigma = feature_statistics(classifier_features(params, images))
  ref_mu, ref_sigma = reference_statistics(classifier_path, levels)
  return {"fd_fashion_mnist": frechet_distance(mu, sigma, ref_mu, ref_sigma),
          "fd_num_samples": len(images), "fd_classifier": classifier_path,
          "fd_classifier_accuracy": meta.get("accuracy"),
          "fd_reference": f"Fashion-MNIST test images (10,000) at {levels} levels"}


# --- FID: the Fréchet distance on the FID Inception network's pool3 features. -------------------

def _missing_weights(path: str, field: str = "the Inception weights") -> FileNotFoundError:
  return FileNotFoundError(
      f"{field}: {path} does not exist; download pytorch-fid's FID Inception weights (sha256 "
      f"{INCEPTION_SHA256_PREFIX}...) once, on a machine with internet:\n  {INCEPTION_WEIGHTS_URL}")


@functools.lru_cache(maxsize=2)
def _inception_variables(path: str, mtime_ns: int, size: int):
  del mtime_ns, size  # Cache keys: a rewritten file is read again.
  import jax  # pylint: disable=g-import-not-at-top
  from prime_jax import torch_state  # pylint: disable=g-import-not-at-top
  from prime_jax.models import inception  # pylint: disable=g-import-not-at-top
  variables = inception.variables_from_torch(torch_state.load_state_dict(path), source=path)
  return jax.device_put(variables)


def load_inception(path: str):
  """The Flax variables of the FID Inception from pytorch-fid's weights file (cached per file).

  A missing file names the download; an unreadable or different file raises ValueError.
  """
  if not os.path.isfile(path):
    raise _missing_weights(path)
  stat = os.stat(path)
  return _inception_variables(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _inception_fn():
  import jax  # pylint: disable=g-import-not-at-top
  from prime_jax.models import inception  # pylint: disable=g-import-not-at-top
  model = inception.InceptionV3()
  return jax.jit(lambda v, x: model.apply(v, x.astype("float32") / 255.0))


def inception_features(weights_path: str, images_uint8,
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
  return _in_batches(_inception_fn(), variables, images, batch_size)


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


def dataset_images(data_config, split: str, num: int = 0, batch_size: int = 256) -> np.ndarray:
  """uint8 images (N, H, W, C) of a split of an image dataset (the first `num`; 0 = all), at the
  config's image_levels, as the project's loader serves them."""
  from prime_jax import data  # pylint: disable=g-import-not-at-top
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
    weights_path: str, data_config, split: str = "train", num: int = 0,
    batch_size: int = INCEPTION_BATCH) -> tuple[np.ndarray, np.ndarray]:
  """Inception feature mean and covariance of a split's images, cached beside the weights.

  The cache (a pytorch-fid style .npz) is named after the dataset, split, levels, count and a
  digest of the weights file, so other weights never reuse it.
  """
  from prime_jax import data  # pylint: disable=g-import-not-at-top
  info = data.dataset_info(data_config)
  levels = info.vocab_size
  digest = _file_digest(weights_path)[:16]
  cache = f"{weights_path}.{info.name}_{split}_L{levels}_N{num or 'all'}_{digest}.npz"
  return _cached_statistics(cache, lambda: feature_statistics(inception_features(
      weights_path, dataset_images(data_config, split, num), batch_size)))


def fid(weights_path: str, images_uint8, reference: tuple[np.ndarray, np.ndarray],
        batch_size: int = INCEPTION_BATCH) -> float:
  """FID of uint8 images (N, H, W, C) against reference (mu, sigma) of pool3 features.

  Like any Fréchet distance it is biased upwards for small N: compare figures of equal N.
  """
  mu, sigma = feature_statistics(inception_features(weights_path, images_uint8, batch_size))
  return frechet_distance(mu, sigma, *reference)


# --- --mode=sample wiring. -----------------------------------------------------------------------

def sample_metrics(config, run) -> Optional[Callable[[np.ndarray], dict[str, Any]]]:
  """What config.sample asks to measure on samples of `run`: fn(tokens) -> figures, or None.

  Loads and checks the scorer, the classifier and the Inception weights (with FID's reference
  statistics) up front, so a bad setting fails before sampling.
  """
  s = config.sample
  parts = []
  if s.get("scorer_workdir", ""):
    if run.info.kind != "text":
      raise ValueError(f"config.sample.scorer_workdir is set but dataset {run.info.name!r} is "
                       f"{run.info.kind}: generative perplexity is for text samples")
    scorer = load_scorer(s.scorer_workdir, batch_size=s.batch_size)
    check_scorer_fits(scorer.run, run, s.scorer_workdir)
    reference = held_out_tokens(run, s.num_samples)
    parts.append(lambda tokens: text_quality(scorer, tokens, reference,
                                             batch_size=s.batch_size))
  if s.get("fd_classifier", ""):
    if run.info.name not in FASHION_MNIST_NAMES or tuple(run.example_shape) != (28, 28, 1):
      raise ValueError(f"config.sample.fd_classifier is set but dataset {run.info.name!r} is not "
                       f"Fashion-MNIST (one of {FASHION_MNIST_NAMES}): the classifier's "
                       "reference statistics are of Fashion-MNIST test images")
    levels = int(config.data.image_levels)
    load_classifier(s.fd_classifier)
    reference_statistics(s.fd_classifier, levels)
    parts.append(lambda tokens: fashion_fd(
        s.fd_classifier, np.stack([run.info.decode(x) for x in tokens]), levels))
  if s.get("inception_weights", ""):
    parts.append(_fid_metric(s, run))
  if not parts:
    return None
  return lambda tokens: {k: v for part in parts for k, v in part(tokens).items()}


def _fid_metric(s, run) -> Callable[[np.ndarray], dict[str, Any]]:
  """Checks config.sample's Inception settings and gets the reference statistics up front."""
  weights = s.inception_weights
  field = f"config.sample.inception_weights={weights!r}"
  if run.info.kind != "image":
    raise ValueError(f"config.sample.inception_weights is set but dataset {run.info.name!r} is "
                     f"{run.info.kind}: FID is for image samples")
  if not os.path.isfile(weights):
    raise _missing_weights(weights, field)
  try:
    load_inception(weights)
  except (OSError, ValueError) as e:
    raise ValueError(f"{field} cannot be used: {e}") from e
  ref = s.get("inception_reference", "train")
  if ref.endswith(".npz"):
    reference = load_fid_statistics(ref, f"config.sample.inception_reference={ref!r}")
    described = ref
  elif ref in run.info.splits:
    num = int(s.get("inception_reference_examples", 0))
    reference = inception_reference_statistics(weights, run.config.data, ref, num,
                                               INCEPTION_BATCH)
    described = (f"{run.info.name} {ref} split ({num or 'all'} images) at "
                 f"{run.info.vocab_size} levels")
  else:
    raise ValueError(f"config.sample.inception_reference={ref!r} is invalid: expected a .npz of "
                     f"pytorch-fid statistics (mu, sigma) or a split of {run.info.name!r}, one "
                     f"of {run.info.splits}")

  def measure(tokens):
    images = run.info.decode(np.asarray(tokens))
    return {"fid": fid(weights, images, reference, INCEPTION_BATCH),
            "fid_num_samples": len(images), "fid_weights": weights, "fid_reference": described}
  return measure


def main(argv: Optional[list[str]] = None) -> int:
  """CLI: `train-classifier [--out PATH]`, `fd --samples tokens.npy [--levels N]` and
  `fid --samples tokens.npy --weights FILE [--reference stats.npz | --dataset NAME]`."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m prime_jax.sample_quality",
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  tr = sub.add_parser("train-classifier", help="train the Fashion-MNIST feature classifier")
  tr.add_argument("--out", default=DEFAULT_CLASSIFIER, help=f"default: {DEFAULT_CLASSIFIER}")
  tr.add_argument("--steps", type=int, default=1500)
  tr.add_argument("--batch_size", type=int, default=128)
  tr.add_argument("--seed", type=int, default=0)
  fd = sub.add_parser("fd", help="Fréchet distance of saved samples (tokens.npy) to the test set")
  fd.add_argument("--samples", required=True, help="tokens.npy written by --mode=sample")
  fd.add_argument("--levels", type=int, default=256, help="config.data.image_levels")
  fd.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
  fi = sub.add_parser("fid", help="FID of saved samples (tokens.npy) with Inception features")
  fi.add_argument("--samples", required=True, help="tokens.npy written by --mode=sample")
  fi.add_argument("--weights", required=True,
                  help=f"pt_inception-2015-12-05-{INCEPTION_SHA256_PREFIX}.pth from "
                       f"{INCEPTION_WEIGHTS_URL}")
  fi.add_argument("--reference", default="",
                  help="a pytorch-fid .npz with mu and sigma; else --dataset's images")
  fi.add_argument("--dataset", default="", help="image dataset whose images give the reference")
  fi.add_argument("--split", default="train", help="its split (default: train)")
  fi.add_argument("--reference_examples", type=int, default=0, help="0 = the whole split")
  fi.add_argument("--levels", type=int, default=256, help="config.data.image_levels")
  fi.add_argument("--batch_size", type=int, default=INCEPTION_BATCH)
  args = parser.parse_args(argv)
  if args.command == "fid":
    return _fid_command(args)
  if args.command == "train-classifier":
    r = train_classifier(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                         log_every=max(args.steps // 10, 1))
    print(f"[classifier] test accuracy {r['accuracy']:.4f} after {r['steps']} steps "
          f"({r['seconds']:.0f} s) -> {r['path']}")
    return 0
  from prime_jax.data import images  # pylint: disable=g-import-not-at-top
  tokens = np.load(args.samples)
  r = fashion_fd(args.classifier, images.to_uint8(tokens, args.levels), args.levels)
  print(json.dumps(r, indent=1))
  return 0


def _fid_command(args) -> int:
  from prime_jax import data  # pylint: disable=g-import-not-at-top
  from prime_jax.data import images  # pylint: disable=g-import-not-at-top
  if bool(args.reference) == bool(args.dataset):
    raise SystemExit("fid: give exactly one of --reference stats.npz and --dataset NAME")
  load_inception(args.weights)
  if args.reference:
    reference = load_fid_statistics(args.reference, "--reference")
    described = args.reference
  else:
    config = data.default_config(args.dataset, image_levels=args.levels)
    reference = inception_reference_statistics(args.weights, config, args.split,
                                               args.reference_examples, args.batch_size)
    described = (f"{args.dataset} {args.split} split ({args.reference_examples or 'all'} images) "
                 f"at {args.levels} levels")
  samples = images.to_uint8(np.load(args.samples), args.levels)
  if samples.ndim == 3:
    samples = samples[..., None]
  r = {"fid": fid(args.weights, samples, reference, args.batch_size),
       "fid_num_samples": len(samples), "fid_weights": args.weights, "fid_reference": described}
  print(json.dumps(r, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
