"""The OpenWebText-small train step (configs/openwebtext.py: DiT 12 × 768, C = 50257, L = 1024).

On an accelerator: step time, tokens/s, MFU against the device's peak, compiled peak memory
(`memory_analysis`) and the share of the step spent outside the blocks (noising, the fused
head and the objective), measured as the full step minus a step whose loss reads the blocks'
output directly. On a CPU only the compiled peak memory, at the batch asked for (no timing),
or, compiled for a GPU that is not here (`gpu_target`), its memory and roofline
(`gpu_roofline`). Every GPU compile also prints its roofline.
  python3 -m benchmarks.train_step --owt [--owt_batch 32] [--peak_tflops 989]
      [--owt_set model.remat=True ...] [--owt_no_share] [--owt_profile DIR]
"""

from __future__ import annotations

import copy
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from benchmarks import gpu_roofline
from prime_jax import config as config_lib, sharding, step as step_lib, xla_options
from prime_jax.models import transformer_body_matmul_params

GPT2_VOCAB = 50257
OWT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs", "openwebtext.py")
# Dense bf16 peaks (TFLOP/s) by device kind, for MFU when --peak_tflops is not given.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0,
                    "TPU v5 lite": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0}


def owt_config(batch: int, ell: int = 2, carry_over: bool = True,
               overrides: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """configs/openwebtext.py (its remat, scan and fused-head settings) on one device at a
  micro-batch of `batch` sequences, with 'section.key=value' `overrides` (checked, then the
  whole config validated, before anything compiles)."""
  c = config_lib.load(f"{OWT_CONFIG}:ell={ell},carry_over={carry_over}")
  c.train.batch_size = batch
  c.mesh.update(data=1, fsdp=1, tensor=1)
  for item in overrides:
    _override(c, item)
  config_lib.validate(c, 1)
  return c


def _override(c: ml_collections.ConfigDict, item: str) -> None:
  key, eq, raw = item.partition("=")
  section, dot, field = key.strip().partition(".")
  if not (eq and dot) or section not in c or not isinstance(c[section], ml_collections.ConfigDict):
    raise config_lib.ConfigError(f"override {item!r} is not section.key=value with a section "
                                 f"of {sorted(c.keys())}")
  if field not in c[section]:
    raise config_lib.ConfigError(f"override {item!r}: config.{section} has no key {field!r}; "
                                 f"known: {sorted(c[section].keys())}")
  try:
    c[section][field] = config_lib.literal(raw)
  except TypeError as e:
    raise config_lib.ConfigError(f"override {item!r}: {e}") from None


def model_flops(config: ml_collections.ConfigDict) -> float:
  """Model FLOPs of one step (6·N·tokens + attention + head), not counting rematerialisation."""
  m, seq, batch = config.model, config.data.seq_len, config.train.batch_size
  n_body = transformer_body_matmul_params(m.d_model, m.num_layers, m.mlp_ratio)
  return (6 * n_body * batch * seq + 12 * m.num_layers * seq**2 * m.d_model * batch
          + 6 * m.d_model * GPT2_VOCAB * batch * seq)


def _body_only_step(task: step_lib.Task, state: step_lib.TrainState, tokens: jax.Array):
  """The train step with noising, head and objective replaced by a linear read of the blocks'
  output (B, L, D): what is left when the head and the objective cost nothing."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  y_BLl = task.code.encode(tokens)
  t_B = jnp.full((tokens.shape[0],), 0.5)

  def loss_fn(params):
    h_BLD = task.model.apply({"params": params}, y_BLl, t_B, train=True,
                             rngs={"dropout": key}, return_features=True)
    return jnp.mean(h_BLD.astype(jnp.float32))
  grads = jax.grad(loss_fn)(state.params)
  updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params, 1.0 - task.ema_decay)
  return state.replace(params=params, ema_params=ema, opt_state=opt_state,
                       step=state.step + 1), {"grad_norm": optax.tree.norm(grads)}


def compile_step(config: ml_collections.ConfigDict, step_fn: Callable = step_lib.train_step,
                 device: Any = None) -> tuple[Any, step_lib.Task, Any]:
  """(compiled step, task, state shardings) of `step_fn` for `config` on `device` (default:
  the first device; a `gpu_target.compile_only_device` compiles for a GPU that is not here)."""
  seq = config.data.seq_len
  device = device or jax.devices()[0]
  if device.platform == "gpu" and jax.default_backend() != "gpu" and (
      config.model.get("attention_impl", "auto") == "auto"):
    config = copy.deepcopy(config)  # 'auto' looks at the host: ask for what it picks on a GPU
    config.model.attention_impl = "cudnn"
  task = step_lib.build_task(config, GPT2_VOCAB, (seq,))
  mesh = sharding.make_mesh(config, [device])
  rules = sharding.rules(config)
  key = jax.random.key(0)  # made on the host: a compile-only device cannot hold it
  with sharding.activate(mesh, rules):
    boxed = jax.eval_shape(lambda k: step_lib.init_state(task, k, (seq,), boxed=True), key)
    shard = sharding.tree_shardings(boxed, mesh, rules)
    abstract = jax.eval_shape(lambda k: step_lib.init_state(task, k, (seq,)), key)
    tokens = jax.ShapeDtypeStruct((config.train.batch_size, seq), jnp.int32,
                                  sharding=sharding.batch_sharding(mesh))
    options = xla_options.compiler_options(config, GPT2_VOCAB, device.platform)
    compiled = jax.jit(functools.partial(step_fn, task), in_shardings=(shard, tokens.sharding),
                       out_shardings=(shard, None), donate_argnums=0, compiler_options=options
                       ).lower(abstract, tokens).compile()
  return compiled, task, shard


def compiled_flops(compiled: Any) -> float:
  """XLA's FLOP count of a compiled program (NaN where the backend gives none). Loop bodies
  count once, so it ranks programs of one shape rather than measuring MFU."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float((cost or {}).get("flops", float("nan")))


def peak_bytes(compiled: Any) -> int:
  """Compiled peak device memory: arguments + outputs (less donated aliases) + temporaries."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes + m.generated_code_size_in_bytes)


def _time(compiled: Any, task: step_lib.Task, shard: Any, config: ml_collections.ConfigDict,
          repeats: int, profile_dir: str = "") -> float:
  """Median seconds of `compiled` over `repeats` steps after one warm-up step; with
  `profile_dir`, a `jax.profiler` trace of four more steps (one warm-up) is written there."""
  seq, batch = config.data.seq_len, config.train.batch_size
  init = jax.jit(lambda k: step_lib.init_state(task, k, (seq,)), out_shardings=shard)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, GPT2_VOCAB, (batch, seq)),
                       jnp.int32)
  sec = median_step_seconds(compiled, init(jax.random.key(0)), tokens, repeats)
  if profile_dir:  # a fresh state: the timed steps donated theirs
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      median_step_seconds(compiled, init(jax.random.key(0)), tokens, 3)
  return sec


def median_step_seconds(step: Callable, state: Any, tokens: jax.Array, repeats: int) -> float:
  """Median wall seconds of `state, metrics = step(state, tokens)` over `repeats` calls, after
  one warm-up call (the state is donated, so each call takes the last one's output)."""
  state, metrics = step(state, tokens)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = step(state, tokens)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def device_peak_tflops(given: float) -> float:
  """`given` if > 0, else the table entry whose name the device kind contains (0 if none)."""
  if given > 0:
    return given
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in kind.lower()), 0.0)


