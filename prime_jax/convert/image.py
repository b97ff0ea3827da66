"""The authors' image checkpoints (`.pth` of the EMA-wrapped U-Net) -> PrimeUNet params.

Backbone: the guided-diffusion U-Net of the official discrete_unet.py (`DiscreteUNetModel` for
ℓ = 1: embedding and outputs of C+1 values, the last the mask, dropped here;
`DiscretePrimeUNetModel` for ℓ > 1: embedding of b+1 rows, C outputs), with its CIFAR-10
settings: no input convolution, resampling without convolutions, a constant scale-shift FiLM per
residual block (no time input), GroupNorm(32), attention with q, k, v split before the heads
(`use_new_attention_order`; the weights cannot tell the two orders apart). Its pixel embedding
lays channel c's ℓ digit embeddings side by side, as PrimeEmbedding's concatenation does.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from prime_jax.convert import reading
from prime_jax.convert.reading import OfficialFormatError, array

EMBEDDING = "pixel_embedding.embedding_table.weight"


def _blocks(state: Mapping[str, Any], stage: str) -> list[str]:
  """The sub-module kinds of each block of `stage` ('input_blocks'/'output_blocks'), in order:
  'res', 'res+attn', 'down', 'down+conv', ... ('' for a block without parameters)."""
  pattern = re.compile(rf"unet\.{stage}\.(\d+)\.")
  indices = {int(m.group(1)) for k in state for m in [pattern.match(k)] if m}
  kinds = []
  for i in range(max(indices, default=-1) + 1):
    prefix, parts = f"unet.{stage}.{i}.", []
    for j in range(4):
      if f"{prefix}{j}.in_layers.0.weight" in state:
        parts.append("res")
      elif f"{prefix}{j}.qkv.weight" in state:
        parts.append("attn")
      elif f"{prefix}{j}.op.weight" in state or f"{prefix}{j}.conv.weight" in state:
        parts.append("conv")
    kinds.append("+".join(parts))
  return kinds


def _layout(state: Mapping[str, Any], path: str) -> dict[str, Any]:
  """Level widths, residual blocks per level, attention levels and resampling, from the names."""
  kinds = _blocks(state, "input_blocks")
  input_conv = "unet.input_blocks.0.0.weight" in state
  levels, current, conv_resample = [], [], False
  for i, kind in enumerate(kinds[1:], start=1):
    if kind.startswith("res"):
      out = int(state[f"unet.input_blocks.{i}.0.in_layers.2.weight"].shape[0])
      current.append((out, "attn" in kind))
    else:  # A downsample: average pooling (no parameters) or a strided convolution.
      conv_resample = kind == "conv"
      levels.append(current)
      current = []
  levels.append(current)
  blocks = {len(level) for level in levels}
  if len(blocks) != 1 or 0 in blocks:
    raise OfficialFormatError(f"{path}: U-Net levels with {sorted(blocks)} residual blocks; "
                              "expected the same number at every level")
  widths = []
  for level in levels:
    if len({w for w, _ in level}) != 1 or len({a for _, a in level}) != 1:
      raise OfficialFormatError(f"{path}: a U-Net level mixes widths or attention: {level}")
    widths.append(level[0][0])
  ch = math.gcd(*widths)
  return dict(ch=ch, ch_mult=tuple(w // ch for w in widths), num_res_blocks=blocks.pop(),
              attn_levels=tuple(i for i, level in enumerate(levels) if level[0][1]),
              input_conv=input_conv, resample_conv=conv_resample)


def _check_film(state: Mapping[str, Any], path: str) -> None:
  tables = [k for k in state if k.endswith("emb_layers.embedding_table")]
  if not tables or any(k.endswith("emb_layers.1.weight") for k in state):
    raise OfficialFormatError(f"{path}: the residual blocks take a time or class embedding; "
                              "only the released time-agnostic U-Nets (constant FiLM) are read")
  for k in tables:
    out = state[k.replace("emb_layers.embedding_table", "out_layers.0.weight")].shape[0]
    if state[k].shape[-1] != 2 * out:
      raise OfficialFormatError(f"{path}: {k} is not a scale-shift FiLM (width "
                                f"{state[k].shape[-1]} for {out} channels)")


def _code(state, layout, image_channels: int, args: Mapping[str, Any], path: str):
  """(C, ℓ, b, per-channel embedding width) from the embedding and output shapes."""
  rows, width = (int(n) for n in reading.require(state, EMBEDDING, path).shape)
  outputs = int(reading.require(state, "unet.out.2.weight", path).shape[0])
  first = layout["ch"] * layout["ch_mult"][0]
  if first % image_channels or (first // image_channels) % width:
    raise OfficialFormatError(f"{path}: first width {first} is not image_channels="
                              f"{image_channels} times a multiple of the embedding width {width}")
  emb_features = first // image_channels
  ell = emb_features // width
  if outputs % image_channels:
    raise OfficialFormatError(f"{path}: {outputs} outputs for {image_channels} channels")
  per_channel = outputs // image_channels
  vocab, base = (per_channel - 1, per_channel - 1) if ell == 1 else (per_channel, rows - 1)
  if ell == 1 and rows != per_channel:
    raise OfficialFormatError(f"{path}: {rows} embedding rows but {per_channel} outputs per "
                              "channel; expected C+1 of each for ℓ = 1")
  saved = args.get("target_length")
  if saved is not None and int(saved) != ell:
    raise OfficialFormatError(f"{path}: args.target_length={saved}, but the shapes say ℓ={ell}")
  reading.check_code(vocab, ell, base, path)
  return vocab, ell, base, emb_features


def read(obj: Any, path: str, weights: str, image_channels: int = 3) -> reading.OfficialModel:
  """The network of an image `.pth`, with its EMA (`weights='ema'`) or raw weights.

  Attention is recorded per level (`source['attn_levels']`); `attn_resolutions` in pixels needs
  the image size, which the data config gives (`attn_resolutions`).
  """
  reading.check_weights_choice(weights)
  wrapper = reading.require(obj, "model", path)
  state = reading.strip_prefix(wrapper, "model.", path)
  args = reading.plain(obj.get("args"))
  args = args if isinstance(args, dict) else {}
  _check_film(state, path)
  layout = _layout(state, path)
  vocab, ell, base, emb_features = _code(state, layout, image_channels, args, path)
  if weights == "ema":
    shadow = sorted(((int(k.rsplit(".", 1)[1]), v) for k, v in wrapper.items()
                     if k.startswith("shadow_params.")), key=lambda kv: kv[0])
    state = reading.pair_shadow(state, [v for _, v in shadow], path, "shadow_params")
  updates = wrapper.get("num_updates")
  step = int(np.asarray(reading.torch_state.to_numpy(updates))) if updates is not None else 0
  attn_levels = layout.pop("attn_levels")
  fields = dict(type="unet", emb_features=emb_features, time_conditioning=False,
                per_digit_tables=False, combine="concat", **layout)
  return reading.OfficialModel(
      kind="image", path=path, vocab_size=vocab, ell=ell, base=base, step=step, weights=state,
      model_fields=fields, carry_over=args.get("carry_over"),
      source={"epoch": obj.get("epoch"), "dataset": args.get("dataset"),
              "attn_levels": attn_levels})


def attn_resolutions(model: reading.OfficialModel, height: int) -> tuple[int, ...]:
  """The feature-map sizes (pixels) of the levels with attention, for images `height` high."""
  return tuple(height // 2**level for level in model.source["attn_levels"])


def _conv(w: Mapping[str, Any], name: str, path: str, keep=None) -> dict:
  """torch Conv2d/Conv1d (out, in, kh[, kw]) -> {'kernel': (kh, kw, in, out), 'bias'}."""
  weight, bias = array(w, f"{name}.weight", path), array(w, f"{name}.bias", path)
  if weight.ndim == 3:
    weight = weight[..., None]
  if keep is not None:
    weight, bias = weight[keep], bias[keep]
  return {"kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)), "bias": bias}


def _norm(w: Mapping[str, Any], name: str, path: str) -> dict:
  return {"gn": {"scale": array(w, f"{name}.weight", path), "bias": array(w, f"{name}.bias", path)}}


def _res(w: Mapping[str, Any], name: str, cond_dim: int, path: str) -> dict:
  table = array(w, f"{name}.emb_layers.embedding_table", path)[0]
  out = table.shape[0] // 2  # Official order (scale, shift); Modulation's is (shift, scale).
  block = {"norm_in": _norm(w, f"{name}.in_layers.0", path),
           "conv_in": _conv(w, f"{name}.in_layers.2", path),
           "film": {"proj": {"kernel": np.zeros((cond_dim, 2, out), np.float32),
                             "bias": np.stack([table[out:], table[:out]])}},
           "norm_out": _norm(w, f"{name}.out_layers.0", path),
           "conv_out": _conv(w, f"{name}.out_layers.3", path)}
  if f"{name}.skip_connection.weight" in w:
    block["skip"] = _conv(w, f"{name}.skip_connection", path)
  return block


def _attn(w: Mapping[str, Any], name: str, head_dim: int, path: str) -> dict:
  qkv = array(w, f"{name}.qkv.weight", path)[..., 0].T  # (C, 3C)
  channels = qkv.shape[0]
  if channels % head_dim:
    raise OfficialFormatError(f"{path}: attention width {channels} is not a multiple of "
                              f"head_dim={head_dim} (the official num_head_channels)")
  heads = channels // head_dim
  qkv = qkv.reshape(channels, 3, heads, head_dim)
  bias = array(w, f"{name}.qkv.bias", path).reshape(3, heads, head_dim)
  out = array(w, f"{name}.proj_out.weight", path)[..., 0].T.reshape(heads, head_dim, channels)
  block = {k: {"kernel": np.ascontiguousarray(qkv[:, i]), "bias": bias[i]}
           for i, k in enumerate(("query", "key", "value"))}
  block.update(norm=_norm(w, f"{name}.norm", path),
               out={"kernel": np.ascontiguousarray(out),
                    "bias": array(w, f"{name}.proj_out.bias", path)})
  return block


def params(model: reading.OfficialModel, head_dim: int, image_channels: int = 3) -> dict:
  """PrimeUNet(input_conv=False, resample_conv=False, ...) parameters with the file's weights."""
  w, path, f = model.weights, model.path, model.model_fields
  cond_dim, levels, nrb = 4 * f["ch"], len(f["ch_mult"]), f["num_res_blocks"]
  attn_levels = {lvl for lvl in range(levels) if _has_attention(w, lvl, nrb)}
  out: dict[str, Any] = {"embed": {"embedding": array(w, EMBEDDING, path)},
                         "cond": {"constant": np.zeros((cond_dim,), np.float32)}}
  if f["input_conv"]:
    out["conv_in"] = _conv(w, "unet.input_blocks.0.0", path)
  index = 1
  for level in range(levels):
    for i in range(nrb):
      out[f"down_{level}_res_{i}"] = _res(w, f"unet.input_blocks.{index}.0", cond_dim, path)
      if level in attn_levels:
        out[f"down_{level}_attn_{i}"] = _attn(w, f"unet.input_blocks.{index}.1", head_dim, path)
      index += 1
    if level != levels - 1:
      if f["resample_conv"]:
        out[f"down_{level}_downsample"] = _conv(w, f"unet.input_blocks.{index}.0.op", path)
      index += 1
  out["mid_res_0"] = _res(w, "unet.middle_block.0", cond_dim, path)
  out["mid_attn"] = _attn(w, "unet.middle_block.1", head_dim, path)
  out["mid_res_1"] = _res(w, "unet.middle_block.2", cond_dim, path)
  index = 0
  for level in reversed(range(levels)):
    for i in range(nrb + 1):
      name = f"unet.output_blocks.{index}"
      out[f"up_{level}_res_{i}"] = _res(w, f"{name}.0", cond_dim, path)
      if level in attn_levels:
        out[f"up_{level}_attn_{i}"] = _attn(w, f"{name}.1", head_dim, path)
      if level and i == nrb and f["resample_conv"]:
        out[f"up_{level}_upsample"] = _conv(w, f"{name}.{2 if level in attn_levels else 1}.conv",
                                            path)
      index += 1
  per_channel = model.vocab_size + (1 if model.ell == 1 else 0)
  keep = np.array([c * per_channel + v for c in range(image_channels)
                   for v in range(model.vocab_size)])
  out["norm_out"] = _norm(w, "unet.out.0", path)
  out["conv_out"] = _conv(w, "unet.out.2", path, keep=keep)
  return out


def _has_attention(w: Mapping[str, Any], level: int, nrb: int) -> bool:
  """Whether the residual blocks of `level` are followed by attention (input side)."""
  index = 1 + level * (nrb + 1)  # nrb blocks and one downsample per earlier level.
  return f"unet.input_blocks.{index}.1.qkv.weight" in w
