"""Sampler throughput with and without idle-step caching, and the sampler's own cost per step.

For each ℓ: the sampler at T = L steps with caching on and off (tokens/s, wall time, network
calls), the saved fraction of calls against the idle-step formula, and the sampler's own cost per
step as a fraction of one forward pass of a PrimeTransformer. Both are timed as the sampler runs
them: the forward pass in a loop that calls the network under a cond and carries its logits (as a
sampler step does), the sampler's own cost as the sampler with a free network (one that returns
fixed logits) less that same loop with the free network.

  python -m benchmarks.sampling --seq_len=128 --vocab=50257 --lengths=1,2,4
  # The sampler's own cost per step at the OpenWebText-small size (no full sampling runs):
  python -m benchmarks.sampling --seq_len=1024 --d_model=768 --layers=12 --heads=12 \
      --lengths=2 --batch=64 --dtype=bfloat16 --overhead_only --forward_calls=20
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from prime_jax import sampling, schedules
from prime_jax.models.transformer import PrimeTransformer
from prime_jax.subtokens import PrimeCode


def _timed(fn, *args, repeats: int):
  """Median wall time of fn(*args) over `repeats` runs after one warm-up, and the last output."""
  out = jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def _call_loop(apply_fn, steps: int):
  """fn(params, y, t) running `steps` network calls the way a sampler step makes them: under a
  cond, carrying the logits, each input depending on the last logits."""
  def run(params, y, t_B):
    def body(_, logits):
      y_k = y + (logits[0, 0, 0] > 1e30).astype(y.dtype)  # Always y; keeps the call in the loop.
      return jax.lax.cond(logits[0, 0, 0] < jnp.inf, lambda: apply_fn(params, y_k, t_B),
                          lambda: logits)
    init = jnp.zeros(jax.eval_shape(apply_fn, params, y, t_B).shape, jnp.float32)
    return jax.lax.fori_loop(0, steps, body, init)
  return jax.jit(run)


def bench_length(args, ell: int) -> dict:
  code = PrimeCode(args.vocab, ell)
  d_model = args.d_model - args.d_model % (ell * 2 * args.heads) or ell * 2 * args.heads
  model = PrimeTransformer(code, d_model=d_model, num_layers=args.layers, num_heads=args.heads,
                           dropout=0.0, cond_dim=64, dtype=jnp.dtype(args.dtype))
  shape = (args.batch, args.seq_len)
  y = jnp.full(shape + (ell,), code.mask_value, jnp.int32)
  params = model.init(jax.random.key(0), y, None, train=False)
  # A zero-initialised head gives uniform logits; perturb every weight so draws are non-trivial.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys)])
  apply_fn = lambda p, y, t: model.apply(p, y, t, train=False)
  t_B = jnp.full((args.batch,), 0.5)
  calls = args.forward_calls or args.seq_len + 1
  logits = jax.jit(apply_fn)(params, y, t_B)
  loop_s, _ = _timed(_call_loop(apply_fn, calls), params, y, t_B, repeats=args.repeats)
  forward_s = loop_s / calls
  row = {"ell": ell, "base": code.base, "d_model": d_model, "forward_ms": 1e3 * forward_s}
  if not args.overhead_only:
    row.update(_sampler_runs(args, apply_fn, params, code, shape))
  row.update(_overhead(args, logits, y, t_B, code, shape, forward_s))
  return row


def _sampler_runs(args, apply_fn, params, code: PrimeCode, shape: tuple[int, int]) -> dict:
  """Wall time, tokens/s and network calls of the sampler with and without idle-step caching,
  and the saved fraction of calls against the idle-step formula."""
  schedule, ell = schedules.LogLinear(), code.ell
  row = {}
  for cache in (True, False):
    config = sampling.SamplerConfig(num_steps=args.seq_len, digit_source=args.digit_source,
                                    top_p=args.top_p, cache_idle_steps=cache,
                                    draw_slots=args.draw_slots)
    fn = sampling.make_sample_fn(apply_fn, code, schedule, shape, config, time_agnostic=True)
    calls, walls = [], []
    for seed in range(args.repeats):
      wall, out = _timed(fn, params, jax.random.key(seed), repeats=1)
      walls.append(wall)
      calls.append(int(out.num_calls))  # Calls in the timed runs (few; see 'saved' for many).
    tag = "cached" if cache else "uncached"
    row[f"{tag}_s"] = statistics.median(walls)
    row[f"{tag}_tok_s"] = args.batch * args.seq_len / row[f"{tag}_s"]
    row[f"{tag}_calls"] = float(np.mean(calls))
  # Which steps are idle depends only on the reveal draws (ℓ·L·B sub-tokens and the schedule),
  # not on the network or the vocabulary: count calls over many runs of a sampler with the same
  # shape and ℓ, a two-valued digit vocabulary and a network that costs nothing.
  small = PrimeCode(2**ell, ell)
  zeros = jnp.zeros(shape + (small.vocab_size,))
  counts = {}
  for cache in (True, False):
    config = sampling.SamplerConfig(num_steps=args.seq_len, cache_idle_steps=cache)
    count_fn = jax.jit(jax.vmap(lambda key: sampling.sample(
        key, lambda y, t: zeros, small, schedule, shape, config, time_agnostic=True).num_calls))
    counts[cache] = np.asarray(count_fn(jax.random.split(jax.random.key(1000), args.count_runs)))
  row["saved"] = 1.0 - np.mean(counts[True]) / np.mean(counts[False])
  config = sampling.SamplerConfig(num_steps=args.seq_len)
  idle = sampling.idle_probability(schedule, config, ell * args.seq_len * args.batch)
  # Calls equal busy steps, so the expected number of calls is Σ_k (1 - idle_k).
  row["saved_formula"] = 1.0 - float((1.0 - idle).sum()) / np.mean(counts[False])
  row["idle_e^-l"] = float(np.exp(-ell * args.batch))
  return row


def _overhead(args, logits, y, t_B, code: PrimeCode, shape: tuple[int, int],
              forward_s: float) -> dict:
  """The sampler's own cost per step: the sampler with a free network (fixed logits) less the
  same number of free calls in a loop, also as a fraction of one forward pass."""
  schedule = schedules.LogLinear()
  steps = args.seq_len + 1
  row = {}
  fixed = jax.device_put(logits)
  config = sampling.SamplerConfig(num_steps=args.seq_len, digit_source=args.digit_source,
                                  top_p=args.top_p, cache_idle_steps=False,
                                  draw_slots=args.draw_slots)
  free_fn = lambda p, y, t: p
  free = sampling.make_sample_fn(free_fn, code, schedule, shape, config, time_agnostic=True)
  free_s, _ = _timed(free, fixed, jax.random.key(0), repeats=args.repeats)
  free_loop_s, _ = _timed(_call_loop(free_fn, steps), fixed, y, t_B, repeats=args.repeats)
  row["free_call_ms"] = 1e3 * free_loop_s / steps  # What the free network's calls cost.
  row["overhead_ms_per_step"] = 1e3 * (free_s - free_loop_s) / steps
  row["overhead_vs_forward"] = (free_s - free_loop_s) / steps / forward_s
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--vocab", type=int, default=50257)
  parser.add_argument("--lengths", default="1,2,4")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--digit_source", default="joint")
  parser.add_argument("--top_p", type=float, default=0.95)
  parser.add_argument("--draw_slots", type=int, default=None,
                      help="positions drawn at a time (default: the sampler's choice; 0: all)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--count_runs", type=int, default=200, help="runs for the call counts")
  parser.add_argument("--x64", action="store_true", help="float64 Gumbel draws")
  parser.add_argument("--dtype", default="float32", help="the network's matmul dtype")
  parser.add_argument("--overhead_only", action="store_true",
                      help="only the forward pass and the sampler's own cost per step")
  parser.add_argument("--forward_calls", type=int, default=0,
                      help="network calls timed for the forward pass (default: L + 1)")
  args = parser.parse_args()
  jax.config.update("jax_enable_x64", args.x64)
  print(f"device={jax.devices()[0].device_kind} L=T={args.seq_len} C={args.vocab} "
        f"B={args.batch} layers={args.layers} source={args.digit_source} top_p={args.top_p} "
        f"draw_slots={'auto' if args.draw_slots is None else args.draw_slots} "
        f"draws={sampling.resolve_draw_dtype('float64').__name__}")
  header = ("ℓ", "b", "fwd ms", "cached s", "tok/s", "calls", "uncached s", "tok/s", "calls",
            "saved", "formula", "e^-ℓB", "free call ms", "ovh ms/step", "ovh/fwd")
  print(" | ".join(f"{h:>10}" for h in header))
  for ell in (int(v) for v in args.lengths.split(",")):
    r = bench_length(args, ell)
    if args.overhead_only:
      print(f"ℓ={ell} b={r['base']} B={args.batch}: forward {r['forward_ms']:.2f} ms; sampler's "
            f"own cost {r['overhead_ms_per_step']:.3f} ms/step = "
            f"{r['overhead_vs_forward']:.1%} of a forward pass", flush=True)
      continue
    cells = (r["ell"], r["base"], f"{r['forward_ms']:.2f}", f"{r['cached_s']:.3f}",
             f"{r['cached_tok_s']:.0f}", f"{r['cached_calls']:.1f}", f"{r['uncached_s']:.3f}",
             f"{r['uncached_tok_s']:.0f}", f"{r['uncached_calls']:.1f}", f"{r['saved']:.3f}",
             f"{r['saved_formula']:.3f}", f"{r['idle_e^-l']:.3f}", f"{r['free_call_ms']:.3f}",
             f"{r['overhead_ms_per_step']:.3f}", f"{r['overhead_vs_forward']:.1%}")
    print(" | ".join(f"{c!s:>10}" for c in cells), flush=True)


if __name__ == "__main__":
  main()
