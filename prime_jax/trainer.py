"""The training loop: the side-effecting shell around the pure step in `training`.

`train_and_evaluate(config, workdir)` validates the config, builds data, model, mesh and state,
resumes from the newest readable checkpoint, trains with periodic logs, held-out evaluation of
the valid bound, samples and checkpoints, and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import signal
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from prime_jax import (checkpointing, config_lib, evaluation, objectives, sharding, training,
                       writers)
from prime_jax import workdir as workdir_lib

LN2 = math.log(2.0)


@dataclasses.dataclass
class Run:
  """A config turned into the objects a run needs (no state yet)."""

  config: ml_collections.ConfigDict
  info: Any
  task: training.Task
  mesh: Any
  rules: tuple
  state_shardings: Any
  example_shape: tuple


def prepare(config: ml_collections.ConfigDict, devices=None) -> Run:
  """Validates the config against the devices (default: all) and the data, before compiling."""
  from prime_jax import data  # pylint: disable=g-import-not-at-top
  devices = list(devices if devices is not None else jax.devices())
  config_lib.validate(config, len(devices))
  info = data.dataset_info(config.data)
  example_shape = tuple(info.example_shape)
  if config.model.type == "transformer" and info.kind != "text":
    raise ValueError(f"config.model.type='transformer' but dataset {info.name!r} is "
                     f"{info.kind}; use model.type='unet'")
  if config.model.type == "unet" and info.kind != "image":
    raise ValueError(f"config.model.type='unet' but dataset {info.name!r} is {info.kind}; "
                     "use model.type='transformer'")
  task = training.build_task(config, info.vocab_size, example_shape)
  data.check_compatible(config.data, task.code.vocab_size, example_shape)
  mesh = sharding.make_mesh(config, devices)
  rules = sharding.rules(config)
  with sharding.activate(mesh, rules):
    abstract = jax.eval_shape(
        lambda k: training.init_state(task, k, example_shape, boxed=True), jax.random.key(0))
  state_shardings = sharding.tree_shardings(abstract, mesh, rules)
  return Run(config, info, task, mesh, rules, state_shardings, example_shape)


def init_state(run: Run, seed: int) -> training.TrainState:
  with sharding.activate(run.mesh, run.rules):
    return jax.jit(lambda k: training.init_state(run.task, k, run.example_shape),
                   out_shardings=run.state_shardings)(jax.random.key(seed))


def make_train_step(run: Run):
  """The jitted step with explicit shardings; the old state's buffers are donated."""
  step = functools.partial(training.train_step, run.task)
  jitted = jax.jit(step, in_shardings=(run.state_shardings, sharding.batch_sharding(run.mesh)),
                   out_shardings=(run.state_shardings, sharding.replicated(run.mesh)),
                   donate_argnums=0)

  def call(state, tokens):
    with sharding.activate(run.mesh, run.rules):
      return jitted(state, tokens)
  return call


def make_eval_step(run: Run, num_time_samples: int):
  """Jitted per-example held-out sums (nats) and token counts, batch sharded over the mesh.

  Diffusion models: `evaluation.eval_step` (valid bound and joint objective, K antithetic times
  per example). The autoregressive baseline: its exact NLL.
  """
  task = run.task

  def fn(params, tokens, mask, key):
    apply = lambda y, t: task.model.apply({"params": params}, y, t, train=False)
    if task.objective == "autoregressive":
      logits = apply(training.autoregressive_inputs(task.code, tokens), None)
      nll = -objectives.token_log_probs(task.code, logits, tokens) * mask
      return {"nll": nll.reshape(nll.shape[0], -1).sum(-1),
              "count": mask.reshape(mask.shape[0], -1).sum(-1)}
    return evaluation.eval_step(key, apply, task.code, task.schedule, tokens, mask,
                                num_time_samples=num_time_samples, carry_over=task.carry_over,
                                t_min=task.t_min)
  batch = sharding.batch_sharding(run.mesh)
  jitted = jax.jit(fn, in_shardings=(run.state_shardings.params, batch, batch, None),
                   out_shardings=batch)

  def call(params, tokens, mask, key):
    with sharding.activate(run.mesh, run.rules):
      return jitted(params, tokens, mask, key)
  return call


def _flat(name: str, estimate) -> dict[str, float]:
  return {f"{name}_nats": estimate.mean, f"{name}_nats_se": estimate.se,
          f"{name}_bits": estimate.mean / LN2, f"{name}_bits_se": estimate.se / LN2,
          f"{name}_perplexity": float(np.exp(estimate.mean))}


def _count_mask(run: Run, data_config, tokens: np.ndarray) -> np.ndarray:
  """1 where a position counts: padding of unwrapped (per-sentence) text is left out."""
  from prime_jax.data import registry  # pylint: disable=g-import-not-at-top
  info = run.info
  if info.kind == "text" and info.pad_id is not None and not registry.resolved(
      data_config)["wrap"] and info.pad_id not in (info.bos_id, info.eos_id):
    return (tokens != info.pad_id).astype(np.float32)
  return np.ones(tokens.shape, np.float32)


