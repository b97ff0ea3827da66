"""The backbones' custom-gradient pieces and the folding of shared modulation into kernels."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model_helpers import perturb
from prime_jax.models import layers
from prime_jax.models.transformer import DiTBlock


def _grads(f, *args):
  return jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args)))))(*args)


def test_normalize_value_and_gradient_match_layer_norm_autodiff():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 5, 48))
  w = jax.random.normal(jax.random.key(1), x.shape)  # Makes the output gradient non-uniform.

  def reference(x):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)

  value, (grad,) = _grads(lambda x: jnp.sum(w * layers.normalize(x) ** 2), x)
  want_value, (want_grad,) = _grads(lambda x: jnp.sum(w * reference(x) ** 2), x)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(layers.normalize(x), reference(x), atol=1e-5)
  grad_b = jax.grad(lambda x: jnp.sum(w * layers.normalize(x)))(x.astype(jnp.bfloat16))
  assert grad_b.dtype == jnp.bfloat16  # A cotangent of the input's dtype.


def test_gelu_tanh_gradient_matches_the_derivative_in_float32_and_bfloat16():
  x = 3.0 * jax.random.normal(jax.random.key(2), (1000,))
  w = jnp.sin(jnp.arange(1000.0))
  grad = jax.grad(lambda x: jnp.sum(w * layers.gelu_tanh(x)))(x)
  x64 = np.asarray(x, np.float64)
  c = np.sqrt(2 / np.pi)
  t = np.tanh(c * (x64 + 0.044715 * x64**3))
  slope = 0.5 * (1 + t) + 0.5 * x64 * (1 - t * t) * c * (1 + 3 * 0.044715 * x64**2)
  np.testing.assert_allclose(grad, np.asarray(w, np.float64) * slope, rtol=1e-5, atol=5e-6)
  autodiff = jax.grad(lambda x: jnp.sum(w * jax.nn.gelu(x, approximate=True)))(x)
  np.testing.assert_allclose(grad, autodiff, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(layers.gelu_tanh(x), jax.nn.gelu(x, approximate=True))
  grad_b = jax.grad(lambda x: jnp.sum(layers.gelu_tanh(x).astype(jnp.float32)))(
      x.astype(jnp.bfloat16))
  assert grad_b.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(grad_b, np.float32), slope, rtol=1e-2, atol=1e-2)


def test_dense_general_folds_input_affine_and_output_scale_into_the_kernel():
  dense = layers.DenseGeneral((3, 4), ("embed", "heads", "kv"), ("heads", "kv"))
  x = jax.random.normal(jax.random.key(3), (2, 5, 6))
  params = perturb(dense.init(jax.random.key(4), x)["params"], 0)
  in_scale, in_shift = jnp.linspace(0.5, 2.0, 6), jnp.linspace(-1.0, 1.0, 6)
  out_scale = jnp.linspace(-1.0, 3.0, 12)
  got = dense.apply({"params": params}, x, in_scale=in_scale, in_shift=in_shift,
                    out_scale=out_scale)
  p = nn.meta.unbox(params)
  want = (jnp.einsum("bld,dnh->blnh", x * in_scale + in_shift, p["kernel"]) + p["bias"])
  np.testing.assert_allclose(got, want * out_scale.reshape(3, 4), rtol=1e-5, atol=1e-5)


def test_block_with_shared_conditioning_folds_to_the_per_example_block():
  """c of shape (1, F) takes the folded path; the same c repeated per example takes the
  per-example one. Outputs and every parameter's gradient agree."""
  block = DiTBlock(d_model=32, num_heads=2, dropout=0.0)
  x = jax.random.normal(jax.random.key(5), (3, 7, 32))
  c = jax.random.normal(jax.random.key(6), (1, 16))
  params = perturb(block.init(jax.random.key(7), x, c)["params"], 1, scale=0.3)
  weights = jax.random.normal(jax.random.key(8), x.shape)

  def loss(params, c):
    out, _ = block.apply({"params": params}, x, c)
    return jnp.sum(weights * out)

  shared, shared_grads = _grads(loss, params, c)
  per_example, per_example_grads = _grads(loss, params, jnp.repeat(c, 3, axis=0))
  np.testing.assert_allclose(shared, per_example, rtol=1e-5)
  for g, h in zip(jax.tree.leaves(shared_grads[0]), jax.tree.leaves(per_example_grads[0])):
    np.testing.assert_allclose(g, h, rtol=2e-4, atol=2e-4 * float(jnp.abs(h).max()))
  np.testing.assert_allclose(shared_grads[1], per_example_grads[1].sum(0, keepdims=True),
                             rtol=2e-4, atol=1e-4)
