"""Train-step time, tokens/s and achieved FLOP/s as a fraction of this machine's matmul FLOP/s.

FLOPs per step = 6·N_body·B·L + 12·layers·L²·D·B + 6·D·C·B·L (N_body = per-token matmul
weights of the blocks). Shapes (float32, AdamW, no dropout):
  bytes: C = 256, ℓ = 2, D = 256, 4 blocks, 4 heads, L = 256, B = 8        (target <= 300 ms)
  gpt2:  C = 50257, ℓ = 2, D = 256, 4 blocks, 4 heads, L = 128, B = 4,
         with and without carry-over                                       (target <= 450 ms)
Run it after `source launch/cpu_allocator.sh` to time the CPU step with tcmalloc, as
launch/local.sh runs it (the first line says which malloc is in use).
Also the 8-virtual-device vs 1-device step time (run with --devices 8), and with --owt the
OpenWebText-small step in bf16 (`benchmarks.owt_step`: MFU, tokens/s, compiled peak memory and
the head + objective share on an accelerator; compiled peak memory alone on a CPU; with
--owt_target h100, compiled for an H100 on this machine: its memory and roofline).
  python3 -m benchmarks.train_step [--devices 8] [--owt [--owt_batch 32] [--owt_only]]
      [--owt_set model.remat=True ...] [--owt_no_share] [--owt_profile DIR] [--owt_target h100]
"""

import argparse
import functools
import os
import sys
import time
from typing import Any

from benchmarks import gpu_target


def _parse():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, default=1, help="virtual CPU devices for the ratio")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--owt", action="store_true", help="OpenWebText-small shape in bf16")
  p.add_argument("--owt_batch", type=int, nargs="+", default=[32],
                 help="micro-batch sizes (sequences of 1024) for --owt")
  p.add_argument("--owt_only", action="store_true", help="skip the small CPU shapes")
  p.add_argument("--owt_set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                 help="overrides of configs/openwebtext.py for --owt, e.g. model.remat=True")
  p.add_argument("--owt_no_share", action="store_true",
                 help="skip the head + objective share (one compile instead of two)")
  p.add_argument("--owt_profile", default="", metavar="DIR",
                 help="write a jax.profiler trace of four OWT steps and the HLO to DIR")
  p.add_argument("--owt_target", default="", choices=["", *sorted(gpu_target.TARGETS)],
                 help="compile the --owt step for this GPU (h100) without one: its compiled "
                      "peak memory and roofline (needs jax's CUDA plugin, see "
                      "benchmarks/gpu_compile.sh)")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="device peak for MFU (default: from the device kind, e.g. 989 on H100)")
  return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices > 1:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.devices}"
if ARGS is not None and ARGS.owt_target:
  gpu_target.prepare()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import owt_step  # noqa: E402
from prime_jax import config as config_lib, sharding, step as step_lib, xla_options  # noqa: E402
from prime_jax.models import transformer_body_matmul_params  # noqa: E402


