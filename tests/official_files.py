"""Checkpoints in the authors' Lightning text format, written without torch or omegaconf.

The layout follows the released files (and tests/data/official/*.ckpt): `state_dict` of
`backbone.*` tensors in DIT/PerceiverDIT order (with the rotary buffer), `ema` with the shadow
parameters in parameters() order, `hyper_parameters` with an omegaconf DictConfig and a tokenizer
object, Lightning's bookkeeping, and optionally an Adam optimizer state. Tensor data is made when
the archive is written, one storage at a time, so a GPT-2-size file needs little memory. Used by
tests/test_convert.py and benchmarks/convert.py.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import zipfile
from typing import Any, Callable, Optional

import numpy as np

ROOT = "checkpoint"


class Spec:
  """A float32 tensor of `shape` whose data `make()` gives at write time."""

  def __init__(self, shape: tuple, make: Callable[[], np.ndarray]):
    self.shape, self.make = tuple(int(n) for n in shape), make


class Obj:
  """An object of class `module.name`, pickled as NEWOBJ then BUILD(state).

  `Obj(module, name, state)` gives an instance of a subclass named after that class, which the
  pickler writes as GLOBAL module name (the class itself is never imported).
  """

  _classes: dict = {}
  module = name = ""

  def __new__(cls, module: str, name: str, state: Any = None):
    key = (module, name)
    if key not in Obj._classes:
      Obj._classes[key] = type(name, (Obj,), {"module": module, "name": name})
    obj = object.__new__(Obj._classes[key])
    obj.state = state
    return obj


class _Global:
  """A class or function pickled by name (GLOBAL), never imported."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # Never called: pickle only checks that a reduce target is callable.
    raise NotImplementedError


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Specs become torch tensor rebuilds over numbered storages; Objs become NEWOBJ + BUILD."""

  def __init__(self, file):
    super().__init__(file, protocol=2)
    self.specs: list[Spec] = []
    self._globals: dict[tuple, _Global] = {}

  def _global(self, module: str, name: str) -> _Global:
    return self._globals.setdefault((module, name), _Global(module, name))

  def persistent_id(self, obj):
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__storage__":
      spec = self.specs[obj[1]]
      return ("storage", self._global("torch", "FloatStorage"), str(obj[1]), "cpu",
              int(np.prod(spec.shape, dtype=np.int64)))
    return None

  def reducer_override(self, obj):
    if isinstance(obj, _Global):
      return obj.name
    if isinstance(obj, Spec):
      self.specs.append(obj)
      shape = obj.shape
      stride = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
      return (self._global("torch._utils", "_rebuild_tensor_v2"),
              (("__storage__", len(self.specs) - 1), 0, shape, stride, False,
               collections.OrderedDict()))
    if isinstance(obj, Obj):
      return (copyreg.__newobj__, (type(obj),), obj.state)
    return NotImplemented

  def save_global(self, obj, name=None):
    if isinstance(obj, _Global) or (isinstance(obj, type) and issubclass(obj, Obj)):
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
      self.memoize(obj)
      return
    super().save_global(obj, name)


def write(path: str, tree: Any) -> None:
  """torch.save's zip layout: <root>/data.pkl, then each storage's bytes as made by its Spec."""
  buffer = io.BytesIO()
  pickler = _Pickler(buffer)
  pickler.dump(tree)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
    z.writestr(f"{ROOT}/data.pkl", buffer.getvalue())
    z.writestr(f"{ROOT}/byteorder", "little")
    for key, spec in enumerate(pickler.specs):
      data = np.ascontiguousarray(spec.make(), np.float32)
      assert data.shape == spec.shape, (data.shape, spec.shape)
      with z.open(f"{ROOT}/data/{key}", "w", force_zip64=True) as f:
        f.write(memoryview(data).cast("B"))
    z.writestr(f"{ROOT}/version", "3\n")


def omegaconf(tree: dict, parent: Optional[Obj] = None) -> Obj:
  """A DictConfig as omegaconf pickles it: metadata, parent link, AnyNodes holding the values."""
  config = Obj("omegaconf.dictconfig", "DictConfig")
  content = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      content[key] = omegaconf(value, config)
    else:
      meta = Obj("omegaconf.base", "Metadata", {"key": key, "optional": True, "flags": {}})
      content[key] = Obj("omegaconf.nodes", "AnyNode",
                         {"_metadata": meta, "_parent": config, "_val": value})
  config.state = {"_metadata": Obj("omegaconf.base", "ContainerMetadata",
                                   {"object_type": None, "optional": True, "flags": {}}),
                  "_parent": parent, "_content": content}
  return config


def dit_shapes(vocab: int, ell: int, base: int, d_model: int, layers: int, cond: int,
               mlp_ratio: int = 4) -> "collections.OrderedDict[str, tuple]":
  """Official DIT (ℓ = 1) / PerceiverDIT names and shapes, in state_dict order."""
  rows, width, outputs = (vocab + 1, d_model, vocab + 1) if ell == 1 else (
      base + 1, d_model // ell, vocab)
  shapes = collections.OrderedDict([
      ("vocab_embed.embedding", (rows, width)), ("sigma_map.mlp.0.weight", (cond, 256)),
      ("sigma_map.mlp.0.bias", (cond,)), ("sigma_map.mlp.2.weight", (cond, cond)),
      ("sigma_map.mlp.2.bias", (cond,)), ("rotary_emb.inv_freq", None)])  # A buffer.
  for i in range(layers):
    p, hidden = f"blocks.{i}.", mlp_ratio * d_model
    shapes.update([(p + "norm1.weight", (d_model,)),
                   (p + "attn_qkv.weight", (3 * d_model, d_model)),
                   (p + "attn_out.weight", (d_model, d_model)), (p + "norm2.weight", (d_model,)),
                   (p + "mlp.0.weight", (hidden, d_model)), (p + "mlp.0.bias", (hidden,)),
                   (p + "mlp.2.weight", (d_model, hidden)), (p + "mlp.2.bias", (d_model,)),
                   (p + "adaLN_modulation.weight", (6 * d_model, cond)),
                   (p + "adaLN_modulation.bias", (6 * d_model,))])
  shapes.update([("output_layer.norm_final.weight", (d_model,)),
                 ("output_layer.linear.weight", (outputs, d_model)),
                 ("output_layer.linear.bias", (outputs,)),
                 ("output_layer.adaLN_modulation.weight", (2 * d_model, cond)),
                 ("output_layer.adaLN_modulation.bias", (2 * d_model,))])
  return shapes


def _random(shape: tuple, seed: int, scale: float = 0.02) -> Spec:
  return Spec(shape, lambda: (np.random.default_rng(seed).standard_normal(shape, np.float32)
                              * np.float32(scale)))


def text_checkpoint(vocab: int, ell: int, base: int, d_model: int, layers: int, heads: int,
                    cond: int, length: int = 1024, carry_over: bool = False,
                    optimizer: bool = False, seed: int = 0) -> dict:
  """A whole Lightning checkpoint of random weights (EMA = other random weights)."""
  shapes = dit_shapes(vocab, ell, base, d_model, layers, cond)
  half = d_model // heads // 2
  inv_freq = (10_000.0 ** (-np.arange(half) / half)).astype(np.float32)
  params = [(k, s) for k, s in shapes.items() if s is not None]
  state = collections.OrderedDict()
  for i, (k, s) in enumerate(shapes.items()):
    state["backbone." + k] = (Spec((half,), lambda: inv_freq) if s is None
                              else _random(s, seed * 100_003 + i))
  shadow = [_random(s, seed * 100_003 + 50_000 + i) for i, (_, s) in enumerate(params)]
  zeros = lambda s: Spec(s, lambda: np.zeros(s, np.float32))
  optimizer_states = []
  if optimizer:
    adam = {i: {"step": 1000.0, "exp_avg": zeros(s), "exp_avg_sq": zeros(s)}
            for i, (_, s) in enumerate(params)}
    group = {"lr": 3e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
             "params": list(range(len(params)))}
    optimizer_states = [{"state": adam, "param_groups": [group]}]
  config = {"backbone": "dit", "parameterization": "subs", "time_conditioning": False,
            "model": {"name": "small", "type": "ddit", "hidden_size": d_model, "cond_dim": cond,
                      "length": length, "n_blocks": layers, "n_heads": heads,
                      "scale_by_sigma": True, "dropout": 0.1, "tie_word_embeddings": False},
            "prime": {"target_length": ell, "base": base, "vocab_size": vocab,
                      "seq_length": length, "carry_over": carry_over}}
  return {"epoch": 1, "global_step": 1000, "pytorch-lightning_version": "2.6.6",
          "state_dict": state,
          "ema": {"decay": 0.9999, "num_updates": 1000, "shadow_params": shadow,
                  "collected_params": []},
          "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 1}}}},
          "callbacks": {}, "optimizer_states": optimizer_states, "lr_schedulers": [],
          "hparams_name": "kwargs",
          "hyper_parameters": {"config": omegaconf(config),
                               "tokenizer": Obj("transformers", "GPT2TokenizerFast",
                                                {"vocab_size": vocab})}}
