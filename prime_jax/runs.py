"""--mode=eval and --mode=sample: what users run on a trained workdir.

Both restore a checkpoint (the newest, or config.sample.checkpoint_step), use the EMA weights by
default, and write their results under the workdir as JSON (plus decoded text, PNG grids and
.npy arrays for samples).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from prime_jax import checkpointing, sample_quality, sampling, sharding, trainer


def restore(run: trainer.Run, workdir: str, step: int = -1):
  """(step, state) of a checkpoint in `workdir`; a clear error when there is none."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory) or not any(d.isdigit() for d in os.listdir(directory)):
    raise FileNotFoundError(
        f"no checkpoint in {directory}: train first with "
        f"python -m prime_jax.main --config=... --workdir={workdir} --mode=train")
  manager = checkpointing.make_manager(workdir, run.config)
  target = trainer.init_state(run, run.config.seed)
  found, state = checkpointing.restore_latest(manager, target, step=None if step < 0 else step)
  return found, state


def _write_json(path: str, payload: dict) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=str)
  return path


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The valid bound (mean ± s.e. over examples) on config.eval.split of a checkpoint.

  With config.eval.data_name set, evaluates zero-shot on that dataset (same tokenizer and length).
  """
  run = trainer.prepare(config)
  e = config.eval
  data_config = config.data
  if e.data_name:
    from prime_jax import data  # pylint: disable=g-import-not-at-top
    data_config = config.data.copy_and_resolve_references()
    data_config.name = e.data_name
    data.check_compatible(data_config, run.task.code.vocab_size, run.example_shape)
  if e.split not in run.info.splits:
    raise ValueError(f"config.eval.split={e.split!r} is not a split of {data_config.name!r}; "
                     f"available: {list(run.info.splits)}")
  step, state = restore(run, workdir, config.sample.checkpoint_step)
  params = state.ema_params if e.use_ema else state.params
  start = time.perf_counter()
  result = trainer.evaluate_split(run, params, split=e.split, batch_size=e.batch_size,
                                  num_batches=e.num_batches, num_time_samples=e.num_time_samples,
                                  seed=config.seed + 2, data_config=data_config)
  unit = trainer._unit(run.info)  # pylint: disable=protected-access
  out = {"checkpoint_step": step, "dataset": data_config.name, "split": e.split,
         "weights": "ema" if e.use_ema else "raw", "num_time_samples": e.num_time_samples,
         "unit": unit, "objective_trained": run.task.objective, "ell": run.task.code.ell,
         "seconds": time.perf_counter() - start, **result}
  if e.get("reference_perplexity"):  # A published figure for this checkpoint, echoed beside ours.
    out["reference_perplexity"] = e.reference_perplexity
  if "joint_bits" in result:
    out["note"] = ("valid_* is an upper bound on the NLL (per-digit marginals); joint_* is the "
                   "paper's objective, which is not a bound for ℓ > 1")
  path = _write_json(os.path.join(workdir, "eval", f"{data_config.name}_{e.split}_{step}.json"),
                     out)
  if jax.process_index() == 0:
    main = "valid" if "valid_bits" in result else "nll"
    print(f"[eval] {data_config.name}/{e.split} @ step {step}: {main} "
          f"{result[f'{main}_bits']:.4f} ± {result[f'{main}_bits_se']:.4f} bits/{unit}, "
          f"perplexity {result[f'{main}_perplexity']:.3f} -> {path}", flush=True)
  return {"result_file": path, **out}


def sampler_config(config: ml_collections.ConfigDict, seq_positions: int) -> sampling.SamplerConfig:
  """The sampler settings of config.sample; steps = 0 means T = the number of positions."""
  s = config.sample
  opt = lambda key: tuple(s.get(key)) if s.get(key) else None
  return sampling.SamplerConfig(
      num_steps=s.steps or seq_positions, digit_source=s.digit_source,
      carry_over=config.diffusion.carry_over, grid=s.grid, t_min=config.diffusion.t_min,
      temperature=s.temperature, top_p=s.top_p, draw_dtype=s.get("draw_dtype", "float64"),
      temperature_schedule=opt("temperature_schedule"), corrector=opt("corrector"),
      time_warp=opt("time_warp"), invalid_policy=s.get("invalid_policy", "resample"))


def _prefix(run: trainer.Run, batch: int):
  """(fixed_tokens, fixed_mask) from config.sample.prefix (text) or prefix_rows (images)."""
  s = run.config.sample
  if run.info.kind == "text" and s.prefix:
    from prime_jax.data import registry  # pylint: disable=g-import-not-at-top
    tok = registry.make_tokenizer(registry.resolved(run.config.data))
    ids = np.asarray(tok.encode(s.prefix), np.int64)
    if run.info.bos_id is not None and run.info.eos_id is not None:
      ids = np.concatenate([[run.info.bos_id], ids])  # Examples are framed BOS ... EOS.
    return sampling.condition_on_prefix(run.task.code, np.tile(ids, (batch, 1)),
                                        (batch,) + run.example_shape)
  rows = s.get("prefix_rows", 0)
  if run.info.kind == "image" and rows:
    height = run.example_shape[0]
    if not 0 < rows < height:
      raise ValueError(f"config.sample.prefix_rows={rows} must lie in (0, {height})")
    from prime_jax import data  # pylint: disable=g-import-not-at-top
    loader = data.make_loader(run.config.data, "validation", batch_size=batch, shuffle=False,
                              num_epochs=1)
    images = next(iter(loader))["tokens"]
    mask = np.zeros(images.shape, bool)
    mask[:, :rows] = True
    return images, mask
  return None, None


def sample(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Draws config.sample.num_samples samples from a checkpoint and writes them to the workdir."""
  if config.diffusion.objective == "autoregressive":
    raise ValueError("config.diffusion.objective='autoregressive': the causal baseline scores "
                     "samples (generative perplexity) and is not sampled from here")
  run = trainer.prepare(config)
  s = config.sample
  positions = int(np.prod(run.example_shape))
  sconf = sampler_config(config, positions)
  fixed_tokens, fixed_mask = _prefix(run, s.batch_size)
  measure = sample_quality.sample_metrics(config, run)  # Checked before sampling.
  step, state = restore(run, workdir, s.checkpoint_step)
  params = state.ema_params if s.use_ema else state.params
  out_dir = os.path.join(workdir, "samples", f"step_{step}")
  result = draw(run, params, sconf, s.num_samples, s.batch_size, seed=config.seed + 3,
                fixed_tokens=fixed_tokens, fixed_mask=fixed_mask, progress=True)
  files = write_samples(run, result, out_dir)
  summary = {"checkpoint_step": step, "settings": dataclasses.asdict(sconf),
             "weights": "ema" if s.use_ema else "raw",
             **{k: v for k, v in result.items() if k != "tokens"}, "files": files}
  if measure is not None:
    summary["quality"] = measure(result["tokens"])
  files["summary"] = _write_json(os.path.join(out_dir, "summary.json"), summary)
  if jax.process_index() == 0:
    print(f"[sample] {s.num_samples} samples, {result['num_calls']} network calls, "
          f"{result['num_idle']} idle steps, {result['seconds']:.1f} s -> {out_dir}", flush=True)
    if measure is not None:
      print(f"[sample] quality: {_quality_line(summary['quality'])}", flush=True)
  return summary