def _roofline(compiled: Any, kind: str, config: ml_collections.ConfigDict, out: dict) -> str:
  """`gpu_roofline`'s lower bound on the step's time and the MFU it allows, added to `out`."""
  bandwidth = next((v for k, v in gpu_roofline.BANDWIDTH.items() if k in kind), 0.0)
  peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), 0.0) * 1e12
  if not (bandwidth and peak):
    return ""
  r = gpu_roofline.estimate(compiled.as_text(), peak, bandwidth,
                            scope={"PrimeTransformer": "blocks"})
  ceiling = model_flops(config) / r.seconds / peak
  out.update(roofline_s=r.seconds, mfu_ceiling=ceiling)
  parts = ", ".join(f"{scope} {kind_} {sec * 1e3:.1f}" for (scope, kind_), sec
                    in sorted(r.by.items(), key=lambda kv: -kv[1]))
  return (f"; roofline {r.seconds * 1e3:.1f} ms ({parts}; "
          f"{r.bytes / 1e9:.0f} GB moved), MFU at most {ceiling:.1%}")


def report(batch: int, repeats: int, peak_tflops: float,
           config: ml_collections.ConfigDict | None = None, timed: bool | None = None,
           head_share: bool = True, profile_dir: str = "", device: Any = None) -> dict:
  """Prints and returns the OWT-small figures at `batch` (or of `config`); timed by default
  only on an accelerator. `head_share=False` skips the second (body-only) compile. A
  compile-only `device` (`gpu_target`) gives that GPU's compiled peak memory and roofline."""
  config = config or owt_config(batch)
  batch = config.train.batch_size
  device = device or jax.devices()[0]
  compile_only = device.platform != jax.default_backend()
  timed = jax.default_backend() != "cpu" and not compile_only if timed is None else timed
  compiled, task, shard = compile_step(config, device=device)
  peak = peak_bytes(compiled)
  m = config.model
  remat = m.remat_policy if m.remat else "off"
  out = {"batch": batch, "remat": remat, "peak_bytes": peak}
  line = (f"OpenWebText-small bf16, B={batch}×{config.data.seq_len}, remat={remat}, "
          f"scan_layers={m.scan_layers}, fused_head_skip_rows={m.fused_head_skip_rows}: "
          "compiled peak memory "
          f"{peak / 2**30:.2f} GiB")
  if device.platform == "gpu":
    line += _roofline(compiled, device.device_kind, config, out)
  if not timed:
    where = f", compiled for an {device.device_kind} on this host" if compile_only else ""
    print(f"{line} (memory only{where})", flush=True)
    return out
  sec = _time(compiled, task, shard, config, repeats, profile_dir)
  if profile_dir:  # the optimized HLO names the fusions the trace shows
    with open(os.path.join(profile_dir, "step.hlo.txt"), "w") as f:
      f.write(compiled.as_text())
  tflops = device_peak_tflops(peak_tflops)
  mfu = model_flops(config) / sec / (tflops * 1e12) if tflops else float("nan")
  out.update(step_s=sec, tokens_per_s=batch * config.data.seq_len / sec, mfu=mfu)
  line += (f"; {sec * 1e3:.1f} ms/step, {out['tokens_per_s']:,.0f} tokens/s, MFU {mfu:.1%} of "
           f"{tflops:.0f} TFLOP/s ({device.device_kind})")
  # Printed before the share's second compile, so a time limit that stops it keeps these.
  print(line, flush=True)
  if head_share:
    body, *_ = compile_step(config, _body_only_step)
    body_sec = _time(body, task, shard, config, repeats)
    out.update(body_s=body_sec, head_share=1.0 - body_sec / sec,
               head_flop_share=1.0 - compiled_flops(body) / compiled_flops(compiled))
    print(f"  head + objective {out['head_share']:.1%} of that step ({body_sec * 1e3:.1f} ms "
          f"without them) and {out['head_flop_share']:.1%} of its compiled FLOPs", flush=True)
  return out
