"""Our train step against the authors' (PyTorch) step, timed in alternation on this CPU.

A shared CPU's speed drifts by tens of percent within seconds, so timing one program after the
other says little. Here two worker processes, ours (jax) and the official step (torch, run by
`--torch_python`), each hold one model and take one step when told; the driver alternates them
(A B B A ...), with a pause between steps so neither's threads spin into the other's turn, and
reports the median of the per-pair ratios official / ours (> 1: we are faster) with its quartiles.
The official step is `../shared/tools/peer/bench_official.py`'s (forward, carry-over filter or
log-softmax, loss, backward, clip, AdamW), built from the official code at `--src`; ours is
`benchmarks.train_step`'s (its shapes, the GPT-2 rows through the fused head, EMA included).
Each worker starts through `launch/cpu_allocator.sh`: by default ours with tcmalloc, as
`launch/local.sh` runs it, and the official step with glibc's malloc, as its own code runs;
`--official_allocator tcmalloc` gives both the same allocator.
  python3 -m benchmarks.paired_official --torch_python VENV/bin/python --src OFFICIAL/text \
      [--shapes bytes,gpt2,gpt2co] [--pairs 30] [--allocator tcmalloc|system]
      [--official_allocator system|tcmalloc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(os.path.dirname(ROOT), "shared", "tools", "peer")  # The default --peer.
# name: (peer config name, carry-over, our fused-head chunk), as in benchmarks.train_step.
SHAPES = {"bytes": ("bytes", True, 0), "gpt2": ("gpt2", False, 2048),
          "gpt2co": ("gpt2", True, 2048)}
ALLOCATORS = ("tcmalloc", "system")  # PRIME_JAX_ALLOCATOR values of launch/cpu_allocator.sh


def _ours_worker(shape: str) -> None:
  sys.path.insert(0, ROOT)
  import jax
  from benchmarks import train_step
  peer, carry, chunk = SHAPES[shape]
  vocab, seq, batch = (256, 256, 8) if peer == "bytes" else (50257, 128, 4)
  step, state, tokens = train_step.build_step(vocab, 2, 256, 4, 4, seq, batch, carry,
                                              fused_chunk=chunk)
  def run():
    nonlocal state
    state, metrics = step(state, tokens)
    jax.block_until_ready((state, metrics))
  _serve(run)


def _official_worker(shape: str, src: str, peer_dir: str) -> None:
  import torch
  sys.path.insert(0, peer_dir)
  import bench_official as bo
  import peer_common as pc
  torch.set_num_threads(os.cpu_count() or 1)
  dit, uu, ns = pc.import_official(src)
  peer, carry, _ = SHAPES[shape]
  cfg = bo.CONFIGS[peer]
  C, ell, L, B = cfg["C"], cfg["ell"], cfg["L"], cfg["B"]
  base = pc.base_for(C, ell)
  torch.manual_seed(0)
  model = dit.PerceiverDIT(bo.make_config(cfg), vocab_size=C, target_length=ell, base=base + 1)
  model.train()
  masks = uu.create_extended_p_filter(lambda x, seq: uu.encoder(x, base, ell, seq), C=C, l=ell,
                                      b=base)
  noise = ns.LogLinearNoise()
  opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=0.0)
  x0 = torch.randint(0, C, (B, L), generator=torch.Generator().manual_seed(1))

  def run():  # bench_official.bench_config's timed step
    u = (torch.rand(B) / B + torch.arange(B) / B) % 1
    sigma, dsigma = noise((1 - 1e-3) * u + 1e-3)
    x0_enc = uu.encoder(x0, base, ell, L)
    yt = torch.where(torch.rand(x0_enc.shape) < 1 - torch.exp(-sigma[:, None]), base, x0_enc)
    logits = model(yt, torch.zeros(B))
    logp = (uu.convert_to_marginal_filter_logit(logits, masks, yt) if carry
            else torch.log_softmax(logits, dim=-1))
    lp = torch.gather(logp, -1, x0[:, :, None]).squeeze(-1)
    loss = (-lp * (dsigma / torch.expm1(sigma))[:, None]).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
  _serve(run)


def _serve(run) -> None:
  """Answers each 'step' line on stdin with the seconds one call of `run` took."""
  out = sys.stdout
  sys.stdout = sys.stderr  # Library chatter must not reach the driver's pipe.
  print("ready", file=out, flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    start = time.perf_counter()
    run()
    print(time.perf_counter() - start, file=out, flush=True)


def _start(cmd: list[str], allocator: str) -> subprocess.Popen:
  """A worker started through launch/cpu_allocator.sh with `allocator` (tcmalloc | system)."""
  env = dict(os.environ, PRIME_JAX_ALLOCATOR=allocator)
  env.pop("LD_PRELOAD", None)
  launcher = ["bash", "-c", 'source launch/cpu_allocator.sh && exec "$@"', "worker"]
  proc = subprocess.Popen(launcher + cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, cwd=ROOT, env=env)
  if proc.stdout.readline().strip() != "ready":
    raise SystemExit(f"worker failed to start: {' '.join(cmd)}")
  return proc


def _step(proc: subprocess.Popen) -> float:
  proc.stdin.write("step\n")
  proc.stdin.flush()
  return float(proc.stdout.readline())


def alternate(commands: dict[str, list[str]], allocators: dict[str, str], pairs: int,
              warmup: int, pause: float) -> dict[str, list[float]]:
  """Step seconds of each worker (two commands, each run with its allocator), alternating which
  goes first each pair and dropping the first `warmup` pairs."""
  procs = {name: _start(cmd, allocators[name]) for name, cmd in commands.items()}
  times = {name: [] for name in procs}
  try:
    for i in range(warmup + pairs):
      for name in (list(procs) if i % 2 else list(procs)[::-1]):
        time.sleep(pause)
        seconds = _step(procs[name])
        if i >= warmup:
          times[name].append(seconds)
  finally:
    for proc in procs.values():
      proc.stdin.close()
      proc.wait()
  return times


def summary(times: dict[str, list[float]]) -> dict:
  """The median and quartiles of the per-pair ratios official / ours, and each side's times.

  Every step's milliseconds are kept in pair order (`ours_ms`, `official_ms`): a burst of load
  from outside, which slows both sides for a while, shows there as a run of slow pairs.
  """
  ratios = sorted(o / m for o, m in zip(times["official"], times["ours"]))
  q1, median, q3 = statistics.quantiles(ratios, n=4)
  out = {"pairs": len(ratios), "ratio_median": median, "ratio_q1": q1, "ratio_q3": q3}
  for name, values in times.items():
    out[f"{name}_ms_median"] = 1e3 * statistics.median(values)
    out[f"{name}_ms_min"] = 1e3 * min(values)
    out[f"{name}_ms"] = [round(1e3 * v, 1) for v in values]
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--torch_python", default="", help="a Python with torch (and einops, omegaconf)")
  p.add_argument("--src", default="", help="the official repository's text/ folder")
  p.add_argument("--peer", default=PEER, help="the folder of bench_official.py")
  p.add_argument("--shapes", default="bytes,gpt2,gpt2co")
  p.add_argument("--pairs", type=int, default=30)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--pause", type=float, default=0.05, help="seconds idle before each step")
  p.add_argument("--allocator", choices=ALLOCATORS, default="tcmalloc",
                 help="malloc of our worker (launch/cpu_allocator.sh; local.sh uses tcmalloc)")
  p.add_argument("--official_allocator", choices=ALLOCATORS, default="system",
                 help="malloc of the official worker (its own code runs with glibc's)")
  p.add_argument("--worker", choices=("ours", "official"), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker == "ours":
    return _ours_worker(args.shapes)
  if args.worker == "official":
    return _official_worker(args.shapes, args.src, args.peer)
  if not (args.torch_python and args.src):
    p.error("--torch_python and --src are required (see ../shared/tools/peer/README.md)")
  for shape in args.shapes.split(","):
    if shape not in SHAPES:
      p.error(f"--shapes: unknown shape {shape!r}; expected some of {sorted(SHAPES)}")
  me = os.path.abspath(__file__)
  for shape in args.shapes.split(","):
    commands = {"ours": [sys.executable, me, "--worker", "ours", "--shapes", shape],
                "official": [args.torch_python, me, "--worker", "official", "--shapes", shape,
                             "--src", os.path.abspath(args.src), "--peer", args.peer]}
    allocators = {"ours": args.allocator, "official": args.official_allocator}
    r = {"shape": shape, "allocators": allocators,
         **summary(alternate(commands, allocators, args.pairs, args.warmup, args.pause))}
    print(f"{shape:>7}: official/ours {r['ratio_median']:.3f} [{r['ratio_q1']:.3f}, "
          f"{r['ratio_q3']:.3f}] over {r['pairs']} pairs; median ms official "
          f"{r['official_ms_median']:.1f}, ours {r['ours_ms_median']:.1f}; min "
          f"{r['official_ms_min']:.1f}, {r['ours_ms_min']:.1f}; malloc official "
          f"{args.official_allocator}, ours {args.allocator}", flush=True)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  main()
