"""The ablations of `benchmarks.step_breakdown` remove what they say, on a tiny model, and its
timer alternates the variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import step_breakdown


@pytest.fixture(scope="module")
def tiny():
  task, state, tokens = step_breakdown.setup("bytes", d_model=32, num_layers=1, num_heads=2,
                                             seq=16, batch=2)
  return task, state.params, tokens


def test_attention_as_values_makes_queries_and_keys_dead_and_is_undone(tiny):
  task, params, tokens = tiny
  grad = jax.jit(jax.grad(step_breakdown.loss_fn(task)))
  with step_breakdown.attention_as_values():  # Traced (so ablated) inside the context.
    ablated = jax.jit(jax.grad(step_breakdown.loss_fn(task)))(params, tokens)
  for name in ("query", "key"):
    assert not np.any(np.asarray(ablated["block_0"][name]["kernel"]))
  assert np.any(np.asarray(ablated["block_0"]["value"]["kernel"]))
  restored = grad(params, tokens)
  assert np.any(np.asarray(restored["block_0"]["query"]["kernel"]))


def test_attention_without_core_keeps_projections_live_and_is_values_plus_a_tiny_term(tiny):
  task, params, tokens = tiny
  with step_breakdown.attention_as_values():
    values = jax.jit(jax.grad(step_breakdown.loss_fn(task)))(params, tokens)
  with step_breakdown.attention_without_core():
    no_core = jax.jit(jax.grad(step_breakdown.loss_fn(task)))(params, tokens)
  full = jax.jit(jax.grad(step_breakdown.loss_fn(task)))(params, tokens)
  block = lambda g, name: np.asarray(g["block_0"][name]["kernel"])
  for name in ("query", "key"):  # Live, with gradients scaled by the stand-in's 1e-6.
    assert np.any(block(no_core, name))
    assert np.abs(block(no_core, name)).max() < 1e-4 * np.abs(block(full, name)).max()
  np.testing.assert_allclose(block(no_core, "value"), block(values, "value"), rtol=1e-3,
                             atol=1e-7)
  assert not np.allclose(block(no_core, "value"), block(full, "value"), rtol=1e-2)


def test_embed_only_gradient_is_the_embedding_part_of_the_full_gradient(tiny):
  task, params, tokens = tiny
  full = jax.jit(jax.grad(step_breakdown.loss_fn(task)))(params, tokens)
  rest = {k: v for k, v in params.items() if k != "embed"}
  embed = jax.jit(step_breakdown.embed_only_grad(task))(params["embed"], rest, tokens)
  for got, want in zip(jax.tree.leaves(embed), jax.tree.leaves(full["embed"])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_interleaved_seconds_alternates_variants_within_each_round():
  calls = []
  def variant(name):
    return lambda: calls.append(name) or jnp.zeros(())
  out = step_breakdown.interleaved_seconds({n: variant(n) for n in "abc"}, rounds=3)
  assert sorted(out) == ["a", "b", "c"] and all(v >= 0 for v in out.values())
  # One warm-up call each, then every round runs all three, the order reversed each round.
  assert "".join(calls) == "abc" + "abc" + "cba" + "abc"
