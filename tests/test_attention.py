"""The CPU attention's hand-written backward pass against autodiff of jax's reference attention."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prime_jax.models.attention import dot_product_attention


def _grads(fn, q, k, v, g):
  return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * g), argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_values_and_gradients_match_the_reference(causal):
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, g = (jax.random.normal(key, (2, 7, 3, 8), jnp.float32) * 2 for key in keys)
  ours = lambda q, k, v: dot_product_attention(q, k, v, causal=causal, impl="auto")
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                     implementation="xla")
  # Evaluated alone and under differentiation (two forward computations, see attention.py).
  for out in (jax.jit(ours)(q, k, v), jax.vjp(ours, q, k, v)[0]):
    np.testing.assert_allclose(out, ref(q, k, v), rtol=1e-5, atol=1e-6)
  for name, a, b in zip("qkv", _grads(ours, q, k, v, g), _grads(ref, q, k, v, g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")
  if causal:  # the last key only reaches the last query
    dk = _grads(ours, q, k, v, g.at[:, -1].set(0.0))[1]
    np.testing.assert_array_equal(dk[:, -1], 0.0)


def test_attention_in_bfloat16_keeps_dtypes_and_stays_close():
  keys = jax.random.split(jax.random.key(1), 4)
  q, k, v, g = (jax.random.normal(key, (2, 6, 2, 8), jnp.float32) for key in keys)
  ours = lambda q, k, v: dot_product_attention(q, k, v, impl="auto")
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out = ours(*low)
  assert out.dtype == jnp.bfloat16
  grads = _grads(ours, *low, g.astype(jnp.bfloat16))
  assert all(d.dtype == jnp.bfloat16 for d in grads)
  for a, b in zip(grads, _grads(ours, q, k, v, g)):
    np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0.1, atol=0.05)


def test_backward_products_keep_a_plain_layout_on_cpu():
  """dk and dv contract over the queries; written directly, XLA:CPU gets both operands contracted
  on their row axis, a batched product it runs ~2.5x slower. The compiled gradient has none."""
  q = jnp.zeros((2, 16, 3, 8), jnp.float32)
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(dot_product_attention(q, k, v) ** 2),
                          argnums=(0, 1, 2)))
  hlo = grad.lower(q, q, q).compile().as_text()
  dots = re.findall(r"dot\([^)]*\), lhs_batch_dims=\{0,1\}, lhs_contracting_dims=\{(\d)\}, "
                    r"rhs_batch_dims=\{0,1\}, rhs_contracting_dims=\{(\d)\}", hlo)
  assert len(dots) == 6  # two forward products and four backward ones
  assert ("2", "2") not in dots
