"""--mode=sample, and the samples written during training: draw, decode and score samples.

A checkpoint is restored (the newest, or config.sample.checkpoint_step), the EMA weights are
used by default, and the samples are written under the workdir as .npy arrays, decoded text or
a PNG grid, with a summary.json (and sample-quality figures when a scorer is configured).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import tqdm

from prime_jax import data, errors, experiment, sample_quality, sampling, sharding, writers
from prime_jax.data import registry
from prime_jax.experiment import Experiment


def sampler_config(config: ml_collections.ConfigDict, seq_positions: int) -> sampling.SamplerConfig:
  """The sampler settings of config.sample; steps = 0 means T = the number of positions."""
  sample_cfg = config.sample
  opt = lambda key: tuple(sample_cfg.get(key)) if sample_cfg.get(key) else None
  return sampling.SamplerConfig(
      num_steps=sample_cfg.steps or seq_positions, digit_source=sample_cfg.digit_source,
      carry_over=config.diffusion.carry_over, grid=sample_cfg.grid, t_min=config.diffusion.t_min,
      temperature=sample_cfg.temperature, top_p=sample_cfg.top_p,
      draw_dtype=sample_cfg.get("draw_dtype", "float64"),
      temperature_schedule=opt("temperature_schedule"), corrector=opt("corrector"),
      time_warp=opt("time_warp"), invalid_policy=sample_cfg.get("invalid_policy", "resample"))


def prefix(exp: Experiment, batch: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  """(fixed_tokens, fixed_mask) from config.sample.prefix (text) or prefix_rows (images)."""
  sample_cfg = exp.config.sample
  if exp.info.kind == "text" and sample_cfg.prefix:
    tok = registry.make_tokenizer(registry.resolved(exp.config.data))
    ids = np.asarray(tok.encode(sample_cfg.prefix), np.int64)
    if exp.info.bos_id is not None and exp.info.eos_id is not None:
      ids = np.concatenate([[exp.info.bos_id], ids])  # Examples are framed BOS ... EOS.
    return sampling.condition_on_prefix(exp.task.code, np.tile(ids, (batch, 1)),
                                        (batch,) + exp.example_shape)
  rows = sample_cfg.get("prefix_rows", 0)
  if exp.info.kind == "image" and rows:
    height = exp.example_shape[0]
    if not 0 < rows < height:
      raise errors.UserError(f"config.sample.prefix_rows={rows} must lie in (0, {height})")
    loader = data.make_loader(exp.config.data, "validation", batch_size=batch, shuffle=False,
                              num_epochs=1)
    images = next(iter(loader))["tokens"]
    mask = np.zeros(images.shape, bool)
    mask[:, :rows] = True
    return images, mask
  return None, None


def sample(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Draws config.sample.num_samples samples from a checkpoint and writes them to the workdir."""
  exp = experiment.build(config)
  if not exp.task.loss.objective.can_sample:
    raise errors.UserError(
        f"config.diffusion.objective={config.diffusion.objective!r}: the causal baseline scores "
        "samples (generative perplexity) and is not sampled from here")
  sample_cfg = config.sample
  positions = int(np.prod(exp.example_shape))
  sconf = sampler_config(config, positions)
  fixed_tokens, fixed_mask = prefix(exp, sample_cfg.batch_size)
  measure = sample_quality.sample_metrics(config, exp)  # Checked before sampling.
  step, params = experiment.restore_weights(exp, workdir, sample_cfg.checkpoint_step,
                                            ema=sample_cfg.use_ema)
  out_dir = os.path.join(workdir, "samples", f"step_{step}")
  result = draw(exp, params, sconf, sample_cfg.num_samples, sample_cfg.batch_size,
                seed=config.seed + 3, fixed_tokens=fixed_tokens, fixed_mask=fixed_mask,
                progress=True)
  files = write_samples(exp, result, out_dir)
  summary = {"checkpoint_step": step, "settings": dataclasses.asdict(sconf),
             "weights": "ema" if sample_cfg.use_ema else "raw",
             **{k: v for k, v in result.items() if k != "tokens"}, "files": files}
  if measure is not None:
    summary["quality"] = measure(result["tokens"])
  files["summary"] = writers.write_json(os.path.join(out_dir, "summary.json"), summary)
  if jax.process_index() == 0:
    print(f"[sample] {sample_cfg.num_samples} samples, {result['num_calls']} network calls, "
          f"{result['num_idle']} idle steps, {result['seconds']:.1f} s -> {out_dir}", flush=True)
    if measure is not None:
      print(f"[sample] quality: {quality_line(summary['quality'])}", flush=True)
  return summary


