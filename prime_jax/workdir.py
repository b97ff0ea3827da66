"""Workdir safety: refuse to resume from checkpoints written by an incompatible config.

A workdir's `config.json` and its newest checkpoint describe what the checkpoints hold. Resuming
them under a config with other model shapes, another ℓ, vocabulary, dataset or model type would
either fail deep inside orbax or, worse, silently train on garbage; `check` names each difference
first. `train.allow_incompatible_workdir=True` turns the refusal into a warning.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections
from jax.experimental import multihost_utils

from prime_jax import checkpointing, config as config_lib, errors, step
from prime_jax.data import registry

# (field, what it decides). Fields that only change speed or regularisation (dtype, remat,
# dropout) and the optimizer's numbers may change between runs of one workdir.
COMMON_FIELDS = (
    ("model.type", "model type"),
    ("model.ell", "ℓ, sub-tokens per token"),
    ("model.time_conditioning", "model inputs"),
    ("model.per_digit_tables", "embedding tables"),
    ("model.combine", "embedding shapes"),
    ("data.name", "dataset and data-iterator state"),
    ("data.tokenizer", "vocabulary"),
    ("data.image_levels", "vocabulary of pixel values"),
    ("data.seq_len", "example shape"),
)
TRANSFORMER_FIELDS = (
    ("model.d_model", "model shapes"), ("model.num_layers", "model shapes"),
    ("model.num_heads", "model shapes"), ("model.mlp_ratio", "model shapes"),
    ("model.cond_dim", "model shapes"), ("model.causal", "model type (causal baseline)"),
    ("model.scan_layers", "parameter layout (stacked layers)"),
)
UNET_FIELDS = (
    ("model.ch", "model shapes"), ("model.ch_mult", "model shapes"),
    ("model.num_res_blocks", "model shapes"), ("model.attn_resolutions", "model shapes"),
    ("model.head_dim", "model shapes"), ("model.emb_features", "model shapes"),
)


class IncompatibleWorkdirError(errors.UserError):
  """Checkpoints in the workdir that the config given cannot resume."""


def _get(tree: Any, field: str) -> Any:
  for key in field.split("."):
    if tree is None or key not in tree:
      return None
    tree = tree[key]
  return list(tree) if isinstance(tree, (tuple, list)) else tree


def _tokenizer(data: Any) -> Any:
  """The tokenizer a data config resolves to (None means the dataset's default)."""
  name, tok = _get(data, "name"), _get(data, "tokenizer")
  if tok is None and name is not None:
    try:
      tok = registry.spec_of(name).tokenizer
    except (KeyError, ValueError):
      pass
  return tok


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'field: X in the workdir, Y now (what it decides)' for each field that must not change."""
  now = json.loads(config.to_json_best_effort())
  fields = list(COMMON_FIELDS)
  if _get(saved, "model.type") == _get(now, "model.type"):
    fields += TRANSFORMER_FIELDS if _get(now, "model.type") == "transformer" else UNET_FIELDS
  out = []
  for field, meaning in fields:
    if field == "data.tokenizer":
      old, new = _tokenizer(saved.get("data")), _tokenizer(now.get("data"))
    else:
      old, new = _get(saved, field), _get(now, field)
    if field == ("data.seq_len" if _get(now, "model.type") == "unet" else "data.image_levels"):
      continue
    if old != new:
      out.append(f"{field}: {old!r} in the workdir, {new!r} now ({meaning})")
  return out


def shape_differences(saved: dict[str, tuple], expected: dict[str, tuple],
                      limit: int = 5) -> list[str]:
  """Parameters missing, extra or of another shape in the checkpoint (the first `limit`)."""
  out = [f"params/{k}: shape {saved[k]} in the checkpoint, {expected[k]} now"
         for k in sorted(saved.keys() & expected.keys()) if tuple(saved[k]) != tuple(expected[k])]
  out += [f"params/{k}: in the checkpoint, not in this model"
          for k in sorted(saved.keys() - expected.keys())]
  out += [f"params/{k}: in this model, not in the checkpoint"
          for k in sorted(expected.keys() - saved.keys())]
  if len(out) > limit:
    out = out[:limit] + [f"... and {len(out) - limit} more parameter differences"]
  return out


def expected_param_shapes(run: Any) -> dict[str, tuple[int, ...]]:
  """{'a/b/kernel': shape} of a fresh state of `run` (an Experiment), without computing it."""
  abstract = jax.eval_shape(
      lambda k: step.init_state(run.task, k, run.example_shape), jax.random.key(0))
  leaves = jax.tree_util.tree_flatten_with_path(abstract.params)[0]
  return {checkpointing.path_name(p): tuple(x.shape) for p, x in leaves}


def check(config: ml_collections.ConfigDict, workdir: str, run: Optional[Any] = None
          ) -> list[str]:
  """Raises IncompatibleWorkdirError when the workdir's checkpoints do not fit `config`.

  Returns the differences (empty when compatible or when there is nothing to resume); with
  `config.train.allow_incompatible_workdir` they are printed instead of raised.
  """
  checkpoint_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  steps = sorted(int(d) for d in checkpointing.listdir(checkpoint_dir) if d.isdigit())
  differences: list[str] = []
  if steps:
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
      try:
        with open(path) as f:
          differences = config_differences(config_lib.upgrade_saved(json.load(f)), config)
      except (OSError, ValueError) as e:
        print(f"[workdir] {path} is unreadable ({type(e).__name__}); comparing parameter "
              "shapes only", flush=True)
    if not differences and run is not None:
      saved = checkpointing.saved_param_shapes(checkpoint_dir)
      if saved is not None:
        differences = shape_differences(saved, expected_param_shapes(run))
  if jax.process_count() > 1:  # Every process has read config.json before the chief rewrites it.
    multihost_utils.sync_global_devices("prime_jax_workdir_check")
  if not differences:
    return []
  message = (f"workdir {workdir} holds checkpoints (steps {steps[0]}..{steps[-1]}) of an "
             "incompatible config:\n  " + "\n  ".join(differences))
  if config.train.allow_incompatible_workdir:
    print(f"[workdir] warning: {message}\n[workdir] train.allow_incompatible_workdir=True: "
          "restoring what fits anyway", flush=True)
    return differences
  raise IncompatibleWorkdirError(
      f"{message}\nuse another --workdir, or set --config.train.allow_incompatible_workdir=True "
      "to restore anyway")
