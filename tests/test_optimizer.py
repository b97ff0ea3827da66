"""The optimizer's gradient clipping: optax's values and state, one norm per step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny
from prime_jax import step


def _grads(scale: float) -> dict:
  rng = np.random.default_rng(0)
  return {"a": jnp.asarray(scale * rng.standard_normal((3, 5)), jnp.float32),
          "b": {"c": jnp.asarray(scale * rng.standard_normal((7,)), jnp.float32)}}


@pytest.mark.parametrize("scale", [0.01, 10.0])  # global norm ~0.05 (kept) and ~50 (clipped)
def test_clip_equals_optax(scale):
  grads = _grads(scale)
  ours, theirs = step.clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
  got, state = ours.update(grads, ours.init(grads))
  want, _ = theirs.update(grads, theirs.init(grads))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-7, atol=0)
  if scale < 1:  # Below the threshold the gradients pass unchanged, bit for bit.
    assert all(np.array_equal(g, x) for g, x in zip(jax.tree.leaves(got), jax.tree.leaves(grads)))
  else:
    np.testing.assert_allclose(float(optax.tree.norm(got)), 1.0, rtol=1e-6)
  # The state is optax's, so optimizer states saved with optax's clip restore unchanged.
  assert jax.tree.structure(state) == jax.tree.structure(theirs.init(grads))


def test_clip_takes_the_norm_it_is_given():
  grads = _grads(10.0)
  got, _ = step.clip_by_global_norm(1.0).update(grads, optax.EmptyState(), grad_norm=4.0)
  for g, x in zip(jax.tree.leaves(got), jax.tree.leaves(grads)):
    np.testing.assert_allclose(g, x / 4.0, rtol=1e-7)
  zero = jax.tree.map(jnp.zeros_like, grads)
  got, _ = step.clip_by_global_norm(1.0).update(zero, optax.EmptyState())
  assert all(np.array_equal(g, z) for g, z in zip(jax.tree.leaves(got), jax.tree.leaves(zero)))


def test_the_chain_passes_the_train_steps_norm_to_the_clip():
  tx = step.build_optimizer(tiny.config())
  params, grads = jax.tree.map(jnp.zeros_like, _grads(1.0)), _grads(10.0)
  state = tx.init(params)
  _, told = tx.update(grads, state, params, grad_norm=4.0)  # not the gradients' norm (~50)
  _, own = tx.update(grads, state, params)
  b1 = tiny.config().optim.b1
  for mu, g in zip(jax.tree.leaves(optax.tree.get(told, "mu")), jax.tree.leaves(grads)):
    np.testing.assert_allclose(mu, (1 - b1) * g / 4.0, rtol=1e-6)
  norm = float(optax.tree.norm(grads))
  for mu, g in zip(jax.tree.leaves(optax.tree.get(own, "mu")), jax.tree.leaves(grads)):
    np.testing.assert_allclose(mu, (1 - b1) * g / norm, rtol=1e-5)
