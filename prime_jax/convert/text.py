"""The authors' text checkpoints (Lightning `.ckpt` of MDLM-Prime) -> PrimeTransformer params.

Backbone `DIT` for ℓ = 1 (embedding and head of C+1 rows; the last, the mask, has logit -inf
and is dropped) or `PerceiverDIT` for ℓ > 1 (embedding of b+1 rows of width D/ℓ, mask b, the ℓ
digit embeddings concatenated; head of C outputs). Their DiT: LayerNorm without bias, one qkv
projection laid out (3, heads, head_dim), half-split rotary embedding on q and k, tanh GELU,
adaLN from SiLU(time MLP(σ)) with σ = 0 when time conditioning is off.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from prime_jax.convert import reading
from prime_jax.convert.reading import OfficialFormatError, array, linear

BUFFERS = ("rotary_emb.inv_freq",)
FREQUENCY_DIM = 256  # The time MLP's sinusoid width (TimestepEmbedder's default).


def _shapes(state: Mapping[str, Any], path: str) -> dict[str, int]:
  """D, ℓ, rows, outputs, layers, cond_dim and mlp_ratio, from the tensors' shapes."""
  for key in ("vocab_embed.embedding", "blocks.0.norm1.weight", "output_layer.linear.weight",
              "blocks.0.adaLN_modulation.weight", "blocks.0.mlp.0.weight",
              "sigma_map.mlp.0.weight"):
    reading.require(state, key, path)
  d_model = int(state["blocks.0.norm1.weight"].shape[0])
  rows, width = (int(n) for n in state["vocab_embed.embedding"].shape)
  if d_model % width:
    raise OfficialFormatError(f"{path}: embedding width {width} does not divide the model "
                              f"width {d_model}, so it is neither DIT nor PerceiverDIT")
  layers = 0
  while f"blocks.{layers}.norm1.weight" in state:
    layers += 1
  frequencies = int(state["sigma_map.mlp.0.weight"].shape[1])
  if frequencies != FREQUENCY_DIM:
    raise OfficialFormatError(f"{path}: the time MLP takes {frequencies} sinusoidal features; "
                              f"this project's takes {FREQUENCY_DIM}")
  return dict(d_model=d_model, ell=d_model // width, rows=rows, layers=layers,
              outputs=int(state["output_layer.linear.weight"].shape[0]),
              cond_dim=int(state["blocks.0.adaLN_modulation.weight"].shape[1]),
              mlp_ratio=int(state["blocks.0.mlp.0.weight"].shape[0]) // d_model)


def _code(s: dict[str, int], prime: Mapping[str, Any], path: str) -> tuple[int, int]:
  """(C, b) from the shapes, checked against the pickled config's prime section."""
  ell = s["ell"]
  if ell == 1:
    vocab, base = s["outputs"] - 1, s["outputs"] - 1
    if s["rows"] != s["outputs"]:
      raise OfficialFormatError(f"{path}: DIT with {s['rows']} embedding rows but "
                                f"{s['outputs']} outputs; expected C+1 of each")
  else:
    vocab, base = s["outputs"], s["rows"] - 1
  for key, value in (("target_length", ell), ("vocab_size", vocab), ("base", base)):
    saved = prime.get(key)
    if saved is not None and int(saved) != value and not (key == "base" and ell == 1):
      raise OfficialFormatError(f"{path}: config.prime.{key}={saved} in the file, but the "
                                f"tensors' shapes say {value}")
  reading.check_code(vocab, ell, base, path)
  return vocab, base


def _check_rotary(state: Mapping[str, Any], d_model: int, heads: int, path: str) -> None:
  if "rotary_emb.inv_freq" not in state or not heads:
    return
  half = d_model // heads // 2
  want = 10_000.0 ** (-np.arange(half) / half)
  got = array(state, "rotary_emb.inv_freq", path)
  if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5):
    raise OfficialFormatError(f"{path}: rotary frequencies {got[:3]}... are not base 10000 over "
                              f"head_dim {2 * half}; check model.n_heads={heads}")


