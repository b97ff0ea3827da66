"""Sample-quality figures for `--mode=sample`: what config.sample asks for, checked up front.

* Text: generative perplexity of samples under an autoregressive model trained with this project
  (the causal baseline, `load_scorer(workdir)`), with the samples' unigram entropy beside it.
* Images: the Fashion-MNIST classifier's Fréchet distance and FID (prime_jax.quality).
* `sample_metrics(config, run)` wires these into `--mode=sample`.

The maths and the feature networks live in prime_jax.quality.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from prime_jax import config as config_lib, data, experiment, losses, sharding
from prime_jax.quality import fashion_mnist, fid as fid_lib, text
from prime_jax.quality.__main__ import main


# --- Generative perplexity under the project's own autoregressive baseline. ---------------------

@dataclasses.dataclass
class Scorer:
  """An autoregressive model restored from a workdir; `log_prob_fn(tokens (B, L)) -> (B, L)`."""

  log_prob_fn: Callable[[np.ndarray], np.ndarray]
  run: Any
  step: int
  workdir: str


def load_scorer(workdir: str, *, use_ema: bool = True, step: int = -1,
                batch_size: int = 64) -> Scorer:
  """Restores the causal baseline trained in `workdir` (its config.json and checkpoint).

  `log_prob_fn` gives log p(x_i | x_<i) for every position (position 0 is predicted from no
  context); it runs in fixed chunks of `batch_size` rows, padded, so it compiles once.
  """
  config = config_lib.load_json(workdir)
  if not losses.get(config.diffusion.objective).causal:
    raise ValueError(
        f"{workdir} holds a model with diffusion.objective={config.diffusion.objective!r}; "
        "scoring samples needs the causal baseline (e.g. configs/shakespeare.py:baseline=ar)")
  run = experiment.build(config)
  found, params = experiment.restore_weights(run, workdir, step, ema=use_ema)
  jitted = experiment.make_log_prob_step(run)
  batch = sharding.batch_sharding(run.mesh)
  shards = run.mesh.shape["data"] * run.mesh.shape["fsdp"]
  chunk = -(-batch_size // shards) * shards
  length = run.example_shape[0]

  def log_prob_fn(tokens):
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] != length:
      raise ValueError(f"the scorer takes tokens of shape (N, {length}), got {tokens.shape}")
    out = []
    for start in range(0, len(tokens), chunk):
      part = tokens[start:start + chunk]
      padded = np.zeros((chunk, length), np.int32)
      padded[:len(part)] = part
      array = jax.make_array_from_callback(padded.shape, batch, lambda idx: padded[idx])
      with sharding.activate(run.mesh, run.rules):
        out.append(np.asarray(jitted(params, array))[:len(part)])
    return np.concatenate(out) if out else np.zeros((0, length), np.float32)
  return Scorer(log_prob_fn, run, int(found), workdir)


def check_scorer_fits(scorer_run: experiment.Experiment, run: experiment.Experiment,
                      scorer_workdir: str) -> None:
  """Raises ValueError unless the scorer shares the sampled model's vocabulary and length."""
  problems = []
  mine, theirs = run.task.code.vocab_size, scorer_run.task.code.vocab_size
  if mine != theirs or run.info.tokenizer != scorer_run.info.tokenizer:
    problems.append(f"vocabulary: {theirs} tokens ({scorer_run.info.tokenizer}, dataset "
                    f"{scorer_run.info.name!r}) in the scorer, {mine} tokens "
                    f"({run.info.tokenizer}, dataset {run.info.name!r}) in the sampled model")
  if tuple(scorer_run.example_shape) != tuple(run.example_shape):
    problems.append(f"sequence length: {scorer_run.example_shape[0]} in the scorer, "
                    f"{run.example_shape[0]} in the sampled model")
  if problems:
    raise ValueError(f"config.sample.scorer_workdir={scorer_workdir!r} cannot score these "
                     "samples: " + "; ".join(problems))


def held_out_tokens(run: experiment.Experiment, num: int, split: str = "validation") -> np.ndarray:
  """The first `num` examples of a held-out split of the run's data (fewer if it is shorter)."""
  loader = data.make_loader(run.config.data, split, batch_size=min(num, 256), shuffle=False,
                            num_epochs=1, drop_remainder=False)
  rows, have = [], 0
  for batch in loader:
    rows.append(np.asarray(batch["tokens"]))
    have += len(rows[-1])
    if have >= num:
      break
  return np.concatenate(rows)[:num]


