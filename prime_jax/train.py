"""--mode=train: the loop around the pure step, with logs, held-out bounds, samples and saves.

`train_and_evaluate(config, workdir)` builds the experiment, resumes from the newest readable
checkpoint, trains with periodic logs, held-out evaluation of the valid bound, samples and
checkpoints, and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from clu import parameter_overview
from jax._src import distributed
from jax.experimental import multihost_utils

from prime_jax import checkpointing, config as config_lib, data, evaluate, experiment, sample
from prime_jax import sharding, writers
from prime_jax import workdir as workdir_lib
from prime_jax.experiment import Experiment


class StopRequest:
  """Set by SIGTERM/SIGINT; the loop saves a checkpoint at the current step and exits.

  With several processes, JAX's preemption service keeps SIGTERM (no Python handler is put over
  it) and `reached_preemption_sync_point` picks one step for all hosts, so they save the same
  step; SIGINT on one host of such a run stops that host like a crash.
  """

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}
    self._multihost = jax.process_count() > 1 and _preemption_service_running()

  def install(self) -> None:
    for sig in () if self._multihost else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step`; called at every step (on every host)."""
    if self._multihost and multihost_utils.reached_preemption_sync_point(step):
      self.signum = signal.SIGTERM
    return self.signum is not None

  def uninstall(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    self.signum = signum


def _preemption_service_running() -> bool:
  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class NonFiniteError(RuntimeError):
  """A step whose loss or gradient was not finite, under train.nan_policy='stop'."""


@dataclasses.dataclass
class _Run:
  """The live objects of one training run."""

  exp: Experiment
  workdir: str
  state: Any
  data_iter: Any
  manager: checkpointing.Manager
  writer: writers.MetricWriter
  chief: bool


def _start(config: ml_collections.ConfigDict, workdir: str) -> _Run:
  """Builds the experiment, checks the workdir, and restores or initialises the state."""
  exp = experiment.build(config)
  chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.check(config, workdir, exp)  # Before config.json is rewritten.
  if chief:
    config_lib.save_json(config, workdir)
  loader = data.make_loader(config.data, "train",
                            batch_size=config.train.batch_size // jax.process_count(),
                            seed=config.seed, shuffle=True, num_epochs=None)
  data_iter = iter(loader)
  manager = checkpointing.make_manager(workdir, config)
  state = experiment.init_state(exp, config.seed)
  restored_step, restored = checkpointing.restore_latest(manager, state, data_iter,
                                                         set_aside_unreadable=True,
                                                         tx=exp.task.tx)
  if restored is not None:
    state = restored
    print(f"[train] resumed from step {restored_step} in {workdir}", flush=True)
  elif chief:
    _describe(exp, state)
  return _Run(exp, workdir, state, data_iter, manager,
              writers.MetricWriter(workdir, enabled=chief), chief)


def _describe(exp: Experiment, state) -> None:
  overview = parameter_overview.get_parameter_overview(state.params, include_stats=False)
  logging.info("parameters:\n%s", overview)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  code = exp.code
  print(f"[train] {exp.info.name}: C={code.vocab_size} ℓ={code.ell} b={code.base} "
        f"objective={exp.task.loss.objective.name} params={n_params:,} "
        f"mesh={dict(exp.mesh.shape)}", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       until_step: Optional[int] = None) -> dict[str, Any]:
  """Trains to config.train.num_steps (resuming when the workdir has checkpoints).

  `until_step` stops early at that step with a checkpoint, as a preemption would, without
  changing anything that depends on num_steps (the learning-rate schedule, say).
  """
  run = _start(config, workdir)
  train_cfg = config.train
  train_step = experiment.make_train_step(run.exp)
  batch_sharding = sharding.batch_sharding(run.exp.mesh)
  step = int(run.state.step)
  tokens_per_step = train_cfg.batch_size * int(np.prod(run.exp.example_shape))
  progress = writers.Progress(train_cfg.num_steps, tokens_per_step, step)
  stop = StopRequest()
  stop.install()
  pending = None  # (step, metrics) fetched one step late, so the host never waits on the device
  last_eval: dict[str, float] = {}
  try:
    last = train_cfg.num_steps if until_step is None else min(until_step, train_cfg.num_steps)
    while step < last:
      batch = next(run.data_iter)
      check_token_range(batch["tokens"], run.exp, step + 1)
      tokens = sharding.global_batch(batch["tokens"], batch_sharding)
      run.state, metrics = train_step(run.state, tokens)
      step += 1
      if pending is not None:
        check_finite(pending, train_cfg)
      pending = (step, metrics)
      last_eval = _periodic(run, step, metrics, progress) or last_eval
      if step % train_cfg.checkpoint_every == 0 or step == last:
        checkpointing.save(run.manager, step, run.state, run.data_iter)
      if stop.requested(step):
        check_finite(pending, train_cfg)
        checkpointing.save(run.manager, step, run.state, run.data_iter, force=True)
        print(f"[train] signal {stop.signum}: saved step {step}; exiting", flush=True)
        break
    if pending is not None:
      check_finite(pending, train_cfg)
  finally:
    stop.uninstall()
    run.manager.wait_until_finished()
    run.writer.flush()
  return {"step": step, "workdir": workdir, "held_out": last_eval,
          "skipped": int(run.state.skipped)}


def _periodic(run: _Run, step: int, metrics, progress: writers.Progress
              ) -> Optional[dict[str, float]]:
  """Logs, held-out evaluation and samples due at `step`; returns the evaluation, if any."""
  train_cfg = run.exp.config.train
  if step % train_cfg.log_every == 0 or step == train_cfg.num_steps:
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
    scalars.update(progress.update(step))
    run.writer.write_scalars(step, scalars)
    if run.chief:
      print("[train] " + writers.console_line(step, train_cfg.num_steps, scalars), flush=True)
  held_out = None
  if train_cfg.eval_every and (step % train_cfg.eval_every == 0 or step == train_cfg.num_steps):
    held_out = _held_out(run, step)
  can_sample = run.exp.task.loss.objective.can_sample
  if train_cfg.sample_every and step % train_cfg.sample_every == 0 and can_sample:
    _write_training_samples(run, step)
  return held_out


def check_token_range(tokens: np.ndarray, exp: Experiment, step: int) -> None:
  """Ids outside [0, C) would silently wrap in the digit code; refuse them with the step."""
  low, high = int(tokens.min()), int(tokens.max())
  if low < 0 or high >= exp.code.vocab_size:
    raise ValueError(f"dataset {exp.info.name!r} gave token ids in [{low}, {high}] at step "
                     f"{step}, outside the vocabulary [0, {exp.code.vocab_size})")


def check_finite(pending: tuple[int, dict], train_cfg: ml_collections.ConfigDict) -> None:
  """Stops (or, under nan_policy='skip', tolerates up to max_skipped_steps) non-finite steps.

  Uses the skip count returned with that step's metrics, not the state's later count.
  """
  step, metrics = pending
  if float(metrics["finite"]) == 1.0:
    return
  skipped = int(metrics["skipped"])
  bad = {k: float(v) for k, v in jax.device_get(metrics).items() if not np.isfinite(float(v))}
  bad = bad or {"grad_norm": float(metrics["grad_norm"])}
  if train_cfg.nan_policy == "skip" and skipped <= train_cfg.max_skipped_steps:
    print(f"[train] step {step}: non-finite {bad}; update skipped "
          f"({skipped}/{train_cfg.max_skipped_steps})", flush=True)
    return
  raise NonFiniteError(
      f"non-finite value at step {step}: {bad}; the update was not applied and no checkpoint "
      f"of it was written (train.nan_policy={train_cfg.nan_policy!r}, skipped so far "
      f"{skipped}, train.max_skipped_steps={train_cfg.max_skipped_steps})")


def _held_out(run: _Run, step: int) -> dict[str, float]:
  config = run.exp.config
  e = config.eval
  params = run.state.ema_params if e.use_ema else run.state.params
  result = evaluate.evaluate_split(run.exp, params, split=e.split, batch_size=e.batch_size,
                                   num_batches=config.train.eval_batches,
                                   num_time_samples=e.num_time_samples, seed=config.seed + 1)
  run.writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()
                                  if k not in ("unit", "num_time_samples")})
  if run.chief:
    print(f"[eval] step {step}: held-out {evaluate.headline(result)}"
          + (f" | joint (not a bound) {result['joint_bits']:.4f}" if "joint_bits" in result
             else ""), flush=True)
  return result


def _write_training_samples(run: _Run, step: int) -> None:
  """A few samples from the EMA weights: text file or PNG grid under workdir/samples/."""
  exp = run.exp
  sample_cfg = exp.config.sample
  sconf = sample.sampler_config(exp.config, int(np.prod(exp.example_shape)))
  result = sample.draw(exp, run.state.ema_params, sconf, sample_cfg.batch_size,
                       sample_cfg.batch_size,
                       seed=exp.config.seed + step)
  if run.chief:
    files = sample.write_samples(exp, result, os.path.join(run.workdir, "samples",
                                                           f"step_{step}"))
    print(f"[train] step {step}: samples -> {files.get('text') or files.get('png')}", flush=True)
