"""One of the authors' released checkpoints -> a workdir that --mode=eval and --mode=sample read.

The workdir holds what training would have written: `checkpoints/<step>/` (an orbax TrainState
whose params are the chosen weights; EMA and optimizer state are left out, and restoring makes
the EMA equal to them and a fresh optimizer state), `config.json`, plus `config.py` (so
`--config=DIR/config.py` reloads exactly that config) and `converted_from.json` (file, weights,
C, ℓ, b, step). The model fields come from the file's shapes; ℓ and C must agree with the
config given (or the default configs/official_*.py). Training resumes from it too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from prime_jax import checkpointing, config as config_lib, data, experiment, step, torch_state
from prime_jax import workdir as workdir_lib
from prime_jax.convert import image, reading, text
from prime_jax.convert.reading import OfficialFormatError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")
DEFAULT_CONFIGS = {"text": "official_owt.py", "image": "official_cifar10.py"}
CONFIG_PY = '''"""The config of the converted checkpoint beside this file: its config.json."""

import os

from prime_jax import config


def get_config(arg=None):
  del arg
  return config.load_json(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json"))
'''


def read(path: str, weights: str = "ema", image_channels: int = 3) -> reading.OfficialModel:
  """The network in an official `.ckpt` (text) or `.pth` (image), EMA or raw weights."""
  obj = torch_state.load(path, lazy=True)
  if isinstance(obj, dict) and "state_dict" in obj:
    return text.read(obj, path, weights)
  if isinstance(obj, dict) and "model" in obj:
    return image.read(obj, path, weights, image_channels)
  keys = sorted(obj)[:12] if isinstance(obj, dict) else type(obj).__name__
  raise OfficialFormatError(f"{path} holds neither a Lightning text checkpoint ('state_dict') nor "
                            f"an image checkpoint ('model'); found {keys}")


def default_config(model: reading.OfficialModel) -> ml_collections.ConfigDict:
  """configs/official_owt.py or official_cifar10.py for the file's ℓ (and carry-over)."""
  arg = f"ell={model.ell}"
  if model.carry_over is not None:
    arg += f",carry_over={bool(model.carry_over)}"
  return config_lib.load(os.path.join(CONFIG_DIR, DEFAULT_CONFIGS[model.kind]) + ":" + arg)


def configure(model: reading.OfficialModel, config: ml_collections.ConfigDict
              ) -> ml_collections.ConfigDict:
  """A copy of `config` with the file's shapes; clear errors where ℓ or C disagree."""
  if config.model.ell != model.ell:
    raise OfficialFormatError(
        f"{model.path} holds a model with ℓ={model.ell}, but config.model.ell="
        f"{config.model.ell}; use the config with :ell={model.ell}")
  info = data.dataset_info(config.data)
  if info.vocab_size != model.vocab_size:
    raise OfficialFormatError(
        f"{model.path} holds a model of C={model.vocab_size} tokens, but the config's data "
        f"({info.name}, tokenizer {info.tokenizer!r}) has C={info.vocab_size}")
  out = ml_collections.ConfigDict(config.to_dict())
  fields = dict(model.model_fields)
  if model.kind == "image":
    if info.example_shape[-1] != 3:
      raise OfficialFormatError(f"{model.path}: the image models take 3 channels, the data "
                                f"{info.name} has {info.example_shape[-1]}")
    fields["attn_resolutions"] = image.attn_resolutions(model, info.example_shape[0])
  elif "num_heads" not in fields:
    print(f"[convert] {model.path} does not say its number of heads; using "
          f"config.model.num_heads={config.model.num_heads}", flush=True)
  for key, value in fields.items():
    out.model[key] = value
  if model.carry_over is not None and bool(model.carry_over) != out.diffusion.carry_over:
    print(f"[convert] note: trained with carry_over={bool(model.carry_over)}, the config scores "
          f"with diffusion.carry_over={out.diffusion.carry_over}", flush=True)
  return out


def network_params(model: reading.OfficialModel, config: ml_collections.ConfigDict) -> dict:
  if model.kind == "text":
    return text.params(model, config.model.num_heads, config.model.scan_layers)
  return image.params(model, config.model.head_dim)


