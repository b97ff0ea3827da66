"""What the text and image converters share: the file's tensors, its pickled settings as plain
values, EMA shadow weights matched to parameter names, and the checks on the Prime code."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from prime_jax import torch_state
from prime_jax.subtokens import PrimeCode
from prime_jax.unpickling import Opaque

WEIGHTS = ("ema", "raw")


class OfficialFormatError(ValueError):
  """A checkpoint that is not in the format of the authors' released code, or does not fit."""


@dataclasses.dataclass
class OfficialModel:
  """One released network: its Prime code, shapes, chosen weights and where they came from.

  `weights` maps the official parameter names (without the 'backbone.'/'model.' prefix) to
  lazy tensors; `model_fields` are the config.model values the file's shapes decide.
  """

  kind: str  # 'text' | 'image'
  path: str
  vocab_size: int
  ell: int
  base: int
  step: int
  weights: dict[str, Any]
  model_fields: dict[str, Any]
  carry_over: Optional[bool] = None
  source: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def code(self) -> PrimeCode:
    return PrimeCode(self.vocab_size, self.ell)


def plain(obj: Any, depth: int = 0) -> Any:
  """omegaconf containers and nodes, argparse Namespaces -> dicts, lists and values.

  Other placeholders stay as they are; parent links are not followed.
  """
  if depth > 50:
    raise OfficialFormatError("a pickled setting is nested more than 50 levels deep")
  if isinstance(obj, Opaque):
    state = obj.state if isinstance(obj.state, dict) else {}
    if obj.name == "DictConfig" and isinstance(state.get("_content"), dict):
      return {k: plain(v, depth + 1) for k, v in state["_content"].items()}
    if obj.name == "ListConfig" and isinstance(state.get("_content"), list):
      return [plain(v, depth + 1) for v in state["_content"]]
    if obj.name.endswith("Node") and "_val" in state:
      return plain(state["_val"], depth + 1)
    if obj.name == "Namespace":
      return {k: plain(v, depth + 1) for k, v in state.items()}
    return obj
  if isinstance(obj, dict):
    return {k: plain(v, depth + 1) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(plain(v, depth + 1) for v in obj)
  return obj


def lookup(tree: Any, dotted: str, default: Any = None) -> Any:
  """tree['a']['b'] for 'a.b' in plain nested dicts; `default` where a key is missing."""
  for key in dotted.split("."):
    if not isinstance(tree, Mapping) or key not in tree:
      return default
    tree = tree[key]
  return tree


def require(tree: Mapping[str, Any], key: str, path: str) -> Any:
  """tree[key], or an error naming the file and the missing entry."""
  if not isinstance(tree, Mapping) or key not in tree:
    found = sorted(tree)[:12] if isinstance(tree, Mapping) else type(tree).__name__
    raise OfficialFormatError(f"{path}: no {key!r} entry (found {found}); is this a checkpoint "
                              "of the authors' released code?")
  return tree[key]


def strip_prefix(state: Mapping[str, Any], prefix: str, path: str) -> dict[str, Any]:
  """The tensors of `state` whose names start with `prefix`, the prefix removed."""
  out = {k[len(prefix):]: v for k, v in state.items()
         if k.startswith(prefix) and isinstance(v, (torch_state.Tensor, np.ndarray))}
  if not out:
    raise OfficialFormatError(f"{path}: no tensors named {prefix}* in the state dict")
  return out


def pair_shadow(params: Mapping[str, Any], shadow: Sequence[Any], path: str,
                what: str) -> dict[str, Any]:
  """EMA shadow tensors (in parameters() order) under the names of `params` (same order)."""
  names = list(params)
  if len(names) != len(shadow):
    raise OfficialFormatError(f"{path}: {what} has {len(shadow)} EMA tensors for {len(names)} "
                              "parameters")
  for name, s in zip(names, shadow):
    if tuple(s.shape) != tuple(params[name].shape):
      raise OfficialFormatError(f"{path}: EMA tensor for {name} has shape {tuple(s.shape)}, the "
                                f"parameter {tuple(params[name].shape)}")
  return dict(zip(names, shadow))


def check_weights_choice(weights: str) -> None:
  if weights not in WEIGHTS:
    raise OfficialFormatError(f"--weights={weights!r}: expected one of {WEIGHTS}")


def check_code(vocab_size: int, ell: int, file_base: int, path: str) -> None:
  """The file's base must be PrimeCode's (the authors compute ceil(C**(1/ℓ)) in floats)."""
  if ell > 1 and PrimeCode(vocab_size, ell).base != file_base:
    raise OfficialFormatError(
        f"{path}: the checkpoint's base b={file_base} (C={vocab_size}, ℓ={ell}) is not "
        f"PrimeCode's smallest b with b**ℓ >= C, {PrimeCode(vocab_size, ell).base}: floating "
        "ceil(C**(1/ℓ)) differs from it here, and this project's digit code cannot read it")


def array(weights: Mapping[str, Any], name: str, path: str, shape: Optional[tuple] = None
          ) -> np.ndarray:
  """The float32 data of parameter `name`, checked against `shape` when given."""
  if name not in weights:
    raise OfficialFormatError(f"{path}: parameter {name} is missing")
  value = np.asarray(torch_state.to_numpy(weights[name]), np.float32)
  if shape is not None and value.shape != tuple(shape):
    raise OfficialFormatError(f"{path}: parameter {name} has shape {value.shape}, expected "
                              f"{tuple(shape)}")
  return value


def linear(weights: Mapping[str, Any], name: str, path: str, bias: bool = True) -> dict:
  """torch Linear `name` (weight (out, in)) -> {'kernel': (in, out)[, 'bias': (out,)]}."""
  out = {"kernel": np.ascontiguousarray(array(weights, f"{name}.weight", path).T)}
  if bias:
    out["bias"] = array(weights, f"{name}.bias", path)
  return out