def evaluate_split(run: Run, params, *, split: str, batch_size: int, num_batches: int,
                   num_time_samples: int, seed: int, data_config=None) -> dict[str, float]:
  """Per-token valid bound (and joint objective, not a bound) over `num_batches` (0 = all).

  Mean ± standard error over examples (`evaluation.ratio_estimate`); the AR baseline gives its
  exact NLL instead. Only whole batches are read (the remainder of a split is left out).
  """
  from prime_jax import data  # pylint: disable=g-import-not-at-top
  data_config = data_config or run.config.data
  per_process = batch_size // jax.process_count()
  loader = data.make_loader(data_config, split, batch_size=per_process, seed=seed, shuffle=False,
                            num_epochs=1, drop_remainder=True)
  step = make_eval_step(run, num_time_samples)
  key = jax.random.key(seed)
  batch_sharding = sharding.batch_sharding(run.mesh)
  collected: dict[str, list] = {}
  for i, batch in enumerate(loader):
    if num_batches and i >= num_batches:
      break
    tokens = sharding.global_batch(batch["tokens"], batch_sharding)
    mask = sharding.global_batch(_count_mask(run, data_config, batch["tokens"]), batch_sharding)
    for k, v in step(params, tokens, mask, jax.random.fold_in(key, i)).items():
      collected.setdefault(k, []).append(_to_host(v))
  if not collected:
    raise ValueError(f"split {split!r} gave no full batch of {batch_size} examples")
  cat = {k: np.concatenate(v) for k, v in collected.items()}
  if "nll" in cat:
    out = _flat("nll", evaluation.ratio_estimate(cat["nll"], cat["count"]))
  else:
    res = evaluation.summarize(cat["valid"], cat["joint"], cat["count"],
                               num_time_samples=num_time_samples)
    out = {**_flat("valid", res.valid), **_flat("joint", res.joint)}
    del out["joint_perplexity"]  # The joint objective is not a likelihood.
  out.update(num_examples=int((cat["count"] > 0).sum()), num_tokens=float(cat["count"].sum()))
  return out


