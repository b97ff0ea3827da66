"""--mode=eval: the valid bound of a checkpoint on a split, and the held-out figures of training.

Both go through `evaluate_split`, the one evaluation path: the experiment's sharded step of
`Loss.eval_sums` over whole batches, `likelihood.collect`, and the flat result format of
`likelihood.EvalResult.to_dict` (valid_bits, valid_bits_se, ..., joint_bits, or nll_*).
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from prime_jax import data, errors, experiment, likelihood, sharding, writers
from prime_jax.data import registry
from prime_jax.experiment import Experiment

BOUND_NOTE = ("valid_* is an upper bound on the NLL (per-digit marginals); joint_* is the "
              "paper's objective, which is not a bound for ℓ > 1")


def count_mask(exp: Experiment, data_config: ml_collections.ConfigDict,
               tokens: np.ndarray) -> np.ndarray:
  """1 where a position counts: padding of unwrapped (per-sentence) text is left out."""
  info = exp.info
  if info.kind == "text" and info.pad_id is not None and not registry.resolved(
      data_config)["wrap"] and info.pad_id not in (info.bos_id, info.eos_id):
    return (tokens != info.pad_id).astype(np.float32)
  return np.ones(tokens.shape, np.float32)


def evaluate_split(exp: Experiment, params: Any, *, split: str, batch_size: int, num_batches: int,
                   num_time_samples: int, seed: int,
                   data_config: Optional[ml_collections.ConfigDict] = None) -> dict[str, Any]:
  """Per-token valid bound (and joint objective, not a bound) over `num_batches` (0 = all).

  Mean ± standard error over examples (`likelihood.ratio_estimate`); the causal baseline gives
  its exact NLL instead. Only whole batches are read (the remainder of a split is left out).
  """
  data_config = data_config or exp.config.data
  loader = data.make_loader(data_config, split, batch_size=batch_size // jax.process_count(),
                            seed=seed, shuffle=False, num_epochs=1, drop_remainder=True)
  eval_step = experiment.make_eval_step(exp, num_time_samples)
  key = jax.random.key(seed)
  batch_sharding = sharding.batch_sharding(exp.mesh)

  def one(i: int, batch: dict) -> dict[str, np.ndarray]:
    tokens = sharding.global_batch(batch["tokens"], batch_sharding)
    mask = sharding.global_batch(count_mask(exp, data_config, batch["tokens"]), batch_sharding)
    out = eval_step(params, tokens, mask, jax.random.fold_in(key, i))
    return {k: experiment.to_host(v) for k, v in out.items()}
  per_example = likelihood.collect(
      one, loader, num_batches, empty=f"split {split!r} gave no full batch of {batch_size} "
      "examples")
  result = likelihood.summarize(per_example, unit=exp.unit, num_time_samples=num_time_samples)
  return result.to_dict()


def headline(result: dict[str, Any]) -> str:
  """'valid 1.2345 ± 0.0012 bits/byte' (or the causal baseline's NLL) of a result."""
  main = "valid" if "valid_bits" in result else "nll"
  return (f"{main} {result[f'{main}_bits']:.4f} ± {result[f'{main}_bits_se']:.4f} "
          f"bits/{result['unit']}")


def _eval_data(exp: Experiment) -> ml_collections.ConfigDict:
  """The data config evaluated: the run's own, or config.eval.data_name zero-shot."""
  e = exp.config.eval
  data_config = exp.config.data
  if e.data_name:
    data_config = data_config.copy_and_resolve_references()
    data_config.name = e.data_name
    data.check_compatible(data_config, exp.code.vocab_size, exp.example_shape)
  if e.split not in exp.info.splits:
    raise errors.UserError(f"config.eval.split={e.split!r} is not a split of "
                           f"{data_config.name!r}; available: {list(exp.info.splits)}")
  return data_config


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The valid bound (mean ± s.e. over examples) on config.eval.split of a checkpoint.

  With config.eval.data_name set, evaluates zero-shot on that dataset (same tokenizer and length).
  """
  exp = experiment.build(config)
  e = config.eval
  data_config = _eval_data(exp)
  found, params = experiment.restore_weights(exp, workdir, config.sample.checkpoint_step,
                                             ema=e.use_ema)
  start = time.perf_counter()
  result = evaluate_split(exp, params, split=e.split, batch_size=e.batch_size,
                          num_batches=e.num_batches, num_time_samples=e.num_time_samples,
                          seed=config.seed + 2, data_config=data_config)
  out = {"checkpoint_step": found, "dataset": data_config.name, "split": e.split,
         "weights": "ema" if e.use_ema else "raw",
         "objective_trained": exp.task.loss.objective.name, "ell": exp.code.ell,
         "seconds": time.perf_counter() - start, **result}
  if e.get("reference_perplexity"):  # A published figure for this checkpoint, echoed beside ours.
    out["reference_perplexity"] = e.reference_perplexity
  if "joint_bits" in result:
    out["note"] = BOUND_NOTE
  path = writers.write_json(
      os.path.join(workdir, "eval", f"{data_config.name}_{e.split}_{found}.json"), out)
  if jax.process_index() == 0:
    main = "valid" if "valid_bits" in result else "nll"
    print(f"[eval] {data_config.name}/{e.split} @ step {found}: {headline(result)}, "
          f"perplexity {result[f'{main}_perplexity']:.3f} -> {path}", flush=True)
  return {"result_file": path, **out}
