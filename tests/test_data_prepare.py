"""Preparation commands on tiny local inputs, read back through the grain pipeline."""

import json
import zipfile

import numpy as np
import pytest

from prime_jax import data
from prime_jax.data import prepare, streams, text, tokenizers


def _write_docs(folder, n):
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "the", "of", "Ω", "42", "\n"]
  docs = [" ".join(rng.choice(words, size=rng.integers(3, 60))) + f" doc{i}." for i in range(n)]
  folder.mkdir()
  for i, d in enumerate(docs):
    (folder / f"doc{i:03d}.txt").write_text(d, encoding="utf-8")
  return docs


def test_openwebtext_prepare_and_read_back(tmp_path):
  docs = _write_docs(tmp_path / "owt", 30)
  out = tmp_path / "data"
  rc = prepare.main(["openwebtext", f"--out={out}", f"--input={tmp_path / 'owt'}",
                     "--tokenizer=bytes", "--num_validation_docs=7", "--chunk_tokens=50"])
  assert rc == 0
  tok = tokenizers.get_tokenizer("bytes")
  for split, part in (("train", docs[:23]), ("validation", docs[23:])):
    stream = text.join_documents([tok.encode(d) for d in part], tok.eos_id)
    meta = streams.read_meta(str(out), "openwebtext", "bytes", split)
    assert meta["num_documents"] == len(part) and meta["num_tokens"] == len(stream)
    config = data.default_config("openwebtext", data_dir=str(out), tokenizer="bytes",
                                 seq_len=12)
    got = np.concatenate([b["tokens"] for b in data.make_loader(
        config, split, batch_size=1, shuffle=False, num_epochs=1,
        process_index=0, process_count=1)])
    # Blocks straddle the 50-token records; every stream token comes back once, in order.
    np.testing.assert_array_equal(got, text.wrap_stream(stream, 12, 0, 0))
    assert got.shape[0] == len(stream) // 10


def test_openwebtext_gpt2_jsonl(tmp_path):
  path = tokenizers.default_path("gpt2")
  pytest.importorskip("tiktoken", reason="tiktoken not installed")
  import os
  if not os.path.isfile(path):
    pytest.skip(f"{path} absent: python -m prime_jax.data.prepare gpt2_tiktoken "
                "--out=~/.cache/prime_jax")
  lines = [{"text": f"Document {i}: the quick brown fox."} for i in range(5)]
  src = tmp_path / "owt.jsonl"
  src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  out = tmp_path / "data"
  prepare.main(["openwebtext", f"--out={out}", f"--input={src}", "--num_validation_docs=2"])
  tok = tokenizers.get_tokenizer("gpt2")
  stream = text.join_documents([tok.encode(x["text"]) for x in lines[:3]], 50256)
  config = data.default_config("openwebtext", data_dir=str(out), seq_len=8)
  assert data.dataset_info(config).vocab_size == 50257
  got = next(iter(data.make_loader(config, "train", batch_size=3, shuffle=False,
                                   process_index=0, process_count=1)))["tokens"]
  np.testing.assert_array_equal(got, text.wrap_stream(stream, 8, 50256, 50256)[:3])
  assert data.dataset_info(config).decode(got[0]) == (
      "<|endoftext|>Document 0: the quick brown<|endoftext|>")


def test_text8_prepare_split_sizes_and_blocks(tmp_path):
  rng = np.random.default_rng(1)
  chars = np.array(list("abcdefghijklmnopqrstuvwxyz "))
  body = "".join(rng.choice(chars, size=2000))
  with zipfile.ZipFile(tmp_path / "text8.zip", "w") as z:
    z.writestr("text8", body)
  out = tmp_path / "data"
  prepare.main(["text8", f"--out={out}", f"--input={tmp_path / 'text8.zip'}"])
  assert prepare.text8_split_sizes(100_000_000) == {
      "train": 90_000_000, "validation": 5_000_000, "test": 5_000_000}
  bounds = {"train": (0, 1800), "validation": (1800, 1900), "test": (1900, 2000)}
  config = data.default_config("text8", data_dir=str(out), seq_len=16)
  info = data.dataset_info(config)
  assert info.vocab_size == 27
  for split, (a, b) in bounds.items():
    assert streams.read_meta(str(out), "text8", "chars", split)["num_tokens"] == b - a
    got = np.concatenate([x["tokens"] for x in data.make_loader(
        config, split, batch_size=1, shuffle=False, num_epochs=1, process_index=0,
        process_count=1)])
    assert got.shape == ((b - a) // 16, 16)
    assert "".join(info.decode(r) for r in got) == body[a:a + got.size]


def test_fetch_tokenizer_files_from_local_inputs(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n")
  cache = tmp_path / "cache"
  assert prepare.main(["bert_vocab", f"--out={cache}", f"--input={vocab}"]) == 0
  assert (cache / tokenizers.BERT_VOCAB_FILE).read_text() == vocab.read_text()
  ranks = tmp_path / "gpt2.tiktoken"
  ranks.write_text("aGVsbG8= 0\n")
  prepare.main(["gpt2_tiktoken", f"--out={cache}", f"--input={ranks}"])
  assert (cache / "gpt2.tiktoken").read_text() == "aGVsbG8= 0\n"


def test_missing_prepared_dataset_names_the_command(tmp_path):
  config = data.default_config("openwebtext", data_dir=str(tmp_path), tokenizer="bytes")
  with pytest.raises(FileNotFoundError) as e:
    data.make_loader(config, "train", batch_size=2, seed=0, process_index=0, process_count=1)
  assert (f"python -m prime_jax.data.prepare openwebtext --out={tmp_path} --tokenizer=bytes"
          in str(e.value))
  config = data.default_config("text8", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError,
                     match=f"python -m prime_jax.data.prepare text8 --out={tmp_path}$"):
    data.make_loader(config, "validation", batch_size=2, process_index=0, process_count=1)


def test_prepared_streams_cannot_be_padded(tmp_path):
  config = data.default_config("openwebtext", data_dir=str(tmp_path), tokenizer="bytes",
                               wrap=False)
  with pytest.raises(ValueError, match="data.wrap=False"):
    data.dataset_info(config)
