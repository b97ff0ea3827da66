"""The datasets this package serves, selected by name, and what a model needs to know of them.

`dataset_info` and `check_compatible` read only the config and small files (a tokenizer's
vocabulary), so they fail fast, before any data is read or any model is compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import ml_collections

from prime_jax import errors
from prime_jax.data import images, tokenizers


@dataclasses.dataclass(frozen=True)
class Spec:
  """How one named dataset is served."""
  kind: str                     # 'text' | 'image'
  backend: str                  # 'embedded' | 'tfds' | 'prepared'
  splits: dict                  # our split name -> backend split name
  tfds_name: Optional[str] = None
  image_shape: Optional[tuple] = None
  base_levels: int = 256        # grey levels of the raw pixels
  tokenizer: Optional[str] = None   # default tokenizer
  tokenizers: tuple = ()        # allowed tokenizers
  charset: str = "shakespeare"  # character set of the 'chars' tokenizer
  wrap: bool = True             # default framing
  wrap_only: bool = False       # prepared streams cannot be padded per document


_TV = {"train": "train", "validation": "validation"}
_TT = {"train": "train", "validation": "test"}

SPECS: dict[str, Spec] = {
    # Embedded, offline.
    "shakespeare_bytes": Spec("text", "embedded", _TV, tokenizer="bytes",
                              tokenizers=("bytes",)),
    "shakespeare_chars": Spec("text", "embedded", _TV, tokenizer="chars",
                              tokenizers=("chars",)),
    "fashion_mnist_local": Spec("image", "embedded", _TV, image_shape=(28, 28, 1)),
    "digits": Spec("image", "embedded", _TV, image_shape=(8, 8, 1), base_levels=17),
    # tfds (array_record data sources).
    "lm1b": Spec("text", "tfds", _TT, tfds_name="lm1b", tokenizer="bert-base-uncased",
                 tokenizers=("bert-base-uncased", "gpt2", "bytes"), wrap=False),
    "tiny_shakespeare": Spec("text", "tfds", _TV, tfds_name="tiny_shakespeare",
                             tokenizer="bytes", tokenizers=("bytes", "chars", "gpt2")),
    "cifar10": Spec("image", "tfds", _TT, tfds_name="cifar10", image_shape=(32, 32, 3)),
    "mnist": Spec("image", "tfds", _TT, tfds_name="mnist", image_shape=(28, 28, 1)),
    "fashion_mnist": Spec("image", "tfds", _TT, tfds_name="fashion_mnist",
                          image_shape=(28, 28, 1)),
    "imagenet32": Spec("image", "tfds", _TV, tfds_name="imagenet_resized/32x32",
                       image_shape=(32, 32, 3)),
    # Prepared by `python -m prime_jax.data.prepare`.
    "openwebtext": Spec("text", "prepared", _TV, tokenizer="gpt2",
                        tokenizers=("gpt2", "bert-base-uncased", "bytes"), wrap_only=True),
    "text8": Spec("text", "prepared", {**_TV, "test": "test"}, tokenizer="chars",
                  tokenizers=("chars",), charset="text8", wrap_only=True),
}
KNOWN_DATASETS: tuple[str, ...] = tuple(SPECS)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs: token vocabulary, example shape, and how to show an example."""
  kind: str
  vocab_size: int
  example_shape: tuple
  decode: Callable[[Any], Any]
  name: str
  tokenizer: Optional[str] = None
  bos_id: Optional[int] = None
  eos_id: Optional[int] = None
  pad_id: Optional[int] = None
  splits: tuple = ()


def default_config(name: str = "shakespeare_bytes",
                   **overrides: Any) -> ml_collections.ConfigDict:
  """A data config with every field this package reads, set to the dataset's defaults."""
  spec_of(name)
  config = ml_collections.ConfigDict(dict(
      name=name, seq_len=128, data_dir=None, tokenizer=None, tokenizer_path=None,
      image_levels=256, wrap=None, num_workers=0))
  config.update(overrides)
  return config


