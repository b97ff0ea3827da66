"""Text framing: MDLM-style wrapping of documents into blocks, and pad/truncate of sentences.

Wrapping (MDLM): each document's tokens are followed by EOS, all documents are joined into
one stream, the stream is cut into consecutive blocks of L-2 tokens (the remainder that
does not fill a block is dropped) and each block is framed as BOS + block + EOS. A
tokenizer without BOS/EOS (text8's characters) gives unframed blocks of L tokens (MD4).
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


def join_documents(docs: Iterable[np.ndarray], eos_id: Optional[int]) -> np.ndarray:
  """One token stream: every document followed by EOS (if the tokenizer has one)."""
  parts = []
  for doc in docs:
    parts.append(np.asarray(doc, dtype=np.int32))
    if eos_id is not None:
      parts.append(np.asarray([eos_id], dtype=np.int32))
  if not parts:
    return np.zeros((0,), np.int32)
  return np.concatenate(parts)


def block_body_length(seq_len: int, framed: bool) -> int:
  """Stream tokens per block: L-2 when BOS/EOS frame the block, else L."""
  body = seq_len - 2 if framed else seq_len
  if body < 1:
    raise ValueError(f"seq_len={seq_len} is too short for framed blocks (needs >= 3)")
  return body


def num_blocks(num_tokens: int, seq_len: int, framed: bool) -> int:
  """How many whole blocks a stream of `num_tokens` gives."""
  return num_tokens // block_body_length(seq_len, framed)


def frame_block(body: np.ndarray, bos_id: Optional[int],
                eos_id: Optional[int]) -> np.ndarray:
  """BOS + body + EOS, or the body alone when the tokenizer has no BOS/EOS."""
  body = np.asarray(body, dtype=np.int32)
  if bos_id is None or eos_id is None:
    return body
  return np.concatenate([[bos_id], body, [eos_id]]).astype(np.int32)


def wrap_stream(stream: np.ndarray, seq_len: int, bos_id: Optional[int],
                eos_id: Optional[int]) -> np.ndarray:
  """All blocks of a joined stream as an (N, seq_len) int32 array."""
  framed = bos_id is not None and eos_id is not None
  body = block_body_length(seq_len, framed)
  n = len(stream) // body
  blocks = np.asarray(stream[:n * body], dtype=np.int32).reshape(n, body)
  if framed:
    blocks = np.concatenate([np.full((n, 1), bos_id, np.int32), blocks,
                             np.full((n, 1), eos_id, np.int32)], axis=1)
  return blocks


def wrap_documents(docs: Iterable[np.ndarray], seq_len: int, bos_id: Optional[int],
                   eos_id: Optional[int]) -> np.ndarray:
  """MDLM wrapping of tokenised documents into an (N, seq_len) int32 array."""
  return wrap_stream(join_documents(docs, eos_id), seq_len, bos_id, eos_id)


def pad_or_truncate(tokens: np.ndarray, seq_len: int, bos_id: Optional[int],
                    eos_id: Optional[int], pad_id: int) -> np.ndarray:
  """One sentence as BOS + tokens[:L-2] + EOS + pad... (MDLM's LM1B framing)."""
  framed = bos_id is not None and eos_id is not None
  body = block_body_length(seq_len, framed)
  seq = frame_block(np.asarray(tokens, np.int32)[:body], bos_id, eos_id)
  out = np.full((seq_len,), pad_id, dtype=np.int32)
  out[:len(seq)] = seq
  return out