def quality_line(q: dict[str, Any]) -> str:
  """One line of the sample-quality figures in `q` (gen-ppl, Fashion-MNIST FD, FID)."""
  parts = []
  if "gen_ppl" in q:
    nan = float("nan")
    parts.append(f"gen-ppl {q['gen_ppl']:.3f} (real data {q.get('reference_gen_ppl', nan):.3f}), "
                 f"unigram entropy {q['unigram_entropy']:.3f} nats "
                 f"(real data {q.get('reference_unigram_entropy', nan):.3f})")
  if "fd_fashion_mnist" in q:
    parts.append(f"Fashion-MNIST FD {q['fd_fashion_mnist']:.3f} ({q['fd_num_samples']} samples)")
  if "fid" in q:
    parts.append(f"FID {q['fid']:.3f} ({q['fid_num_samples']} samples against "
                 f"{q['fid_reference']})")
  return "; ".join(parts)


def draw(exp: Experiment, params: Any, sconf: sampling.SamplerConfig, num_samples: int,
         batch_size: int, seed: int, fixed_tokens: Optional[np.ndarray] = None,
         fixed_mask: Optional[np.ndarray] = None, progress: bool = False) -> dict[str, Any]:
  """Samples in batches; returns tokens (N, ...) and summed calls, idle steps and invalid codes."""
  model = exp.task.model
  apply_fn = lambda p, y, t: model.apply({"params": p}, y, t, train=False)
  shape = (batch_size,) + exp.example_shape
  fn = sampling.make_sample_fn(apply_fn, exp.task.code, exp.task.loss.schedule, shape, sconf,
                               time_agnostic=not exp.config.model.time_conditioning,
                               batch_sharding=sharding.batch_sharding(exp.mesh),
                               compiler_options=exp.compiler_options)
  batches = -(-num_samples // batch_size)
  iterator = range(batches)
  if progress and jax.process_index() == 0:
    iterator = tqdm.tqdm(iterator, desc="sampling", unit="batch")
  tokens, calls, idle, invalid = [], 0, 0, 0
  start = time.perf_counter()
  with sharding.activate(exp.mesh, exp.rules):
    for i in iterator:
      r = fn(params, jax.random.fold_in(jax.random.key(seed), i), fixed_tokens, fixed_mask)
      tokens.append(np.asarray(jax.device_get(r.tokens)))
      calls += int(r.num_calls)
      idle += int(r.num_idle)
      invalid += int(np.asarray(r.num_invalid).sum())
  return {"tokens": np.concatenate(tokens)[:num_samples], "num_calls": calls, "num_idle": idle,
          "num_steps_per_batch": sconf.num_steps + 1, "num_batches": batches,
          "num_invalid": invalid, "seconds": time.perf_counter() - start}


def write_samples(exp: Experiment, result: dict, out_dir: str) -> dict[str, str]:
  """tokens.npy always; decoded text for text data, a PNG grid for images."""
  os.makedirs(out_dir, exist_ok=True)
  tokens = result["tokens"]
  files = {"tokens": os.path.join(out_dir, "tokens.npy")}
  np.save(files["tokens"], tokens)
  if exp.info.kind == "text":
    files["text"] = os.path.join(out_dir, "samples.txt")
    with open(files["text"], "w", encoding="utf-8") as f:
      for i, row in enumerate(tokens):
        f.write(f"=== sample {i} ===\n{exp.info.decode(row)}\n")
  else:
    files["png"] = os.path.join(out_dir, "samples.png")
    save_image_grid(np.stack([exp.info.decode(x) for x in tokens]), files["png"])
  return files


def save_image_grid(images_NHWC: np.ndarray, path: str, columns: int = 8) -> None:
  """uint8 images (N, H, W, 1 or 3) tiled into one PNG with a 2-pixel border."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (optional: images only)
  n, h, w, c = images_NHWC.shape
  cols = min(columns, n)
  rows = -(-n // cols)
  grid = np.zeros((rows * (h + 2) + 2, cols * (w + 2) + 2, c), np.uint8)
  for i, img in enumerate(images_NHWC):
    r, q = divmod(i, cols)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = img
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