def spec_of(name: str) -> Spec:
  """The spec of a dataset name; an unknown name lists the known ones."""
  if name not in SPECS:
    raise errors.UserError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
  return SPECS[name]


def _get(config: Any, field: str, default: Any = None) -> Any:
  value = config.get(field, default) if hasattr(config, "get") else getattr(
      config, field, default)
  return default if value is None else value


def resolved(config: Any) -> dict:
  """The config's fields with each dataset's defaults filled in, checked for consistency."""
  name = _get(config, "name")
  if name is None:
    raise errors.UserError(f"data.name is not set; known datasets: {', '.join(KNOWN_DATASETS)}")
  spec = spec_of(name)
  out = dict(name=name, spec=spec, data_dir=_get(config, "data_dir"),
             num_workers=int(_get(config, "num_workers", 0)))
  if spec.kind == "text":
    tok = _get(config, "tokenizer", spec.tokenizer)
    if tok not in spec.tokenizers:
      raise errors.UserError(f"data.tokenizer={tok!r} is not available for {name!r}; "
                       f"choose one of {list(spec.tokenizers)}")
    seq_len = _get(config, "seq_len")
    if seq_len is None or int(seq_len) < 3:
      raise errors.UserError(f"data.seq_len must be an integer >= 3 for text, got {seq_len!r}")
    wrap = bool(_get(config, "wrap", spec.wrap))
    if spec.wrap_only and not wrap:
      raise errors.UserError(f"data.wrap=False is not supported for {name!r}: it is prepared as one "
                       "token stream, so only wrapped blocks exist")
    out.update(tokenizer=tok, tokenizer_path=_get(config, "tokenizer_path"),
               seq_len=int(seq_len), wrap=wrap)
  else:
    levels = int(_get(config, "image_levels", 256))
    if not 2 <= levels <= 256:
      raise errors.UserError(f"data.image_levels must be in [2, 256], got {levels}")
    out.update(levels=min(levels, spec.base_levels))
  return out


def make_tokenizer(r: dict) -> tokenizers.Tokenizer:
  """The tokenizer a resolved text config asks for."""
  return tokenizers.get_tokenizer(r["tokenizer"], r["tokenizer_path"],
                                  charset=r["spec"].charset)


def dataset_info(config: Any) -> DatasetInfo:
  """Vocabulary size, example shape and decoder of the dataset a config names."""
  r = resolved(config)
  spec = r["spec"]
  if spec.kind == "image":
    return DatasetInfo(kind="image", vocab_size=r["levels"], example_shape=spec.image_shape,
                       decode=images.Dequantiser(r["levels"]), name=r["name"],
                       splits=tuple(spec.splits))
  tok = make_tokenizer(r)
  return DatasetInfo(kind="text", vocab_size=tok.vocab_size, example_shape=(r["seq_len"],),
                     decode=tok.decode, name=r["name"], tokenizer=tok.name,
                     bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                     splits=tuple(spec.splits))


def check_compatible(config: Any, vocab_size: int, example_shape: tuple) -> DatasetInfo:
  """Raises ValueError naming the field when a model's vocabulary or shape disagrees."""
  info = dataset_info(config)
  if int(vocab_size) != info.vocab_size:
    what = (f"data.tokenizer={info.tokenizer!r}" if info.kind == "text"
            else "data.image_levels")
    raise errors.UserError(
        f"vocab_size mismatch: the model has vocab_size={vocab_size} but dataset "
        f"{info.name!r} with {what} has {info.vocab_size} tokens")
  shape = tuple(int(d) for d in example_shape)
  if shape != tuple(info.example_shape):
    if info.kind == "text":
      raise errors.UserError(
          f"seq_len mismatch: the model expects sequences of shape {shape} but "
          f"data.seq_len={info.example_shape[0]}")
    raise errors.UserError(
        f"example_shape mismatch: the model expects images of shape {shape} but dataset "
        f"{info.name!r} gives {info.example_shape}")
  return info
