"""A config made concrete: data info, model and loss, mesh and shardings, and jitted steps.

`build(config)` validates the config against the devices and the data before anything is
compiled; the three modes (train, evaluate, sample) and the sample scorer all start from it.
`restore` reads a workdir's checkpoint into the state shardings.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from prime_jax import checkpointing, config as config_lib, data, errors, sharding, step, xla_options
from prime_jax.data.registry import DatasetInfo
from prime_jax.subtokens import PrimeCode


@dataclasses.dataclass
class Experiment:
  """What a config needs before any state exists: data info, task, mesh and shardings."""

  config: ml_collections.ConfigDict
  info: DatasetInfo
  task: step.Task
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: Any
  example_shape: tuple

  @property
  def code(self) -> PrimeCode:
    return self.task.code

  @property
  def unit(self) -> str:
    """What one position is, for bits-per-<unit> figures."""
    if self.info.kind == "image":
      return "dim"
    return {"bytes": "byte", "chars": "char"}.get(self.info.tokenizer, "token")

  @property
  def compiler_options(self) -> dict:
    """What every jitted step of this experiment is compiled with (`prime_jax.xla_options`)."""
    return xla_options.compiler_options(self.config, self.task.code.vocab_size,
                                        self.mesh.devices.flat[0].platform)


def _check_model_fits_data(config: ml_collections.ConfigDict, info: DatasetInfo) -> None:
  wanted = {"transformer": "text", "unet": "image"}[config.model.type]
  if info.kind != wanted:
    other = "unet" if config.model.type == "transformer" else "transformer"
    raise config_lib.ConfigError(
        f"config.model.type={config.model.type!r} but dataset {info.name!r} is {info.kind}; "
        f"use model.type={other!r}")


def build(config: ml_collections.ConfigDict, devices: Optional[list] = None) -> Experiment:
  """Validates the config against the devices (default: all) and the data, before compiling."""
  devices = list(devices if devices is not None else jax.devices())
  config_lib.validate(config, len(devices))
  info = data.dataset_info(config.data)
  _check_model_fits_data(config, info)
  example_shape = tuple(info.example_shape)
  task = step.build_task(config, info.vocab_size, example_shape)
  data.check_compatible(config.data, task.code.vocab_size, example_shape)
  mesh = sharding.make_mesh(config, devices)
  rules = sharding.rules(config)
  with sharding.activate(mesh, rules):
    abstract = jax.eval_shape(
        lambda k: step.init_state(task, k, example_shape, boxed=True), jax.random.key(0))
  state_shardings = sharding.tree_shardings(abstract, mesh, rules)
  return Experiment(config, info, task, mesh, rules, state_shardings, example_shape)


def _on_mesh(exp: Experiment, jitted: Callable) -> Callable:
  """`jitted` called under the experiment's mesh and logical-axis rules."""
  @functools.wraps(jitted)
  def call(*args):
    with sharding.activate(exp.mesh, exp.rules):
      return jitted(*args)
  return call


def init_state(exp: Experiment, seed: int) -> step.TrainState:
  """A fresh state laid out in the state shardings."""
  with sharding.activate(exp.mesh, exp.rules):
    return jax.jit(lambda k: step.init_state(exp.task, k, exp.example_shape),
                   out_shardings=exp.state_shardings)(jax.random.key(seed))


def abstract_state(exp: Experiment) -> step.TrainState:
  """The state's shapes, dtypes and shardings, no arrays made: what a restore targets."""
  with sharding.activate(exp.mesh, exp.rules):
    shapes = jax.eval_shape(lambda k: step.init_state(exp.task, k, exp.example_shape),
                            jax.random.key(0))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                      exp.state_shardings)


def make_train_step(exp: Experiment) -> Callable:
  """`(state, tokens) -> (state, metrics)`, jitted with explicit shardings; donates the state."""
  jitted = jax.jit(functools.partial(step.train_step, exp.task),
                   in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                   out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                   donate_argnums=0, compiler_options=exp.compiler_options)
  return _on_mesh(exp, jitted)


def denoiser(exp: Experiment, params: Any) -> Callable:
  """`(y, t) -> logits` of the model at `params`, deterministic (no dropout)."""
  return lambda y, t: exp.task.model.apply({"params": params}, y, t, train=False)


def make_eval_step(exp: Experiment, num_time_samples: int) -> Callable:
  """`(params, tokens, mask, key) -> per-example sums` of `Loss.eval_sums`, batch-sharded."""
  def fn(params, tokens, mask, key):
    return exp.task.loss.eval_sums(denoiser(exp, params), tokens, mask, key, num_time_samples)
  batch = sharding.batch_sharding(exp.mesh)
  jitted = jax.jit(fn, in_shardings=(exp.state_shardings.params, batch, batch, None),
                   out_shardings=batch, compiler_options=exp.compiler_options)
  return _on_mesh(exp, jitted)


def make_log_prob_step(exp: Experiment) -> Callable:
  """`(params, tokens (B, L)) -> log p(x_i | x_<i) (B, L)` of a causal baseline, replicated."""
  if not exp.task.loss.objective.causal:
    raise errors.UserError(
        f"a model with diffusion.objective={exp.task.loss.objective.name!r} gives no "
        "left-to-right log-probabilities; use the causal baseline (e.g. "
        "configs/shakespeare.py:baseline=ar)")
  fn = lambda params, tokens: exp.task.loss.log_probs(denoiser(exp, params), tokens)
  jitted = jax.jit(fn, in_shardings=(exp.state_shardings.params,
                                     sharding.batch_sharding(exp.mesh)),
                   out_shardings=sharding.replicated(exp.mesh),
                   compiler_options=exp.compiler_options)
  return _on_mesh(exp, jitted)


def _check_has_checkpoint(workdir: str) -> None:
  """A one-line error when the workdir's checkpoint directory holds no step."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory) or not any(d.isdigit() for d in os.listdir(directory)):
    raise errors.MissingInput(
        f"no checkpoint in {directory}: train first with "
        f"python -m prime_jax.main --config=... --workdir={workdir} --mode=train")


def restore(exp: Experiment, workdir: str, step_number: int = -1
            ) -> tuple[int, step.TrainState]:
  """(step, state) of the newest checkpoint in `workdir` (or of `step_number` >= 0)."""
  _check_has_checkpoint(workdir)
  manager = checkpointing.make_manager(workdir, exp.config)
  return checkpointing.restore_latest(manager, abstract_state(exp), tx=exp.task.tx,
                                      step=None if step_number < 0 else step_number)


def restore_weights(exp: Experiment, workdir: str, step_number: int = -1, ema: bool = True
                    ) -> tuple[int, Any]:
  """(step, EMA or raw params) of the newest checkpoint (or of `step_number` >= 0): eval's and
  sampling's restore, which reads one copy of the weights and no optimizer state."""
  _check_has_checkpoint(workdir)
  found, params = checkpointing.restore_weights(
      checkpointing.make_reader(workdir), abstract_state(exp).params, ema,
      step=None if step_number < 0 else step_number)
  return int(found), params


def from_workdir(workdir: str, step_number: int = -1
                 ) -> tuple[Experiment, int, step.TrainState]:
  """The experiment a workdir's config.json describes, with its checkpoint restored."""
  exp = build(config_lib.load_json(workdir))
  found, state = restore(exp, workdir, step_number)
  return exp, int(found), state


def to_host(x: jax.Array) -> np.ndarray:
  """A global array gathered to every host as numpy."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
