"""Configs: the base config, config-file arguments, validation, and saved config.json files.

Config files call `base_config()` and `parse_arg(arg, ...)` so that
`--config=configs/NAME.py:ell=4,objective=joint` selects a variant. ℓ is `config.model.ell`
from the config file to the loss (`PrimeCode.ell`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any

import ml_collections

from prime_jax import data, errors, losses, schedules, xla_options
from prime_jax.models import ATTENTION_IMPLS, REMAT_POLICIES

MODEL_TYPES = ("transformer", "unet")
DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("cosine", "constant", "linear")
NAN_POLICIES = ("stop", "skip")

# Logical axis -> mesh axes. Parameters are sharded over fsdp (and tensor for wide axes);
# activations over the batch axes. Names not listed stay replicated.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_out", "tensor"),
    ("length", None),
)


def base_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with defaults; config files override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data.default_config("shakespeare_bytes")
  c.model = ml_collections.ConfigDict(dict(
      type="transformer", ell=2, d_model=128, num_layers=4, num_heads=4, mlp_ratio=4,
      dropout=0.0, cond_dim=128, time_conditioning=False, causal=False,
      per_digit_tables=False, combine="concat", dtype="float32", remat=False,
      remat_policy="full", scan_layers=False,
      # 'auto': cuDNN's fused attention on a GPU in bf16, einsums elsewhere; 'xla' or 'cudnn'
      # force jax.nn.dot_product_attention with that implementation.
      attention_impl="auto",
      # > 0 (transformer only): train through `fused_head` (chunks of this many token values) or
      # `fused_loss`, holding (B, L, C) logits only up to fused_head.KEEP_LOGITS_MAX_BYTES.
      fused_head_chunk=0,
      # The fused head skips blocks of tokens with no masked digit (about a third at ℓ = 2) behind
      # a switch on their count: off, it computes every token with no switch.
      fused_head_skip_rows=True,
      # The released checkpoints' parameterisation (prime_jax.convert); off for this project's
      # own models: adaLN constant from the time MLP at t = 0; U-Net without input conv and
      # with conv-free resampling.
      zero_time_conditioning=False, input_conv=True, resample_conv=True,
      # U-Net only.
      ch=96, ch_mult=(3, 4, 4), num_res_blocks=5, attn_resolutions=(16,), head_dim=64,
      emb_features=0))
  c.diffusion = ml_collections.ConfigDict(dict(
      objective="valid", carry_over=True, schedule="loglinear", schedule_eps=1e-3,
      schedule_power=3.0, t_min=1e-5, antithetic=True))
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-4, lr_schedule="constant", warmup_steps=100, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, grad_clip=1.0, ema_decay=0.999, grad_accum_steps=1))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, num_steps=1000, log_every=50, eval_every=500, eval_batches=8,
      sample_every=0, checkpoint_every=500, keep_last=2, keep_every=0,
      async_checkpoint=True, nan_policy="stop", max_skipped_steps=10,
      allow_incompatible_workdir=False))
  c.eval = ml_collections.ConfigDict(dict(
      split="validation", batch_size=32, num_batches=16, num_time_samples=4, use_ema=True,
      data_name=""))
  c.sample = ml_collections.ConfigDict(dict(
      num_samples=8, batch_size=8, steps=0, digit_source="marginal", grid="uniform",
      top_p=1.0, temperature=1.0, use_ema=True, prefix="", prefix_rows=0, checkpoint_step=-1,
      draw_dtype="float64", invalid_policy="resample", temperature_schedule=(), corrector=(),
      time_warp=(),
      # Sample quality: a causal-baseline workdir that scores text samples (generative
      # perplexity), and a Fashion-MNIST classifier file for the Fréchet distance ("" = off).
      scorer_workdir="", fd_classifier="",
      # FID: pytorch-fid's pt_inception-2015-12-05-6726825d.pth ("" = off), and the reference:
      # a pytorch-fid .npz (mu, sigma) or a split of the dataset whose first
      # inception_reference_examples images (0 = all) give statistics cached beside the weights.
      inception_weights="", inception_reference="train", inception_reference_examples=0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # XLA:CPU's matmul library, 'auto', 'ynn' or 'eigen' (see prime_jax.xla_options).
  c.xla = ml_collections.ConfigDict(dict(cpu_dot_library="auto"))
  c.sharding_rules = DEFAULT_RULES
  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address="", num_processes=0, process_id=-1))
  return c


class ConfigError(errors.UserError):
  """A config value that cannot work; the message names the field and what is accepted."""


# Keys renamed since earlier workdirs wrote their config.json: old dotted name -> current name;
# and keys that no longer exist (nothing reads them).
RENAMED_KEYS = {"model.length": "model.ell"}
REMOVED_KEYS = ("train.num_samples",)


def upgrade_saved(raw: dict[str, Any]) -> dict[str, Any]:
  """A config.json dict of any earlier version, with renamed keys under their current names."""
  raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
  for old, new in RENAMED_KEYS.items():
    (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
    section = raw.get(old_section)
    if isinstance(section, dict) and old_key in section:
      raw.setdefault(new_section, {}).setdefault(new_key, section.pop(old_key))
  for old in REMOVED_KEYS:
    section, key = old.split(".")
    if isinstance(raw.get(section), dict):
      raw[section].pop(key, None)
  return raw


def literal(raw: str) -> Any:
  """A Python literal written on a command line ('False', '8192', "'a'"), else the text itself."""
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def parse_arg(arg: str | None, defaults: dict[str, Any]) -> ml_collections.ConfigDict:
  """'k=v,k2=v2' -> ConfigDict over `defaults`; unknown keys are an error naming the known ones."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ConfigError(f"config argument {item!r} is not key=value; keys: {sorted(defaults)}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    value = literal(raw)
    values[key] = type(defaults[key])(value) if defaults[key] is not None else value
  return ml_collections.ConfigDict(values)


