"""Every tfds-backed dataset through the real pipeline, on tfds's mock data (no TensorFlow)."""

import numpy as np
import pytest

from prime_jax import data
from prime_jax.data import text, tokenizers

tfds = pytest.importorskip("tensorflow_datasets")

N = 12  # mock examples per split


def _mock():
  return tfds.testing.mock_data(num_examples=N, policy=tfds.testing.MockPolicy.USE_CODE)


def _one_epoch(config, split, batch_size):
  loader = data.make_loader(config, split, batch_size=batch_size, shuffle=False,
                            num_epochs=1, process_index=0, process_count=1)
  return np.concatenate([b["tokens"] for b in loader])


@pytest.mark.parametrize("name,tfds_name,split,shape", [
    ("cifar10", "cifar10", "test", (32, 32, 3)),
    ("mnist", "mnist", "test", (28, 28, 1)),
    ("fashion_mnist", "fashion_mnist", "test", (28, 28, 1)),
    ("imagenet32", "imagenet_resized/32x32", "validation", (32, 32, 3)),
])
@pytest.mark.parametrize("levels", [256, 16])
def test_image_datasets(name, tfds_name, split, shape, levels):
  config = data.default_config(name, image_levels=levels)
  info = data.dataset_info(config)
  assert (info.kind, info.vocab_size, info.example_shape) == ("image", levels, shape)
  with _mock():
    got = _one_epoch(config, "validation", 4)
    src = tfds.data_source(tfds_name, split=split)
    raw = np.stack([src[i]["image"] for i in range(N)])
  assert got.shape == (N, *shape) and got.dtype == np.int32
  np.testing.assert_array_equal(got, raw.astype(np.int32) * levels // 256)
  assert got.min() >= 0 and got.max() < levels
  if levels == 256:
    np.testing.assert_array_equal(info.decode(got[0]), raw[0])


def test_lm1b_sentences_padded_with_bert(tmp_path):
  pytest.importorskip("tokenizers", reason="tokenizers not installed")
  vocab = tmp_path / "vocab.txt"
  letters = "abcdefghijklmnopqrstuvwxyz"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(letters)
                             + ["##" + c for c in letters]) + "\n")
  config = data.default_config("lm1b", seq_len=16, tokenizer_path=str(vocab))
  info = data.dataset_info(config)
  assert info.tokenizer == "bert-base-uncased" and info.example_shape == (16,)
  tok = tokenizers.get_tokenizer("bert-base-uncased", str(vocab))
  with _mock():
    got = _one_epoch(config, "train", 3)
    src = tfds.data_source("lm1b", split="train")
    sentences = [src[i]["text"] for i in range(N)]
  assert got.shape == (N, 16)
  for row, sentence in zip(got, sentences):
    ids = tok.encode(sentence)
    np.testing.assert_array_equal(row, text.pad_or_truncate(ids, 16, 2, 3, 0))
    assert row[0] == 2 and 3 in row.tolist()
    if len(ids) <= 14:
      assert info.decode(row) == " ".join(sentence.split())


def test_lm1b_wrapped_keeps_every_token(tmp_path):
  config = data.default_config("lm1b", seq_len=8, tokenizer="bytes", wrap=True)
  with _mock():
    got = _one_epoch(config, "validation", 2)
    src = tfds.data_source("lm1b", split="test")
    stream = text.join_documents(
        [np.frombuffer(src[i]["text"].encode(), np.uint8) for i in range(N)], 0)
  n = len(stream) // 6
  assert got.shape == (n - n % 2, 8)
  assert (got[:, 0] == 0).all() and (got[:, -1] == 0).all()
  np.testing.assert_array_equal(got[:, 1:-1].reshape(-1), stream[:got.shape[0] * 6])


@pytest.mark.parametrize("tokenizer", ["bytes", "chars"])
def test_tiny_shakespeare_wrapped(tokenizer):
  config = data.default_config("tiny_shakespeare", seq_len=10, tokenizer=tokenizer)
  info = data.dataset_info(config)
  tok = tokenizers.get_tokenizer(tokenizer)
  assert info.vocab_size == tok.vocab_size
  with _mock():
    got = _one_epoch(config, "train", 1)
    src = tfds.data_source("tiny_shakespeare", split="train")
    docs = [tok.encode(src[i]["text"]) for i in range(N)]
  np.testing.assert_array_equal(got, text.wrap_documents(docs, 10, 0, 0))
  assert "".join(tok.decode(d) for d in docs).startswith(
      "".join(info.decode(r) for r in got))


def test_shuffled_mock_pipeline_resumes():
  config = data.default_config("cifar10")
  kw = dict(batch_size=2, seed=7, shuffle=True, process_index=0, process_count=1)
  with _mock():
    it = iter(data.make_loader(config, "train", **kw))
    for _ in range(4):
      next(it)
    state = it.get_state()
    want = [next(it)["tokens"] for _ in range(8)]  # crosses an epoch boundary
    again = iter(data.make_loader(config, "train", **kw))
    again.set_state(state)
    for w in want:
      np.testing.assert_array_equal(w, next(again)["tokens"])


def test_missing_tfds_data_names_the_build_command(tmp_path):
  config = data.default_config("cifar10", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError,
                     match=r"tfds build cifar10 --file_format=array_record --data_dir="):
    data.make_loader(config, "train", batch_size=2, seed=0, process_index=0, process_count=1)