def _to_host(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


class _StopRequest:
  """Set by SIGTERM/SIGINT; the loop saves a checkpoint at the current step and exits.

  With several processes, JAX's preemption service keeps SIGTERM (no Python handler is put over
  it) and `reached_preemption_sync_point` picks one step for all hosts, so they save the same
  step; SIGINT on one host of such a run stops that host like a crash.
  """

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}
    self._multihost = jax.process_count() > 1 and _preemption_service_running()

  def install(self):
    for sig in () if self._multihost else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step`; called at every step (on every host)."""
    if self._multihost:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = signal.SIGTERM
    return self.signum is not None

  def uninstall(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    self.signum = signum


def _preemption_service_running() -> bool:
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class NonFiniteError(RuntimeError):
  pass


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       until_step: Optional[int] = None) -> dict[str, Any]:
  """Trains to config.train.num_steps (resuming when the workdir has checkpoints).

  `until_step` stops early at that step with a checkpoint, as a preemption would, without
  changing anything that depends on num_steps (the learning-rate schedule, say).
  """
  from prime_jax import data  # pylint: disable=g-import-not-at-top
  run = prepare(config)
  t = config.train
  chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.check(config, workdir, run)  # Before config.json is rewritten.
  if chief:
    save_config(config, workdir)
  writer = writers.MetricWriter(workdir, enabled=chief)
  per_process = t.batch_size // jax.process_count()
  loader = data.make_loader(config.data, "train", batch_size=per_process, seed=config.seed,
                            shuffle=True, num_epochs=None)
  data_iter = iter(loader)
  manager = checkpointing.make_manager(workdir, config)
  state = init_state(run, config.seed)
  restored_step, restored = checkpointing.restore_latest(manager, state, data_iter,
                                                         set_aside_unreadable=True)
  if restored is not None:
    state = restored
    print(f"[train] resumed from step {restored_step} in {workdir}", flush=True)
  elif chief:
    from clu import parameter_overview  # pylint: disable=g-import-not-at-top
    overview = parameter_overview.get_parameter_overview(state.params, include_stats=False)
    logging.info("parameters:\n%s", overview)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"[train] {run.info.name}: C={run.task.code.vocab_size} ℓ={run.task.code.ell} "
          f"b={run.task.code.base} objective={run.task.objective} params={n_params:,} "
          f"mesh={dict(run.mesh.shape)}", flush=True)
  train_step = make_train_step(run)
  batch_sharding = sharding.batch_sharding(run.mesh)
  tokens_per_step = t.batch_size * int(np.prod(run.example_shape))
  step = int(state.step)
  progress = writers.Progress(t.num_steps, tokens_per_step, step)
  stop = _StopRequest()
  stop.install()
  pending = None  # (step, metrics) fetched one step late, so the host never waits on the device
  last_eval: dict[str, float] = {}
  try:
    last = t.num_steps if until_step is None else min(until_step, t.num_steps)
    while step < last:
      batch = next(data_iter)
      _check_token_range(batch["tokens"], run, step + 1)
      tokens = sharding.global_batch(batch["tokens"], batch_sharding)
      state, metrics = train_step(state, tokens)
      step += 1
      if pending is not None:
        _check_finite(pending, t)
      pending = (step, metrics)
      if step % t.log_every == 0 or step == t.num_steps:
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars.update(progress.update(step))
        writer.write_scalars(step, scalars)
        if chief:
          print("[train] " + writers.console_line(step, t.num_steps, scalars), flush=True)
      if t.eval_every and (step % t.eval_every == 0 or step == t.num_steps):
        last_eval = _held_out(run, state, step, writer, chief)
      if t.sample_every and step % t.sample_every == 0 and chief_can_sample(run):
        _write_training_samples(run, state, step, workdir)
      if step % t.checkpoint_every == 0 or step == last:
        checkpointing.save(manager, step, state, data_iter)
      if stop.requested(step):
        _check_finite(pending, t)
        checkpointing.save(manager, step, state, data_iter, force=True)
        print(f"[train] signal {stop.signum}: saved step {step}; exiting", flush=True)
        break
    if pending is not None:
      _check_finite(pending, t)
  finally:
    stop.uninstall()
    manager.wait_until_finished()
    writer.flush()
  return {"step": step, "workdir": workdir, "held_out": last_eval,
          "skipped": int(state.skipped)}


def _check_token_range(tokens: np.ndarray, run: Run, step: int) -> None:
  """Ids outside [0, C) would silently wrap in the digit code; refuse them with the step."""
  low, high = int(tokens.min()), int(tokens.max())
  if low < 0 or high >= run.task.code.vocab_size:
    raise ValueError(f"dataset {run.info.name!r} gave token ids in [{low}, {high}] at step {step}, "
                     f"outside the vocabulary [0, {run.task.code.vocab_size})")


def _check_finite(pending, t) -> None:
  """Stops (or, under nan_policy='skip', tolerates up to max_skipped_steps) non-finite steps.

  Uses the skip count returned with that step's metrics, not the state's later count.
  """
  step, metrics = pending
  if float(metrics["finite"]) == 1.0:
    return
  skipped = int(metrics["skipped"])
  bad = {k: float(v) for k, v in jax.device_get(metrics).items() if not np.isfinite(float(v))}
  bad = bad or {"grad_norm": float(metrics["grad_norm"])}
  if t.nan_policy == "skip" and skipped <= t.max_skipped_steps:
    print(f"[train] step {step}: non-finite {bad}; update skipped "
          f"({skipped}/{t.max_skipped_steps})", flush=True)
    return
  raise NonFiniteError(
      f"non-finite value at step {step}: {bad}; the update was not applied and no checkpoint "
      f"of it was written (train.nan_policy={t.nan_policy!r}, skipped so far "
      f"{skipped}, train.max_skipped_steps={t.max_skipped_steps})")


def _held_out(run: Run, state, step: int, writer, chief: bool) -> dict[str, float]:
  e = run.config.eval
  params = state.ema_params if e.use_ema else state.params
  result = evaluate_split(run, params, split=e.split, batch_size=e.batch_size,
                          num_batches=run.config.train.eval_batches,
                          num_time_samples=e.num_time_samples, seed=run.config.seed + 1)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()})
  if chief:
    main = "valid" if "valid_bits" in result else "nll"
    unit = _unit(run.info)
    print(f"[eval] step {step}: held-out {main} {result[f'{main}_bits']:.4f} "
          f"± {result[f'{main}_bits_se']:.4f} bits/{unit}"
          + (f" | joint (not a bound) {result['joint_bits']:.4f}" if "joint_bits" in result
             else ""), flush=True)
  return result


def chief_can_sample(run: Run) -> bool:
  return run.task.objective != "autoregressive"


def _write_training_samples(run: Run, state, step: int, workdir: str) -> None:
  """A few samples from the EMA weights: text file or PNG grid under workdir/samples/."""
  from prime_jax import runs  # pylint: disable=g-import-not-at-top
  s = run.config.sample
  sconf = runs.sampler_config(run.config, int(np.prod(run.example_shape)))
  result = runs.draw(run, state.ema_params, sconf, s.batch_size, s.batch_size,
                     seed=run.config.seed + step)
  if jax.process_index() == 0:
    files = runs.write_samples(run, result, os.path.join(workdir, "samples", f"step_{step}"))
    print(f"[train] step {step}: samples -> {files.get('text') or files.get('png')}", flush=True)


def _unit(info) -> str:
  if info.kind == "image":
    return "dim"
  return {"bytes": "byte", "chars": "char"}.get(info.tokenizer, "token")
