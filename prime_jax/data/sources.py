"""Random-access sources and per-record transforms for every named dataset.

`build(config, split)` returns a grain-compatible source (len + getitem), the per-record
operations (tokenising a sentence) and the per-batch operations (vectorised casts and image
quantisation) that together give {'tokens': int32 (batch, *example_shape)}. The work runs
in the operations, so grain's worker processes share it.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import grain
import numpy as np

from prime_jax import errors
from prime_jax.data import embedded, images, registry, streams, text, tokenizers

DEFAULT_PREPARED_DIR = os.path.join("~", ".cache", "prime_jax", "data")


class ArrayRows:
  """A random-access source over the rows of an in-memory array."""

  def __init__(self, array: np.ndarray):
    self.array = array

  def __len__(self) -> int:
    return len(self.array)

  def __getitem__(self, index: int) -> np.ndarray:
    return self.array[index]

  def __repr__(self) -> str:
    return f"ArrayRows(shape={self.array.shape}, dtype={self.array.dtype})"


class AsTokens(grain.transforms.Map):
  """Ready examples (an array or a batch of them) to {'tokens': int32}."""

  def map(self, element: Any) -> dict:
    return {"tokens": np.asarray(element, dtype=np.int32)}


class ImageTokens(grain.transforms.Map):
  """Images (array or tfds dict, one or a batch) to quantised {'tokens': int32}."""

  def __init__(self, base_levels: int, levels: int, key: Optional[str] = None):
    self.base_levels, self.levels, self.key = base_levels, levels, key

  def map(self, element: Any) -> dict:
    pixels = element[self.key] if self.key else element
    return {"tokens": images.quantise(pixels, self.base_levels, self.levels)}


class SentenceTokens(grain.transforms.Map):
  """A text record to BOS + tokens + EOS padded/truncated to seq_len (LM1B framing)."""

  def __init__(self, tokenizer: str, path: Optional[str], charset: str, seq_len: int,
               key: str = "text"):
    self.args = (tokenizer, path, charset)
    self.seq_len, self.key = seq_len, key
    self._tok = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_tok"] = None
    return state

  def map(self, element: Any) -> dict:
    if self._tok is None:
      name, path, charset = self.args
      self._tok = tokenizers.get_tokenizer(name, path, charset=charset)
    tok = self._tok
    ids = tok.encode(_as_str(element[self.key]))
    pad = tok.pad_id if tok.pad_id is not None else 0
    return {"tokens": text.pad_or_truncate(ids, self.seq_len, tok.bos_id, tok.eos_id, pad)}


def _as_str(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return _as_str(value.item())
  return str(value)


def _backend_split(spec: registry.Spec, name: str, split: str) -> str:
  if split not in spec.splits:
    raise errors.UserError(f"dataset {name!r} has no split {split!r}; splits: {list(spec.splits)}")
  return spec.splits[split]


def tfds_source(tfds_name: str, split: str, data_dir: Optional[str]) -> Sequence[Any]:
  """`tfds.data_source` without downloading; missing data names the command that builds it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
  # A dataset folder without prepared splits raises KeyError ("`splits` is empty").
  except (NotImplementedError, FileNotFoundError, AssertionError, KeyError,
          tfds.core.registered.DatasetNotFoundError) as e:
    where = f" --data_dir={data_dir}" if data_dir else ""
    raise errors.MissingInput(
        f"tfds dataset {tfds_name!r} (split {split!r}) is not prepared as array_record"
        f"{' in ' + data_dir if data_dir else ''}. Build it (on a machine with TensorFlow and "
        f"internet) with: tfds build {tfds_name} --file_format=array_record{where}  "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def _tfds_documents(source) -> list[str]:
  return [_as_str(source[i]["text"]) for i in range(len(source))]


def _wrapped_in_memory(docs: list[str], r: dict) -> ArrayRows:
  tok = registry.make_tokenizer(r)
  encode_batch = getattr(tok, "encode_batch", None)
  ids = encode_batch(docs) if encode_batch else [tok.encode(d) for d in docs]
  blocks = text.wrap_documents(ids, r["seq_len"], tok.bos_id, tok.eos_id)
  dtype = np.uint8 if tok.vocab_size <= 256 else (
      np.uint16 if tok.vocab_size <= 65536 else np.int32)
  return ArrayRows(blocks.astype(dtype))


def prepare_command(name: str, tokenizer: str, data_dir: str) -> str:
  """The command that writes a prepared dataset where the loader looks for it."""
  tok = "" if name == "text8" else f" --tokenizer={tokenizer}"
  return f"python -m prime_jax.data.prepare {name} --out={data_dir}{tok}"


def build(config: Any, split: str) -> tuple[Any, list, list]:
  """(random-access source, per-record ops, per-batch ops) for one split of a dataset."""
  r = registry.resolved(config)
  spec, name = r["spec"], r["name"]
  backend_split = _backend_split(spec, name, split)

  if spec.kind == "image":
    if spec.backend == "tfds":
      src = tfds_source(spec.tfds_name, backend_split, r["data_dir"])
      return src, [], [ImageTokens(spec.base_levels, r["levels"], key="image")]
    loader = {"fashion_mnist_local": embedded.fashion_mnist_local,
              "digits": embedded.digits}[name]
    array = loader(backend_split) if name == "digits" or not r["data_dir"] else loader(
        backend_split, r["data_dir"])
    return ArrayRows(array), [], [ImageTokens(spec.base_levels, r["levels"])]

  # Text.
  if spec.backend == "prepared":
    root = r["data_dir"] or DEFAULT_PREPARED_DIR
    tok = registry.make_tokenizer(r)
    meta = streams.read_meta(root, name, r["tokenizer"], backend_split)
    if meta is None:
      path, _ = streams.split_paths(root, name, r["tokenizer"], backend_split)
      raise errors.MissingInput(
          f"prepared dataset {name!r} ({r['tokenizer']}, split {backend_split!r}) not found at "
          f"{path}. Create it with: {prepare_command(name, r['tokenizer'], root)}")
    if meta["vocab_size"] != tok.vocab_size:
      raise errors.UserError(f"{name!r} was prepared with vocab_size={meta['vocab_size']} but "
                       f"data.tokenizer={r['tokenizer']!r} has {tok.vocab_size}")
    path, _ = streams.split_paths(root, name, r["tokenizer"], backend_split)
    blocks = streams.StreamBlocks(path, meta, r["seq_len"], tok.bos_id, tok.eos_id)
    return blocks, [], [AsTokens()]

  if spec.backend == "embedded":
    docs = embedded.shakespeare_documents(backend_split)
    if r["wrap"]:
      return _wrapped_in_memory(docs, r), [], [AsTokens()]
    records = [{"text": d} for d in docs]
  else:
    src = tfds_source(spec.tfds_name, backend_split, r["data_dir"])
    if r["wrap"]:
      # Wrapping needs the whole split tokenised: done once, in memory.
      return _wrapped_in_memory(_tfds_documents(src), r), [], [AsTokens()]
    records = src
  if isinstance(records, list):
    records = _ListSource(records)
  sentences = SentenceTokens(r["tokenizer"], r["tokenizer_path"], spec.charset, r["seq_len"])
  return records, [sentences], []


class _ListSource(ArrayRows):
  """Rows of a Python list (documents kept as text)."""

  def __repr__(self) -> str:
    return f"_ListSource(len={len(self.array)})"
