"""prime_jax.quality without a training run: text figures, Fréchet maths, the batching and caching
the feature networks share, the Fashion-MNIST classifier's features, and the CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from prime_jax.data import embedded, images
from prime_jax.quality import fashion_mnist, frechet, text
from prime_jax.quality.__main__ import main

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def test_quality_imports_no_run_or_config_code():
  """The package stays below the run wiring: importing all of it loads none of these modules."""
  wiring = ["prime_jax.experiment", "prime_jax.train", "prime_jax.evaluate", "prime_jax.sample",
            "prime_jax.step", "prime_jax.sample_quality", "prime_jax.config"]
  code = ("import sys\nimport prime_jax.quality.__main__, prime_jax.quality.fashion_mnist\n"
          "import prime_jax.quality.fid, prime_jax.quality.frechet, prime_jax.quality.text\n"
          f"print([m for m in {wiring!r} if m in sys.modules])")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True)
  assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_generative_perplexity_counts_every_token_but_the_first():
  """log p = -(column + 1): with the first column left out the mean NLL is the mean of 2..L."""
  tokens = np.zeros((7, 4), np.int32)
  fn = lambda t: -np.broadcast_to(np.arange(1.0, 5.0), t.shape)
  got = text.generative_perplexity(fn, tokens, batch_size=3)
  assert got["num_tokens"] == 7 * 3 and got["nats_per_token"] == pytest.approx(3.0)
  assert got["gen_ppl"] == pytest.approx(math.exp(3.0))
  whole = text.generative_perplexity(fn, tokens, batch_size=3, skip_first=False)
  assert whole["num_tokens"] == 28 and whole["nats_per_token"] == pytest.approx(2.5)
  with pytest.raises(ValueError, match=r"tokens must have shape \(N, L\), got \(4,\)"):
    text.generative_perplexity(fn, np.zeros(4))


def test_unigram_entropy_is_the_mean_over_samples():
  rows = [[0, 0, 0, 0], [0, 1, 2, 3]]  # Entropies 0 and log 4.
  assert text.unigram_entropy(rows) == pytest.approx(math.log(4) / 2)
  assert text.unigram_entropy(np.zeros((2, 2, 2), int)) == 0.0  # Images: (N, H, W).


def test_frechet_distance_of_one_dimensional_gaussians():
  """(μ1-μ2)² + (σ1-σ2)² in one dimension; low-rank covariances give exact zeros."""
  assert frechet.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
  low_rank = np.outer([1.0, 2.0, 0.0], [1.0, 2.0, 0.0])
  assert frechet.frechet_distance(np.zeros(3), low_rank, np.zeros(3), low_rank) == 0.0
  # 5 samples in 64 dimensions: without dropping round-off eigenvalues this gives ~-1e-5.
  mu, sigma = frechet.feature_statistics(np.random.default_rng(0).normal(size=(5, 64)))
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-12 * np.trace(sigma)
  with pytest.raises(ValueError, match=r"mismatched shapes: \(2,\), \(3,\)"):
    frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match=r"features must have shape \(N >= 2, D\), got \(1, 3\)"):
    frechet.feature_statistics(np.zeros((1, 3)))


def test_in_batches_pads_the_last_batch_to_one_shape():
  shapes = []

  def fn(params, batch):
    shapes.append(batch.shape)
    return batch.sum(axis=(1, 2)) + params
  x = np.arange(7 * 2 * 2).reshape(7, 2, 2)
  got = frechet.in_batches(fn, 100, x, batch_size=3)
  np.testing.assert_array_equal(got, x.sum(axis=(1, 2)) + 100)
  assert shapes == [(3, 2, 2)] * 3
  shapes.clear()
  frechet.in_batches(fn, 0, x[:2], batch_size=50)  # Never a batch larger than the input.
  assert shapes == [(2, 2, 2)]


def test_cached_statistics_computes_once_and_digest_names_the_content(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return np.arange(3.0), np.eye(3)
  cache = str(tmp_path / "stats.npz")
  first = frechet.cached_statistics(cache, compute)
  second = frechet.cached_statistics(cache, compute)
  assert len(calls) == 1 and os.listdir(tmp_path) == ["stats.npz"]
  np.testing.assert_array_equal(first[0], second[0])
  np.testing.assert_array_equal(first[1], second[1])
  (tmp_path / "a").write_bytes(b"abc")
  assert frechet.file_digest(str(tmp_path / "a")) == (
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")  # sha256("abc").


def test_classifier_features_separate_real_images_from_noise(classifier_path):
  params, meta = fashion_mnist.load_classifier(classifier_path)
  assert meta["steps"] == 150 and meta["features"] == 32
  real = fashion_mnist.reference_images()
  first, second = real[:1000], real[1000:2000]
  noise = np.random.default_rng(0).integers(0, 256, first.shape).astype(np.uint8)
  stats = lambda x: frechet.feature_statistics(fashion_mnist.classifier_features(params, x))
  fd_real = frechet.frechet_distance(*stats(first), *stats(second))
  fd_noise = frechet.frechet_distance(*stats(first), *stats(noise))
  mu, sigma = stats(first)
  scale = 2 * np.trace(sigma)  # Rounding is relative to the traces that cancel.
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * scale
  print(f'FD real/real {fd_real:.4f}, real/noise {fd_noise:.4f}')
  assert 0 < fd_real < fd_noise / 20, (fd_real, fd_noise)
  # Features do not depend on how the images are batched.
  np.testing.assert_allclose(fashion_mnist.classifier_features(params, first[:7], batch_size=3),
                             fashion_mnist.classifier_features(params, first[:7]), atol=1e-5)
  with pytest.raises(ValueError, match=r"images of shape \(N, 28, 28, 1\), got \(2, 28, 28\)"):
    fashion_mnist.classifier_features(params, first[:2, :, :, 0])


def test_fd_command_on_saved_tokens(classifier_path, tmp_path, capsys):
  """`fd` on test images saved as tokens at 256 levels: their own statistics' FD is ~0."""
  tokens = images.quantise(embedded.fashion_mnist_local("validation"), 256, 256)
  np.save(tmp_path / "tokens.npy", tokens)
  assert main(["fd", "--samples", str(tmp_path / "tokens.npy"), "--classifier",
               classifier_path]) == 0
  out = json.loads(capsys.readouterr().out)
  _, sigma = fashion_mnist.reference_statistics(classifier_path, 256)
  assert abs(out["fd_fashion_mnist"]) < 1e-8 * 2 * np.trace(sigma)
  assert out["fd_num_samples"] == 10000 and out["fd_classifier"] == classifier_path
  assert out["fd_classifier_accuracy"] == fashion_mnist.load_classifier(classifier_path)[1][
      "accuracy"]
  assert out["fd_reference"] == "Fashion-MNIST test images (10,000) at 256 levels"


def test_missing_classifier_names_the_training_command(classifier_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)no classifier at .*missing.msgpack: train it "
                                              r"once .*python -m prime_jax.quality "
                                              r"train-classifier --out="):
    fashion_mnist.load_classifier(os.path.join(os.path.dirname(classifier_path),
                                               "missing.msgpack"))
