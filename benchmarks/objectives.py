"""Time and compiled temporary memory of the Prime objectives against plain cross-entropy.

For C = 50257 (GPT-2) and ℓ in {1, 2, 4, 6}: forward and gradient of the joint objective and of
the valid bound (both with carry-over) on the same logits, as ratios to token cross-entropy.
Targets: each within 3x the time and 2x the temporary memory of plain cross-entropy.
  python3 -m benchmarks.objectives [--tokens 512] [--lengths 1,2,4,6]

`--memory`: loss + gradient w.r.t. (features, head kernel, head bias) of the fused head
(prime_jax.fused_head) against the same objective on materialised logits h @ W + b: compiled
temporary memory at B=4, L=1024, D=768 (compiled only, never run), then time at a small shape.
Target: fused temporary memory below 1/4 of unfused.
  python3 -m benchmarks.objectives --memory [--lengths 2,4] [--chunk 4096] [--tokens 256]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from prime_jax import forward, fused_head, losses, objectives, schedules
from prime_jax.subtokens import PrimeCode


def _plain_ce(code, schedule, logits, x0, y, t):
  del code, schedule, y, t
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_p, x0[..., None], axis=-1)[..., 0]


def _measure(fn, args, repeats):
  compiled = jax.jit(fn).lower(*args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), temp


def run(tokens: int = 512, lengths=(1, 2, 4, 6), vocab_size: int = 50257, repeats: int = 5):
  rows = []
  batch = 4
  seq = tokens // batch
  schedule = schedules.LogLinear()
  for ell in lengths:
    code = PrimeCode(vocab_size, ell)
    k1, k2, k3 = jax.random.split(jax.random.key(ell), 3)
    logits = jax.random.normal(k1, (batch, seq, vocab_size), jnp.float32)
    x0 = jax.random.randint(k2, (batch, seq), 0, vocab_size)
    t = jnp.linspace(0.2, 0.9, batch)
    y = forward.mask_subtokens(k3, code, x0, schedule.alpha(t))
    args = (logits, x0, y, t)
    fns = {"ce": _plain_ce, "joint": objectives.joint_loss, "valid": objectives.valid_loss}
    res = {}
    for name, loss in fns.items():
      fwd = lambda lg, x, yy, tt, loss=loss: loss(code, schedule, lg, x, yy, tt).mean()
      grad = jax.grad(fwd)
      res[name] = (_measure(fwd, args, repeats), _measure(grad, args, repeats))
    for name in ("joint", "valid"):
      (f_t, f_m), (g_t, g_m) = res[name]
      (cf_t, cf_m), (cg_t, cg_m) = res["ce"]
      rows.append(dict(ell=ell, objective=name, base=code.base, grid=code.grid_size,
                       fwd_ms=1e3 * f_t, grad_ms=1e3 * g_t, ce_fwd_ms=1e3 * cf_t,
                       ce_grad_ms=1e3 * cg_t, fwd_time_ratio=f_t / cf_t,
                       grad_time_ratio=g_t / cg_t, fwd_mem_ratio=f_m / max(cf_m, 1),
                       grad_mem_ratio=g_m / max(cg_m, 1), grad_temp_mb=g_m / 2**20,
                       ce_grad_temp_mb=cg_m / 2**20))
  return rows


def _head_inputs(code, schedule, batch, seq, d_model):
  """Features, head kernel and bias as arrays (small shapes) or abstract shapes (large ones)."""
  k = jax.random.split(jax.random.key(code.ell), 5)
  h = jax.random.normal(k[0], (batch, seq, d_model), jnp.float32)
  kernel = 0.05 * jax.random.normal(k[1], (d_model, code.vocab_size), jnp.float32)
  bias = jax.random.normal(k[2], (code.vocab_size,), jnp.float32)
  x0 = jax.random.randint(k[3], (batch, seq), 0, code.vocab_size)
  t = jnp.linspace(0.2, 0.9, batch)
  y = forward.mask_subtokens(k[4], code, x0, schedule.alpha(t))
  return (h, kernel, bias), (x0, y, t)


def _head_grads(code, schedule, objective, fused, chunk):
  """jax.grad of the mean loss w.r.t. (h, kernel, bias), fused or on materialised logits."""
  def loss(params, x0, y, t):
    h, kernel, bias = params
    if fused:
      per_token = losses.get(objective).fused_loss(code, schedule, h, kernel, bias, x0, y, t,
                                                   chunk_size=chunk)
    else:
      per_token = losses.get(objective).token_loss(code, schedule, h @ kernel + bias, x0, y, t)
    return per_token.mean()
  return jax.grad(loss)


def fused_memory_rows(lengths=(2, 4), chunk=fused_head.DEFAULT_CHUNK_SIZE, vocab_size=50257,
                      batch=4, seq=1024, d_model=768):
  """Compiled temporary bytes of loss + gradient, fused vs unfused, at the full GPT-2 shape."""
  schedule, rows = schedules.LogLinear(), []
  for ell in lengths:
    code = PrimeCode(vocab_size, ell)
    shapes = jax.eval_shape(lambda: _head_inputs(code, schedule, batch, seq, d_model))
    for objective in ("valid", "joint"):
      temp = {}
      for fused in (False, True):
        grad = _head_grads(code, schedule, objective, fused, chunk)
        compiled = jax.jit(grad).lower(*((shapes[0],) + shapes[1])).compile()
        temp[fused] = compiled.memory_analysis().temp_size_in_bytes
      rows.append(dict(ell=ell, objective=objective, unfused_mb=temp[False] / 2**20,
                       fused_mb=temp[True] / 2**20, ratio=temp[True] / max(temp[False], 1)))
  return rows


def fused_time_rows(tokens=256, lengths=(2, 4), chunk=fused_head.DEFAULT_CHUNK_SIZE,
                    vocab_size=50257, d_model=768, repeats=3):
  """Seconds per loss + gradient, fused vs unfused, at `tokens` tokens (batch 2)."""
  schedule, rows = schedules.LogLinear(), []
  for ell in lengths:
    code = PrimeCode(vocab_size, ell)
    params, rest = _head_inputs(code, schedule, 2, tokens // 2, d_model)
    for objective in ("valid", "joint"):
      secs = {fused: _measure(_head_grads(code, schedule, objective, fused, chunk),
                              (params,) + rest, repeats)[0] for fused in (False, True)}
      rows.append(dict(ell=ell, objective=objective, unfused_ms=1e3 * secs[False],
                       fused_ms=1e3 * secs[True], ratio=secs[True] / secs[False]))
  return rows


def _print_fused(args):
  lengths = tuple(int(x) for x in args.lengths.split(","))
  print(f"fused head vs logits h @ W + b: loss + grad w.r.t. (h, W, b), C=50257, float32, "
        f"chunk {args.chunk}, carry-over on; {jax.devices()[0].platform}")
  print("compiled temporary memory, B=4 L=1024 D=768:")
  for r in fused_memory_rows(lengths, args.chunk):
    print(f"  ℓ={r['ell']} {r['objective']:>5}: unfused {r['unfused_mb']:8.1f} MiB, "
          f"fused {r['fused_mb']:7.1f} MiB, fused/unfused {r['ratio']:.3f} (target < 0.25)")
  print(f"time, {args.tokens} tokens, D=768:")
  for r in fused_time_rows(args.tokens, lengths, args.chunk, repeats=args.repeats):
    print(f"  ℓ={r['ell']} {r['objective']:>5}: unfused {r['unfused_ms']:8.1f} ms, "
          f"fused {r['fused_ms']:8.1f} ms, fused/unfused {r['ratio']:.2f}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--tokens", type=int, default=512)
  parser.add_argument("--lengths", default=None, help="default 1,2,4,6; with --memory 2,4")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--memory", action="store_true",
                      help="fused head vs materialised logits: memory, then time")
  parser.add_argument("--chunk", type=int, default=fused_head.DEFAULT_CHUNK_SIZE)
  args = parser.parse_args()
  if args.memory:
    args.lengths = args.lengths or "2,4"
    _print_fused(args)
    return
  args.lengths = args.lengths or "1,2,4,6"
  rows = run(args.tokens, tuple(int(x) for x in args.lengths.split(",")), repeats=args.repeats)
  print(f"C=50257, {args.tokens} tokens, float32 logits, carry-over on; {jax.devices()[0].platform}")
  print(f"{'ℓ':>2} {'objective':>9} {'b':>6} {'grid':>7} {'fwd ms':>8} {'grad ms':>8} "
        f"{'CE fwd':>7} {'CE grad':>7} {'t fwd x':>7} {'t grad x':>8} {'mem fwd x':>9} "
        f"{'mem grad x':>10}")
  for r in rows:
    print(f"{r['ell']:>2} {r['objective']:>9} {r['base']:>6} {r['grid']:>7} {r['fwd_ms']:8.1f} "
          f"{r['grad_ms']:8.1f} {r['ce_fwd_ms']:7.1f} {r['ce_grad_ms']:7.1f} "
          f"{r['fwd_time_ratio']:7.2f} {r['grad_time_ratio']:8.2f} {r['fwd_mem_ratio']:9.2f} "
          f"{r['grad_mem_ratio']:10.2f}")
  worst_t = max(r["grad_time_ratio"] for r in rows)
  worst_m = max(r["grad_mem_ratio"] for r in rows)
  print(f"worst gradient time ratio {worst_t:.2f} (target <= 3), "
        f"worst gradient memory ratio {worst_m:.2f} (target <= 2)")


if __name__ == "__main__":
  main()
