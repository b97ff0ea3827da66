"""Prepared token streams in ArrayRecord files, read back as blocks of any length.

Layout: `{data_dir}/{dataset}/{tokenizer}/{split}.array_record` holds the split's token
stream (documents already joined with EOS) cut into records of `chunk_tokens` tokens
(little-endian uint16 when the vocabulary fits, else int32); `{split}.json` beside it
records the tokenizer, vocabulary size, dtype, chunk size and token/document counts.
Because blocks are cut at read time, one prepared stream serves every sequence length.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from prime_jax.data import text

DEFAULT_CHUNK_TOKENS = 4096


def split_paths(root: str, dataset: str, tokenizer: str, split: str) -> tuple[str, str]:
  """(records path, metadata path) of one prepared split."""
  folder = os.path.join(os.path.expanduser(root), dataset, tokenizer)
  return (os.path.join(folder, f"{split}.array_record"),
          os.path.join(folder, f"{split}.json"))


class StreamWriter:
  """Appends tokens to one split's stream and writes its metadata on close."""

  def __init__(self, root: str, dataset: str, tokenizer: str, split: str,
               vocab_size: int, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, **extra):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    self.path, self.meta_path = split_paths(root, dataset, tokenizer, split)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self.dtype = np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<i4")
    self._writer = array_record_module.ArrayRecordWriter(self.path, "group_size:1")
    self._buf: list[np.ndarray] = []
    self._buffered = 0
    self.meta = dict(dataset=dataset, tokenizer=tokenizer, split=split,
                     vocab_size=vocab_size, dtype=self.dtype.str,
                     chunk_tokens=chunk_tokens, num_tokens=0, num_documents=0, **extra)

  def write(self, tokens: np.ndarray, documents: int = 1) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.meta["vocab_size"]):
      raise ValueError("token id outside the vocabulary")
    self._buf.append(tokens.astype(self.dtype))
    self._buffered += tokens.size
    self.meta["num_tokens"] += int(tokens.size)
    self.meta["num_documents"] += documents
    self._flush(final=False)

  def _flush(self, final: bool) -> None:
    chunk = self.meta["chunk_tokens"]
    if self._buffered < chunk and not (final and self._buffered):
      return
    data = np.concatenate(self._buf)
    n_full = len(data) // chunk
    for k in range(n_full):
      self._writer.write(data[k * chunk:(k + 1) * chunk].tobytes())
    rest = data[n_full * chunk:]
    if final and rest.size:
      self._writer.write(rest.tobytes())
      rest = rest[:0]
    self._buf = [rest]
    self._buffered = rest.size

  def close(self) -> dict:
    self._flush(final=True)
    self._writer.close()
    with open(self.meta_path, "w") as f:
      json.dump(self.meta, f, indent=1)
    return self.meta


def read_meta(root: str, dataset: str, tokenizer: str, split: str) -> Optional[dict]:
  """The metadata of a prepared split, or None when it has not been prepared."""
  path, meta_path = split_paths(root, dataset, tokenizer, split)
  if not (os.path.isfile(path) and os.path.isfile(meta_path)):
    return None
  with open(meta_path) as f:
    return json.load(f)


class StreamBlocks:
  """Random-access source: block i is stream[i*n:(i+1)*n] framed to seq_len (n = L-2 or L)."""

  def __init__(self, path: str, meta: dict, seq_len: int, bos_id: Optional[int],
               eos_id: Optional[int]):
    self.path, self.meta, self.seq_len = path, meta, seq_len
    self.bos_id, self.eos_id = bos_id, eos_id
    self.body = text.block_body_length(seq_len, bos_id is not None and eos_id is not None)
    self._n = meta["num_tokens"] // self.body
    self._reader = None

  def _records(self):
    if self._reader is None:
      import grain  # pylint: disable=g-import-not-at-top
      self._reader = grain.sources.ArrayRecordDataSource([self.path])
    return self._reader

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < self._n:
      raise IndexError(index)
    chunk = self.meta["chunk_tokens"]
    start, stop = index * self.body, (index + 1) * self.body
    dtype = np.dtype(self.meta["dtype"])
    records = self._records()
    parts = [np.frombuffer(records[k], dtype=dtype)
             for k in range(start // chunk, (stop - 1) // chunk + 1)]
    data = np.concatenate(parts) if len(parts) > 1 else parts[0]
    offset = start - (start // chunk) * chunk
    return text.frame_block(data[offset:offset + self.body], self.bos_id, self.eos_id)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_reader"] = None
    return state

  def __repr__(self) -> str:
    return f"StreamBlocks({self.path!r}, seq_len={self.seq_len}, blocks={self._n})"
