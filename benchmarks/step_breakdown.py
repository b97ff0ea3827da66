"""Where the CPU train step's time goes, by ablation rather than by trace.

On XLA:CPU a profile trace misattributes time: weight-gradient products run as asynchronous
Eigen dots whose work lands inside whatever op shares the cores. This script times variants
of the same jitted computation instead, at one of `benchmarks.train_step`'s shapes:
  forward           the training loss alone
  forward+backward  the loss and its gradient for every parameter
  dX chain          the gradient of the embedding table only: no weight-gradient products
  no attention      every block's attention output replaced by its values (softmax
                    attention, q/k projections and rotary drop out as dead code)
  no attention core the attention output replaced by v + 1e-6 (q + k): the projections and
                    rotary stay live, the softmax and its six batched products go
  train step        the full step (clip, AdamW, EMA)
Parameters are perturbed from their init, since the zero-initialised head and adaLN would
otherwise give an all-zero backward.
The variants run in turn within each round, so that the machine's drift hits all of them alike.
  python3 -m benchmarks.step_breakdown [--shape bytes|gpt2|gpt2co] [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import train_step as bench
from prime_jax import step as step_lib, xla_options
from prime_jax.models import transformer

# (vocabulary, carry-over, L, B, fused-head chunk), as in benchmarks.train_step.
SHAPES = {"bytes": (256, True, 256, 8, 0), "gpt2": (50257, False, 128, 4, 2048),
          "gpt2co": (50257, True, 128, 4, 2048)}


@contextlib.contextmanager
def attention_replaced(stand_in: Callable[..., jax.Array]) -> Iterator[None]:
  """Within the block, the text model's attention is `stand_in(q, k, v)` (traced calls)."""
  original = transformer.dot_product_attention
  transformer.dot_product_attention = lambda q, k, v, **kw: stand_in(q, k, v)
  try:
    yield
  finally:
    transformer.dot_product_attention = original


def attention_as_values() -> contextlib.AbstractContextManager:
  """The attention returns its values unchanged: q/k projections and rotary become dead code."""
  return attention_replaced(lambda q, k, v: v)


def attention_without_core() -> contextlib.AbstractContextManager:
  """The attention returns v + 1e-6 (q + k): every projection and the rotary keep a gradient,
  while the softmax, its probabilities and the batched products drop out."""
  return attention_replaced(lambda q, k, v: v + 1e-6 * (q + k))


def interleaved_seconds(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
  """Median wall seconds of each no-argument call, run in turn within every round (the order
  reversed each round) after one warm-up call each: a shared CPU's speed drifts by tens of
  percent within seconds, so timing one variant after the other measures the drift."""
  for call in calls.values():
    jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for r in range(rounds):
    for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(calls[name]())
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def _config(shape: str, d_model: int = 256, num_layers: int = 4, num_heads: int = 4,
            seq: int = 0, batch: int = 0):
  """The config of `shape` (its L and B unless `seq`, `batch` > 0), its vocabulary, L and B."""
  vocab, carry, shape_seq, shape_batch, chunk = SHAPES[shape]
  seq, batch = seq or shape_seq, batch or shape_batch
  config = bench._config(2, d_model, num_layers, num_heads, seq, batch, carry, fused_chunk=chunk)
  return config, vocab, seq, batch


def compiler_options(shape: str) -> dict:
  """What the train step at `shape` compiles with on this CPU (`prime_jax.xla_options`)."""
  config, vocab, _, _ = _config(shape)
  return xla_options.compiler_options(config, vocab, jax.devices()[0].platform)


def setup(shape: str, d_model: int = 256, num_layers: int = 4, num_heads: int = 4,
          seq: int = 0, batch: int = 0) -> tuple[step_lib.Task, step_lib.TrainState, jax.Array]:
  """The task of `shape` (its L and B unless `seq`, `batch` > 0), a fresh state with perturbed
  parameters and one batch of tokens."""
  config, vocab, seq, batch = _config(shape, d_model, num_layers, num_heads, seq, batch)
  task = step_lib.build_task(config, vocab, (seq,))

  @jax.jit  # One compiled program: eagerly, each init and perturbation op compiles on its own.
  def perturbed_state(key):
    state = step_lib.init_state(task, key, (seq,))
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape, x.dtype)
                                       for x, k in zip(leaves, keys)])
    return state.replace(params=params)

  tokens = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (batch, seq)), jnp.int32)
  return task, perturbed_state(jax.random.key(0)), tokens


def loss_fn(task: step_lib.Task) -> Callable:
  key = jax.random.key(2)
  return lambda params, tokens: step_lib.loss_terms(task, params, tokens, key,
                                                    train=True)[0]


def embed_only_grad(task: step_lib.Task) -> Callable:
  """Gradient of the loss for the embedding table alone (other parameters held fixed)."""
  loss = loss_fn(task)
  return jax.grad(lambda embed, rest, tokens: loss({**rest, "embed": embed}, tokens))


def breakdown(shape: str, repeats: int) -> dict[str, float]:
  """Seconds of each variant of the module docstring at `shape`, timed in alternation."""
  task, state, tokens = setup(shape)
  params, loss = state.params, loss_fn(task)
  rest = {k: v for k, v in params.items() if k != "embed"}
  jit = functools.partial(jax.jit, compiler_options=compiler_options(shape))
  forward = jit(loss).lower(params, tokens).compile()
  grad = jit(jax.grad(loss)).lower(params, tokens).compile()
  embed_grad = jit(embed_only_grad(task)).lower(params["embed"], rest, tokens).compile()
  with attention_as_values():
    no_attention = jit(jax.grad(loss)).lower(params, tokens).compile()
  with attention_without_core():
    no_core = jit(jax.grad(loss)).lower(params, tokens).compile()
  step = jit(functools.partial(step_lib.train_step, task), donate_argnums=0)
  holder = [jax.tree.map(jnp.copy, state)]  # donated: the other variants keep `params`

  def train_step():  # each call takes the last one's output
    holder[0], metrics = step(holder[0], tokens)
    return metrics
  return interleaved_seconds({
      "forward": lambda: forward(params, tokens),
      "forward+backward": lambda: grad(params, tokens),
      "dX chain": lambda: embed_grad(params["embed"], rest, tokens),
      "no attention": lambda: no_attention(params, tokens),
      "no attention core": lambda: no_core(params, tokens),
      "train step": train_step}, repeats)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--shape", choices=tuple(SHAPES), default="bytes")
  p.add_argument("--repeats", type=int, default=15, help="rounds, each timing every variant")
  args = p.parse_args()
  t = breakdown(args.shape, args.repeats)
  for name, sec in t.items():
    print(f"{name:>17}: {sec * 1e3:7.1f} ms")
  fwd, full = t["forward"], t["forward+backward"]
  print(f"backward / forward: {(full - fwd) / fwd:.2f}; weight-gradient products "
        f"{(full - t['dX chain']) / full:.0%} of forward+backward; attention (with q/k "
        f"projections and rotary) {(full - t['no attention']) / full:.0%}, its softmax and "
        f"batched products alone {(full - t['no attention core']) / full:.0%}; optimizer and "
        f"the rest of the step {(t['train step'] - full) / t['train step']:.0%}")


if __name__ == "__main__":
  main()