def _fail(field: str, value: Any, accepted: str) -> None:
  raise ConfigError(f"config.{field}={value!r} is invalid: expected {accepted}")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks a resolved config before anything is built; errors name the field and what fits."""
  _check_model(config.model)
  _check_objective(config.model, config.diffusion)
  _check_optim_and_train(config.optim, config.train)
  _check_batches(config, num_devices)
  library = xla_options.requested(config)
  if library not in xla_options.CPU_DOT_LIBRARIES:
    _fail("xla.cpu_dot_library", library, f"one of {xla_options.CPU_DOT_LIBRARIES}")


def _check_model(m: ml_collections.ConfigDict) -> None:
  if m.type not in MODEL_TYPES:
    _fail("model.type", m.type, f"one of {MODEL_TYPES}")
  if m.dtype not in DTYPES:
    _fail("model.dtype", m.dtype, f"one of {DTYPES}")
  if not isinstance(m.ell, int) or isinstance(m.ell, bool) or m.ell < 1:
    _fail("model.ell", m.ell, "an integer ℓ >= 1 (config argument ell)")
  if m.type == "transformer" and m.combine == "concat" and m.d_model % m.ell:
    _fail("model.d_model", m.d_model, f"a multiple of model.ell={m.ell} (ℓ), since "
          "the ℓ digit embeddings are concatenated (or set model.combine='sum')")
  if m.type == "transformer" and m.d_model % m.num_heads:
    _fail("model.d_model", m.d_model, f"a multiple of model.num_heads={m.num_heads}")
  if not 0 <= m.dropout < 1:
    _fail("model.dropout", m.dropout, "a number in [0, 1)")
  if m.get("remat_policy", "full") not in REMAT_POLICIES:
    _fail("model.remat_policy", m.remat_policy, f"one of {tuple(REMAT_POLICIES)} (what a "
          "block rematerialised under model.remat=True keeps)")
  if m.get("attention_impl", "auto") not in ATTENTION_IMPLS:
    _fail("model.attention_impl", m.attention_impl, f"one of {ATTENTION_IMPLS}")
  chunk = m.get("fused_head_chunk", 0)
  if not isinstance(chunk, int) or chunk < 0 or (chunk and m.type != "transformer"):
    _fail("model.fused_head_chunk", chunk, "0 (logits formed) or, for model.type='transformer', "
          "a positive number of token values per chunk")


def _check_objective(m: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  if d.objective not in losses.OBJECTIVES:
    _fail("diffusion.objective", d.objective, f"one of {tuple(losses.OBJECTIVES)}")
  if losses.OBJECTIVES[d.objective].causal:
    if not m.causal or m.ell != 1 or m.type != "transformer":
      _fail("diffusion.objective", d.objective,
            "model.causal=True, model.ell=1 and model.type='transformer' for the "
            "autoregressive baseline")
  elif m.causal:
    _fail("model.causal", m.causal, "False unless diffusion.objective='autoregressive'")
  if d.schedule not in schedules.SCHEDULES:
    _fail("diffusion.schedule", d.schedule, f"one of {sorted(schedules.SCHEDULES)}")
  if not 0 < d.t_min < 1:
    _fail("diffusion.t_min", d.t_min, "a number in (0, 1)")


def _check_optim_and_train(o: ml_collections.ConfigDict,
                           train_cfg: ml_collections.ConfigDict) -> None:
  if o.lr_schedule not in LR_SCHEDULES:
    _fail("optim.lr_schedule", o.lr_schedule, f"one of {LR_SCHEDULES}")
  if not o.lr > 0:
    _fail("optim.lr", o.lr, "a positive number")
  if not 0 <= o.ema_decay < 1:
    _fail("optim.ema_decay", o.ema_decay, "a number in [0, 1)")
  if train_cfg.nan_policy not in NAN_POLICIES:
    _fail("train.nan_policy", train_cfg.nan_policy, f"one of {NAN_POLICIES}")
  for field in ("batch_size", "num_steps", "log_every"):
    if not isinstance(train_cfg[field], int) or train_cfg[field] < 1:
      _fail(f"train.{field}", train_cfg[field], "a positive integer")
  if not isinstance(o.grad_accum_steps, int) or o.grad_accum_steps < 1:
    _fail("optim.grad_accum_steps", o.grad_accum_steps, "a positive integer")


def _check_batches(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every batch must split evenly over the mesh's batch axes (and over micro-batches)."""
  o, train_cfg = config.optim, config.train
  mesh_shape = resolve_mesh_shape(config.mesh, num_devices)
  batch_shards = mesh_shape[0] * mesh_shape[1]
  if train_cfg.batch_size % o.grad_accum_steps:
    _fail("train.batch_size", train_cfg.batch_size,
          f"a multiple of optim.grad_accum_steps={o.grad_accum_steps}")
  if (train_cfg.batch_size // o.grad_accum_steps) % batch_shards:
    _fail("train.batch_size", train_cfg.batch_size,
          f"a multiple of data×fsdp = {batch_shards} (times optim.grad_accum_steps) "
          f"for the mesh {dict(zip(('data', 'fsdp', 'tensor'), mesh_shape))}")
  examples = config.sample.get("inception_reference_examples", 0)
  if not isinstance(examples, int) or examples < 0:
    _fail("sample.inception_reference_examples", examples,
          "a non-negative integer (0 = every image of the reference split)")
  for section, field in (("eval", "batch_size"), ("sample", "batch_size")):
    value = config[section][field]
    if not isinstance(value, int) or value < 1 or value % batch_shards:
      _fail(f"{section}.{field}", value, f"a positive multiple of data×fsdp = {batch_shards}")


def resolve_mesh_shape(mesh: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with at most one -1 filled so the product is the device count."""
  sizes = [mesh.data, mesh.fsdp, mesh.tensor]
  names = ("mesh.data", "mesh.fsdp", "mesh.tensor")
  for name, s in zip(names, sizes):
    if not isinstance(s, int) or (s < 1 and s != -1):
      _fail(name, s, "a positive integer or -1 (fill with the remaining devices)")
  if sizes.count(-1) > 1:
    raise ConfigError(f"config.mesh: at most one axis may be -1, got {dict(zip(names, sizes))}")
  known = 1
  for s in sizes:
    known *= s if s != -1 else 1
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"config.mesh {dict(zip(names, sizes))} does not divide the "
                       f"{num_devices} available devices")
    sizes[sizes.index(-1)] = num_devices // known
  if sizes[0] * sizes[1] * sizes[2] != num_devices:
    raise ConfigError(f"config.mesh {dict(zip(names, sizes))} needs "
                     f"{sizes[0] * sizes[1] * sizes[2]} devices but {num_devices} are available")
  return tuple(sizes)


BASELINES = ("", "mdm", "ar")


def apply_variant(c: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
  """Applies the shared arguments: ell (ℓ), objective, carry_over and baseline ('mdm' or 'ar')."""
  if args.baseline not in BASELINES:
    raise ConfigError(f"config argument baseline={args.baseline!r}; expected one of {BASELINES}")
  c.model.ell = args.ell
  c.diffusion.objective = args.objective
  c.diffusion.carry_over = args.carry_over
  if args.baseline == "mdm":
    c.model.ell = 1
  elif args.baseline == "ar":
    c.model.ell = 1
    c.model.causal = True
    c.diffusion.objective = "autoregressive"


def paper_image_config(args: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The paper's image set-up: ADM U-Net (ch 96, [3,4,4], 5 blocks, attention at 16×16,
  dropout 0.4), α = (1-t)^3, AdamW 1e-4 with betas (0.9, 0.95), EMA 0.999, batch 512."""
  c = base_config()
  c.data.update(name=name, image_levels=256)
  c.model.update(type="unet", ch=96, ch_mult=(3, 4, 4), num_res_blocks=5, attn_resolutions=(16,),
                 head_dim=64, dropout=0.4, dtype="bfloat16", emb_features=32)
  c.diffusion.update(schedule="polynomial", schedule_power=3.0)
  c.optim.update(lr=1e-4, b1=0.9, b2=0.95, warmup_steps=2500, ema_decay=0.999)
  c.train.update(batch_size=512, num_steps=1_000_000, log_every=100, eval_every=10_000,
                 checkpoint_every=5000, keep_last=3, keep_every=100_000)
  c.eval.update(batch_size=256, num_batches=0)
  c.sample.update(num_samples=64, batch_size=64, steps=512, digit_source="marginal",
                  temperature_schedule=(-0.2, 2.0, 1.0), time_warp=(1.0, 1.7, 0.0))
  apply_variant(c, args)
  return c


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads 'configs/NAME.py[:args]' as --config does, for notebooks, scripts and tests."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise errors.MissingInput(f"config file {path!r} does not exist; the ones this project ships "
                              "are configs/*.py")
  module_spec = importlib.util.spec_from_file_location(
      "prime_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _tuples(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def load_json(path: str) -> ml_collections.ConfigDict:
  """The config a workdir saved in config.json (`path`: the workdir or the file itself).

  Keys of earlier versions come back under their current names; JSON lists come back as
  tuples, as the config files write them.
  """
  if os.path.isdir(path) or not path.endswith(".json"):
    path = os.path.join(path, "config.json")
  if not os.path.isfile(path):
    raise errors.MissingInput(f"{path} does not exist: training writes the config of a workdir "
                              "there (python -m prime_jax.main --mode=train)")
  with open(path) as f:
    raw = upgrade_saved(json.load(f))
  return ml_collections.ConfigDict(_tuples(raw))


def save_json(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes `config` to workdir/config.json, which eval, sample and resumed runs read back."""
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  return path