def matmul_flops_per_sec(n: int = 1024, repeats: int = 20) -> float:
  """Dense float32 matmul throughput of the default device, measured now."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  start = time.perf_counter()
  for _ in range(repeats):
    out = f(a)
  jax.block_until_ready(out)
  return 2 * n**3 * repeats / (time.perf_counter() - start)


def step_flops(vocab: int, d: int, layers: int, seq: int, batch: int) -> float:
  n_body = transformer_body_matmul_params(d, layers)
  return 6 * n_body * batch * seq + 12 * layers * seq**2 * d * batch + 6 * d * vocab * batch * seq


def _config(vocab_len, d, layers, heads, seq, batch, carry_over, dtype="float32", fused_chunk=0):
  c = config_lib.base_config()
  c.model.update(ell=vocab_len, d_model=d, num_layers=layers, num_heads=heads, dropout=0.0,
                 dtype=dtype, fused_head_chunk=fused_chunk)
  c.diffusion.carry_over = carry_over
  c.train.batch_size = batch
  c.data.seq_len = seq
  return c


def build_step(vocab: int, ell: int, d: int, layers: int, heads: int, seq: int, batch: int,
               carry_over: bool, devices=None, dtype="float32", fused_chunk: int = 0
               ) -> tuple[Any, step_lib.TrainState, jax.Array]:
  """(jitted train step with the state donated, a fresh state, one batch of tokens), the batch
  sharded over `devices`; `fused_chunk` > 0 trains through the fused head."""
  c = _config(ell, d, layers, heads, seq, batch, carry_over, dtype, fused_chunk)
  devices = devices or jax.devices()[:1]
  c.mesh.update(data=len(devices), fsdp=1, tensor=1)
  task = step_lib.build_task(c, vocab, (seq,))
  mesh = sharding.make_mesh(c, devices)
  rules = sharding.rules(c)
  with sharding.activate(mesh, rules):
    abstract = jax.eval_shape(lambda k: step_lib.init_state(task, k, (seq,), boxed=True),
                              jax.random.key(0))
    shard = sharding.tree_shardings(abstract, mesh, rules)
    state = jax.jit(lambda k: step_lib.init_state(task, k, (seq,)),
                    out_shardings=shard)(jax.random.key(0))
    step = jax.jit(functools.partial(step_lib.train_step, task),
                   in_shardings=(shard, sharding.batch_sharding(mesh)),
                   out_shardings=(shard, None), donate_argnums=0,
                   compiler_options=xla_options.compiler_options(c, vocab, devices[0].platform))
    tokens = sharding.global_batch(
        np.random.default_rng(0).integers(0, vocab, (batch, seq)).astype(np.int32),
        sharding.batch_sharding(mesh))
  return step, state, tokens


def time_step(vocab: int, ell: int, d: int, layers: int, heads: int, seq: int, batch: int,
              carry_over: bool, repeats: int, devices=None, dtype="float32",
              fused_chunk: int = 0) -> float:
  """Median seconds of one jitted train step (state donated), batch sharded over `devices`;
  `fused_chunk` > 0 trains through the fused head (model.fused_head_chunk)."""
  step, state, tokens = build_step(vocab, ell, d, layers, heads, seq, batch, carry_over,
                                   devices, dtype, fused_chunk)
  return owt_step.median_step_seconds(step, state, tokens, repeats)


def main():
  args = ARGS
  if not args.owt_only:
    small_shapes(args)
  if args.owt:
    device = gpu_target.compile_only_device(args.owt_target) if args.owt_target else None
    for batch in args.owt_batch:
      config = owt_step.owt_config(batch, overrides=tuple(args.owt_set))
      owt_step.report(batch, args.repeats, args.peak_tflops, config, device=device,
                      head_share=not args.owt_no_share, profile_dir=args.owt_profile)


def malloc_in_use() -> str:
  """'tcmalloc' when preloaded (`source launch/cpu_allocator.sh`, as local.sh does), else 'glibc'
  (whose freshly mapped buffers cost a CPU step ~15-25%)."""
  try:
    with open("/proc/self/maps") as maps:
      return "tcmalloc" if "libtcmalloc" in maps.read() else "glibc"
  except OSError:
    return "unknown"


def small_shapes(args: argparse.Namespace) -> None:
  """The bytes and GPT-2-vocabulary shapes of the module docstring, float32."""
  peak = matmul_flops_per_sec()
  print(f"device {jax.devices()[0].platform} x{jax.device_count()}; malloc {malloc_in_use()}; "
        f"measured dense float32 matmul: {peak / 1e9:.1f} GFLOP/s")
  # The fused rows ask for 2048-value chunks, but their 512 tokens' logits (103 MB) are within
  # fused_head.KEEP_LOGITS_MAX_BYTES, which takes the whole vocabulary as one chunk.
  shapes = [("bytes", 256, True, 256, 8, 0.300, 0),
            ("gpt2 no carry-over", 50257, False, 128, 4, None, 0),
            ("gpt2 carry-over", 50257, True, 128, 4, 0.450, 0),
            ("gpt2 no c-o, fused", 50257, False, 128, 4, None, 2048),
            ("gpt2 carry-over, fused", 50257, True, 128, 4, None, 2048)]
  results = {}
  for name, vocab, carry, seq, batch, target, chunk in shapes:
    sec = time_step(vocab, 2, 256, 4, 4, seq, batch, carry, args.repeats, fused_chunk=chunk)
    flops = step_flops(vocab, 256, 4, seq, batch)
    results[name] = sec
    goal = f" (target <= {target * 1e3:.0f} ms)" if target else ""
    print(f"{name:>22}: {sec * 1e3:7.1f} ms/step{goal}, {batch * seq / sec:8.0f} tokens/s, "
          f"{flops / sec / 1e9:6.1f} GFLOP/s = {flops / sec / peak:5.1%} of matmul peak")
  extra = results["gpt2 carry-over"] / results["gpt2 no carry-over"] - 1
  print(f"carry-over costs {extra:+.1%} of the GPT-2-vocabulary step (target < 10%)")
  if jax.device_count() > 1:
    one = results["bytes"]
    many = time_step(256, 2, 256, 4, 4, 256, 8, True, args.repeats, devices=jax.devices())
    print(f"bytes step on {jax.device_count()} devices: {many * 1e3:.1f} ms vs 1 device "
          f"{one * 1e3:.1f} ms (ratio {many / one:.2f})")


if __name__ == "__main__":
  sys.exit(main())