def text_quality(scorer: Scorer, tokens: np.ndarray, reference: Optional[np.ndarray] = None, *,
                 skip_first: bool = True, batch_size: int = 64) -> dict[str, Any]:
  """Generative perplexity and unigram entropy of samples, and of real `reference` data."""
  ppl = text.generative_perplexity(scorer.log_prob_fn, tokens, batch_size=batch_size,
                                   skip_first=skip_first)
  out = {"gen_ppl": ppl["gen_ppl"], "gen_nats_per_token": ppl["nats_per_token"],
         "gen_ppl_num_tokens": ppl["num_tokens"], "unigram_entropy": text.unigram_entropy(tokens),
         "gen_ppl_skip_first": skip_first, "scorer_workdir": scorer.workdir,
         "scorer_step": scorer.step, "scorer_dataset": scorer.run.info.name}
  if reference is not None and len(reference):
    ref = text.generative_perplexity(scorer.log_prob_fn, reference, batch_size=batch_size,
                                     skip_first=skip_first)
    out.update(reference_gen_ppl=ref["gen_ppl"], reference_unigram_entropy=text.unigram_entropy(
        reference), reference_num_examples=len(reference))
  return out


# --- --mode=sample wiring. -----------------------------------------------------------------------

def sample_metrics(config: ml_collections.ConfigDict, run: experiment.Experiment
                   ) -> Optional[Callable[[np.ndarray], dict[str, Any]]]:
  """What config.sample asks to measure on samples of `run`: fn(tokens) -> figures, or None.

  Loads and checks the scorer, the classifier and the Inception weights (with FID's reference
  statistics) up front, so a bad setting fails before sampling.
  """
  sample_cfg = config.sample
  parts = []
  if sample_cfg.get("scorer_workdir", ""):
    if run.info.kind != "text":
      raise ValueError(f"config.sample.scorer_workdir is set but dataset {run.info.name!r} is "
                       f"{run.info.kind}: generative perplexity is for text samples")
    scorer = load_scorer(sample_cfg.scorer_workdir, batch_size=sample_cfg.batch_size)
    check_scorer_fits(scorer.run, run, sample_cfg.scorer_workdir)
    reference = held_out_tokens(run, sample_cfg.num_samples)
    parts.append(lambda tokens: text_quality(scorer, tokens, reference,
                                             batch_size=sample_cfg.batch_size))
  if sample_cfg.get("fd_classifier", ""):
    names = fashion_mnist.FASHION_MNIST_NAMES
    if run.info.name not in names or tuple(run.example_shape) != (28, 28, 1):
      raise ValueError(f"config.sample.fd_classifier is set but dataset {run.info.name!r} is not "
                       f"Fashion-MNIST (one of {names}): the classifier's reference statistics "
                       "are of Fashion-MNIST test images")
    levels = int(config.data.image_levels)
    fashion_mnist.load_classifier(sample_cfg.fd_classifier)
    fashion_mnist.reference_statistics(sample_cfg.fd_classifier, levels)
    parts.append(lambda tokens: fashion_mnist.fashion_fd(
        sample_cfg.fd_classifier, np.stack([run.info.decode(x) for x in tokens]), levels))
  if sample_cfg.get("inception_weights", ""):
    parts.append(_fid_metric(sample_cfg, run))
  if not parts:
    return None
  return lambda tokens: {k: v for part in parts for k, v in part(tokens).items()}


def _fid_metric(sample_cfg: ml_collections.ConfigDict,
                run: experiment.Experiment) -> Callable[[np.ndarray], dict[str, Any]]:
  """Checks config.sample's Inception settings and gets the reference statistics up front."""
  weights = sample_cfg.inception_weights
  field = f"config.sample.inception_weights={weights!r}"
  if run.info.kind != "image":
    raise ValueError(f"config.sample.inception_weights is set but dataset {run.info.name!r} is "
                     f"{run.info.kind}: FID is for image samples")
  if not os.path.isfile(weights):
    raise fid_lib.missing_weights(weights, field)
  try:
    fid_lib.load_inception(weights)
  except (OSError, ValueError) as e:
    raise ValueError(f"{field} cannot be used: {e}") from e
  ref = sample_cfg.get("inception_reference", "train")
  if ref.endswith(".npz"):
    reference = fid_lib.load_fid_statistics(ref, f"config.sample.inception_reference={ref!r}")
    described = ref
  elif ref in run.info.splits:
    num = int(sample_cfg.get("inception_reference_examples", 0))
    reference = fid_lib.inception_reference_statistics(weights, run.config.data, ref, num,
                                                       fid_lib.INCEPTION_BATCH)
    described = (f"{run.info.name} {ref} split ({num or 'all'} images) at "
                 f"{run.info.vocab_size} levels")
  else:
    raise ValueError(f"config.sample.inception_reference={ref!r} is invalid: expected a .npz of "
                     f"pytorch-fid statistics (mu, sigma) or a split of {run.info.name!r}, one "
                     f"of {run.info.splits}")

  def measure(tokens):
    images = run.info.decode(np.asarray(tokens))
    return {"fid": fid_lib.fid(weights, images, reference, fid_lib.INCEPTION_BATCH),
            "fid_num_samples": len(images), "fid_weights": weights, "fid_reference": described}
  return measure


if __name__ == "__main__":
  sys.exit(main())
