"""Text framing and tokenizers: wrapping keeps every token exactly once, in order."""

import os

import numpy as np
import pytest

from prime_jax.data import text, tokenizers


def _docs():
  rng = np.random.default_rng(0)
  return [rng.integers(1, 50, size=n).astype(np.int32) for n in (5, 17, 1, 40, 9, 23)]


def test_wrap_framing_and_token_count():
  docs, L, bos, eos = _docs(), 10, 98, 99
  blocks = text.wrap_documents(docs, L, bos, eos)
  stream = np.concatenate([np.append(d, eos) for d in docs])  # 101 tokens
  assert len(stream) == 101
  assert blocks.shape == (101 // 8, 10) == (12, 10)
  assert (blocks[:, 0] == bos).all() and (blocks[:, -1] == eos).all()
  bodies = blocks[:, 1:-1].reshape(-1)
  # Nothing lost or duplicated: the bodies are the stream in order, minus the tail.
  np.testing.assert_array_equal(bodies, stream[:96])
  assert len(stream) - len(bodies) == 101 % 8 == 5
  # Block boundaries fall every L-2 stream tokens.
  np.testing.assert_array_equal(blocks[3, 1:-1], stream[24:32])
  # Document boundaries are marked by exactly one EOS each inside the kept stream.
  assert (bodies == eos).sum() == sum(1 for i, t in enumerate(stream[:96]) if t == eos) == 5


def test_wrap_without_separators_is_plain_chunks():
  stream = np.arange(25, dtype=np.int32)
  blocks = text.wrap_stream(stream, 8, None, None)
  np.testing.assert_array_equal(blocks, np.arange(24).reshape(3, 8))
  assert text.num_blocks(25, 8, framed=False) == 3
  assert text.num_blocks(25, 8, framed=True) == 4


def test_wrap_rejects_too_short_sequences():
  with pytest.raises(ValueError, match="seq_len=2"):
    text.wrap_stream(np.arange(10), 2, 0, 0)


def test_pad_or_truncate():
  out = text.pad_or_truncate(np.array([5, 6, 7]), 8, 1, 2, 0)
  np.testing.assert_array_equal(out, [1, 5, 6, 7, 2, 0, 0, 0])
  out = text.pad_or_truncate(np.arange(10, 20), 6, 1, 2, 0)
  np.testing.assert_array_equal(out, [1, 10, 11, 12, 13, 2])


def test_bytes_round_trip():
  tok = tokenizers.get_tokenizer("bytes")
  s = "To be, or not — to be?\n"
  ids = tok.encode(s)
  assert tok.vocab_size == 256 and ids.dtype == np.int32
  assert ids.tolist() == list(s.encode("utf-8"))
  assert tok.decode(ids) == s
  assert tok.decode(np.concatenate([[0], ids, [0]])) == s  # separators dropped


def test_shakespeare_chars_round_trip_and_ids():
  tok = tokenizers.get_tokenizer("chars")
  assert tok.vocab_size == 85 and tok.bos_id == tok.eos_id == 0
  assert tok.encode("\n").tolist() == [1] and tok.encode("\u2014").tolist() == [84]
  s = "O Romeo, Romeo! wherefore art thou Romeo?\n[Exit]"
  assert tok.decode(tok.encode(s)) == s
  with pytest.raises(ValueError, match="outside the character set"):
    tok.encode("café")


def test_text8_chars():
  tok = tokenizers.get_tokenizer("chars", charset="text8")
  assert tok.vocab_size == 27 and tok.bos_id is None
  assert tok.encode("az ").tolist() == [0, 25, 26]
  assert tok.decode(tok.encode("anarchism originated")) == "anarchism originated"


def test_gpt2_round_trip():
  path = tokenizers.default_path("gpt2")
  if not os.path.isfile(path):
    pytest.skip(f"{path} absent: run python -m prime_jax.data.prepare gpt2_tiktoken "
                "--out=~/.cache/prime_jax")
  pytest.importorskip("tiktoken", reason="tiktoken not installed")
  tok = tokenizers.get_tokenizer("gpt2")
  assert tok.vocab_size == 50257 and tok.bos_id == tok.eos_id == 50256
  assert tok.encode("Hello world").tolist() == [15496, 995]
  s = "Héllo  wörld!\n\nI'm 42 <|endoftext|> ok"
  assert tok.decode(tok.encode(s)) == s
  assert 50256 not in tok.encode(s).tolist()  # special text is not the special token


def write_bert_vocab(path):
  """A tiny WordPiece vocabulary: specials, letters and their ## continuations."""
  letters = "abcdefghijklmnopqrstuvwxyz"
  words = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "the"]
           + list(letters) + ["##" + c for c in letters])
  with open(path, "w") as f:
    f.write("\n".join(words) + "\n")
  return len(words)


def test_bert_round_trip(tmp_path):
  pytest.importorskip("tokenizers", reason="tokenizers not installed")
  path = tmp_path / "vocab.txt"
  n = write_bert_vocab(path)
  tok = tokenizers.get_tokenizer("bert-base-uncased", str(path))
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (n, 0, 2, 3)
  ids = tok.encode("The cat, SAT.")
  assert ids.tolist() == [7, 8 + 2, 34 + 0, 34 + 19, 6, 8 + 18, 34 + 0, 34 + 19, 5]
  assert tok.decode(ids) == "the cat, sat."