def _checked(params: dict, run: experiment.Experiment, path: str) -> dict:
  """`params`, once their names and shapes are those of the run's model."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  ours = {checkpointing.path_name(p): tuple(x.shape) for p, x in leaves}
  differences = workdir_lib.shape_differences(ours, workdir_lib.expected_param_shapes(run))
  if differences:
    raise OfficialFormatError(f"{path}: the converted parameters do not fit the configured "
                              "model:\n  " + "\n  ".join(differences))
  return params


def build_state(run: experiment.Experiment, params: dict, step_number: int) -> step.TrainState:
  """A TrainState of `params` alone (no EMA, no optimizer state), on the run's shardings.

  `params` is emptied as its arrays are put on the device, so that the host copy of each is
  freed as soon as it is placed; restoring makes the EMA (= params) and a fresh optimizer state.
  """
  shardings = run.state_shardings
  key = jax.random.fold_in(jax.random.key(run.config.seed), 1)
  return step.TrainState(
      step=jax.device_put(jnp.asarray(step_number, jnp.int32), shardings.step),
      params=_move_to_devices(params, shardings.params), ema_params=None, opt_state=None,
      rng=jax.device_put(jax.random.key_data(key), shardings.rng),
      skipped=jax.device_put(jnp.zeros((), jnp.int32), shardings.skipped))


def _move_to_devices(host: dict, shardings: dict) -> dict:
  """The nested dict `host` placed on `shardings`, taking each array out of `host` as it goes."""
  out = {}
  for name in list(host):
    value = host.pop(name)
    out[name] = (_move_to_devices(value, shardings[name]) if isinstance(value, dict)
                 else jax.device_put(value, shardings[name]))
    del value
  return out


def _check_empty(workdir: str) -> None:
  steps = [d for d in checkpointing.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  if steps:
    raise FileExistsError(f"--workdir={workdir} already holds checkpoints (steps {sorted(steps)});"
                          " convert into a new directory")


def write_workdir(model: reading.OfficialModel, config: ml_collections.ConfigDict,
                  workdir: str, weights: str) -> dict[str, Any]:
  """Saves the converted state and configs in `workdir`; returns what was written."""
  _check_empty(workdir)
  # One device: no resharding work while saving; restores go onto any mesh.
  single = ml_collections.ConfigDict(config.to_dict())
  single.mesh.update(data=1, fsdp=1, tensor=1)
  run = experiment.build(single, devices=jax.local_devices()[:1])
  state = build_state(run, _checked(network_params(model, config), run, model.path), model.step)
  os.makedirs(workdir, exist_ok=True)
  single.train.async_checkpoint = False  # No snapshot copy of the state.
  manager = checkpointing.make_manager(workdir, single)
  try:
    checkpointing.save(manager, model.step, state, force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  summary = {"checkpoint": os.path.abspath(model.path), "weights": weights, "kind": model.kind,
             "vocab_size": model.vocab_size, "ell": model.ell, "base": model.base,
             "step": model.step, "carry_over_trained": model.carry_over,
             "source": {k: v for k, v in model.source.items() if _jsonable(v)},
             "config_json": config_lib.save_json(config, workdir)}
  with open(os.path.join(workdir, "config.py"), "w") as f:
    f.write(CONFIG_PY)
  with open(os.path.join(workdir, "converted_from.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def _jsonable(value: Any) -> bool:
  try:
    json.dumps(value)
    return True
  except TypeError:
    return False


def convert(checkpoint: str, workdir: str, weights: str = "ema",
            config: Optional[ml_collections.ConfigDict] = None) -> dict[str, Any]:
  """Reads `checkpoint`, checks it against `config` (default: configs/official_*.py for its
  ℓ), and writes the workdir; returns the summary also saved as converted_from.json."""
  model = read(checkpoint, weights)
  config = configure(model, config if config is not None else default_config(model))
  summary = write_workdir(model, config, workdir, weights)
  print(f"[convert] {model.kind} checkpoint {checkpoint}: C={model.vocab_size} ℓ={model.ell} "
        f"b={model.base} step {model.step}, {weights} weights -> {workdir}", flush=True)
  return summary