def _quality_line(q: dict[str, Any]) -> str:
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


def draw(run: trainer.Run, params, sconf: sampling.SamplerConfig, num_samples: int,
         batch_size: int, seed: int, fixed_tokens=None, fixed_mask=None,
         progress: bool = False) -> dict[str, Any]:
  """Samples in batches; returns tokens (N, ...) and summed calls, idle steps and invalid codes."""
  model = run.task.model
  apply_fn = lambda p, y, t: model.apply({"params": p}, y, t, train=False)
  shape = (batch_size,) + run.example_shape
  fn = sampling.make_sample_fn(apply_fn, run.task.code, run.task.schedule, shape, sconf,
                               time_agnostic=not run.config.model.time_conditioning,
                               batch_sharding=sharding.batch_sharding(run.mesh))
  batches = -(-num_samples // batch_size)
  iterator = range(batches)
  if progress and jax.process_index() == 0:
    import tqdm  # pylint: disable=g-import-not-at-top
    iterator = tqdm.tqdm(iterator, desc="sampling", unit="batch")
  tokens, calls, idle, invalid = [], 0, 0, 0
  start = time.perf_counter()
  with sharding.activate(run.mesh, run.rules):
    for i in iterator:
      r = fn(params, jax.random.fold_in(jax.random.key(seed), i), fixed_tokens, fixed_mask)
      tokens.append(np.asarray(jax.device_get(r.tokens)))
      calls += int(r.num_calls)
      idle += int(r.num_idle)
      invalid += int(np.asarray(r.num_invalid).sum())
  return {"tokens": np.concatenate(tokens)[:num_samples], "num_calls": calls, "num_idle": idle,
          "num_steps_per_batch": sconf.num_steps + 1, "num_batches": batches,
          "num_invalid": invalid, "seconds": time.perf_counter() - start}


def write_samples(run: trainer.Run, result: dict, out_dir: str) -> dict[str, str]:
  """tokens.npy always; decoded text for text data, a PNG grid for images."""
  os.makedirs(out_dir, exist_ok=True)
  tokens = result["tokens"]
  files = {"tokens": os.path.join(out_dir, "tokens.npy")}
  np.save(files["tokens"], tokens)
  if run.info.kind == "text":
    files["text"] = os.path.join(out_dir, "samples.txt")
    with open(files["text"], "w", encoding="utf-8") as f:
      for i, row in enumerate(tokens):
        f.write(f"=== sample {i} ===\n{run.info.decode(row)}\n")
  else:
    files["png"] = os.path.join(out_dir, "samples.png")
    save_image_grid(np.stack([run.info.decode(x) for x in tokens]), files["png"])
  return files


def save_image_grid(images_NHWC: np.ndarray, path: str, columns: int = 8) -> None:
  """uint8 images (N, H, W, 1 or 3) tiled into one PNG with a 2-pixel border."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  n, h, w, c = images_NHWC.shape
  cols = min(columns, n)
  rows = -(-n // cols)
  grid = np.zeros((rows * (h + 2) + 2, cols * (w + 2) + 2, c), np.uint8)
  for i, img in enumerate(images_NHWC):
    r, q = divmod(i, cols)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = img
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