def read(obj: Any, path: str, weights: str) -> reading.OfficialModel:
  """The network of a Lightning checkpoint, with its EMA (`weights='ema'`) or raw weights."""
  reading.check_weights_choice(weights)
  state = reading.strip_prefix(reading.require(obj, "state_dict", path), "backbone.", path)
  config = reading.plain(obj.get("hyper_parameters", {})).get("config", {})
  config = config if isinstance(config, dict) else {}
  if config.get("time_conditioning"):
    raise OfficialFormatError(f"{path}: trained with time_conditioning=True (σ fed to the time "
                              "MLP); only the released time-agnostic models are supported")
  s = _shapes(state, path)
  vocab, base = _code(s, config.get("prime", {}) or {}, path)
  heads = reading.lookup(config, "model.n_heads")
  _check_rotary(state, s["d_model"], heads, path)
  params = {k: v for k, v in state.items() if k not in BUFFERS}
  if weights == "ema":
    ema = reading.require(obj, "ema", path)
    params = reading.pair_shadow(params, reading.require(ema, "shadow_params", path), path,
                                 "ema.shadow_params")
  fields = dict(type="transformer", d_model=s["d_model"], num_layers=s["layers"],
                cond_dim=s["cond_dim"], mlp_ratio=s["mlp_ratio"], time_conditioning=False,
                zero_time_conditioning=True, causal=False, per_digit_tables=False,
                combine="concat")
  if heads:
    fields["num_heads"] = int(heads)
  return reading.OfficialModel(
      kind="text", path=path, vocab_size=vocab, ell=s["ell"], base=base,
      step=int(obj.get("global_step", 0) or 0), weights=params, model_fields=fields,
      carry_over=reading.lookup(config, "prime.carry_over"),
      source={"seq_len": reading.lookup(config, "model.length"),
              "ema_num_updates": reading.lookup(obj, "ema.num_updates")})


def _modulation(w: Mapping[str, Any], name: str, num: int, d_model: int, path: str) -> dict:
  """adaLN Linear(cond, num·D) -> Modulation's proj (cond, num, D) and bias (num, D)."""
  dense = linear(w, name, path)
  cond = dense["kernel"].shape[0]
  return {"proj": {"kernel": dense["kernel"].reshape(cond, num, d_model),
                   "bias": dense["bias"].reshape(num, d_model)}}


def _block(w: Mapping[str, Any], name: str, d_model: int, heads: int, path: str) -> dict:
  head_dim = d_model // heads
  qkv = array(w, f"{name}.attn_qkv.weight", path, (3 * d_model, d_model)).T
  qkv = qkv.reshape(d_model, 3, heads, head_dim)
  out = array(w, f"{name}.attn_out.weight", path, (d_model, d_model)).T
  return {
      "adaln": _modulation(w, f"{name}.adaLN_modulation", 6, d_model, path),
      "norm1": {"ln": {"scale": array(w, f"{name}.norm1.weight", path)}},
      "query": {"kernel": np.ascontiguousarray(qkv[:, 0])},
      "key": {"kernel": np.ascontiguousarray(qkv[:, 1])},
      "value": {"kernel": np.ascontiguousarray(qkv[:, 2])},
      "attn_out": {"kernel": np.ascontiguousarray(out.reshape(heads, head_dim, d_model))},
      "norm2": {"ln": {"scale": array(w, f"{name}.norm2.weight", path)}},
      "mlp_in": linear(w, f"{name}.mlp.0", path),
      "mlp_out": linear(w, f"{name}.mlp.2", path),
  }


def params(model: reading.OfficialModel, num_heads: int, scan_layers: bool = False) -> dict:
  """PrimeTransformer(zero_time_conditioning=True) parameters holding the file's weights."""
  w, path, f = model.weights, model.path, model.model_fields
  d_model, vocab = f["d_model"], model.vocab_size
  if d_model % num_heads:
    raise OfficialFormatError(f"{path}: model width {d_model} is not divisible by "
                              f"num_heads={num_heads}")
  blocks = [_block(w, f"blocks.{i}", d_model, num_heads, path) for i in range(f["num_layers"])]
  head = linear(w, "output_layer.linear", path)  # ℓ = 1: the mask's output row is dropped.
  out = {
      "embed": {"embedding": array(w, "vocab_embed.embedding", path)},
      "cond": {"time_in": linear(w, "sigma_map.mlp.0", path),
               "time_out": linear(w, "sigma_map.mlp.2", path)},
      "final_adaln": _modulation(w, "output_layer.adaLN_modulation", 2, d_model, path),
      "final_norm": {"ln": {"scale": array(w, "output_layer.norm_final.weight", path)}},
      "head": {"kernel": np.ascontiguousarray(head["kernel"][:, :vocab]),
               "bias": head["bias"][:vocab]},
  }
  if scan_layers:
    out["blocks"] = {k: _stack([b[k] for b in blocks]) for k in blocks[0]}
  else:
    out.update({f"block_{i}": b for i, b in enumerate(blocks)})
  return out


def _stack(trees: list) -> Any:
  if isinstance(trees[0], dict):
    return {k: _stack([t[k] for t in trees]) for k in trees[0]}
  return np.stack(trees)
