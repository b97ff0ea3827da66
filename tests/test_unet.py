"""Tests of the Prime sub-token embedding and the image backbone (U-Net). Tiny sizes, CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import TINY_IMAGE, check_boxed, key, perturb, random_subtokens
from prime_jax.models import PrimeEmbedding, PrimeUNet
from prime_jax.subtokens import PrimeCode


@pytest.mark.parametrize("per_digit,combine", [(False, "concat"), (True, "concat"), (True, "sum")])
def test_embedding_param_shapes_and_values_match_manual_lookup(per_digit, combine):
  code = PrimeCode(27, 3)  # b = 3, mask = 3.
  features = 12
  emb = PrimeEmbedding(code, features, per_digit_tables=per_digit, combine=combine)
  y = random_subtokens(key(0), code, (2, 5))
  params = emb.init(key(1), y)["params"]
  table = nn.meta.unbox(params)["embedding"]
  width = features // 3 if combine == "concat" else features
  expected_shape = (3, code.base + 1, width) if per_digit else (code.base + 1, width)
  assert table.shape == expected_shape
  out = emb.apply({"params": params}, y)
  assert out.shape == (2, 5, features)
  y_np, table_np = np.asarray(y), np.asarray(table)
  pieces = [(table_np[j] if per_digit else table_np)[y_np[..., j]] for j in range(3)]
  manual = np.concatenate(pieces, -1) if combine == "concat" else sum(pieces)
  np.testing.assert_allclose(np.asarray(out), manual, rtol=1e-6)


def test_embedding_length_one_is_a_plain_token_embedding_with_mask_row():
  code = PrimeCode(10, 1)
  emb = PrimeEmbedding(code, 8)
  tokens = jnp.array([[0, 3, 9, 10]])  # 10 is the mask value.
  params = emb.init(key(0), tokens[..., None])
  table = nn.meta.unbox(params)["params"]["embedding"]
  assert table.shape == (11, 8)
  plain = nn.Embed(11, 8).apply({"params": {"embedding": table}}, tokens)
  np.testing.assert_array_equal(emb.apply(params, tokens[..., None]), plain)


def test_embedding_mask_row_is_used_exactly_where_digits_are_masked():
  code = PrimeCode(16, 2)  # b = 4.
  emb = PrimeEmbedding(code, 8)
  y = jnp.array([[[1, 2], [4, 3], [4, 4]]])
  params = nn.meta.unbox(emb.init(key(0), y))
  out = emb.apply(params, y)
  table = params["params"]["embedding"]
  np.testing.assert_array_equal(out[0, 1, :4], table[4])
  np.testing.assert_array_equal(out[0, 2], jnp.concatenate([table[4], table[4]]))
  changed = jax.tree.map(lambda x: x, params)
  changed["params"]["embedding"] = table.at[4].add(1.0)
  diff = np.abs(np.asarray(emb.apply(changed, y) - out)).reshape(3, 2, 4).max(-1)
  np.testing.assert_array_equal(diff > 0, [[False, False], [True, False], [True, True]])


def test_embedding_bad_configurations_raise():
  code = PrimeCode(27, 3)
  with pytest.raises(ValueError, match=r"features=10.*ℓ=3"):
    PrimeEmbedding(code, 10)
  with pytest.raises(ValueError, match=r"combine.*\('concat', 'sum'\).*'mean'"):
    PrimeEmbedding(code, 12, combine="mean")
  with pytest.raises(ValueError, match="per_digit_tables"):
    PrimeEmbedding(code, 12, combine="sum")
  PrimeEmbedding(code, 10, per_digit_tables=True, combine="sum")  # Sum needs no divisibility.


def test_embedding_rejects_wrong_digit_axis():
  emb = PrimeEmbedding(PrimeCode(16, 2), 8)
  with pytest.raises(ValueError, match="ℓ=2"):
    emb.init(key(0), jnp.zeros((2, 3, 3), jnp.int32))


# --------------------------------------------------------------------------- transformer


@pytest.mark.parametrize("ell", [1, 2, 3])
def test_unet_output_shape(ell):
  code = PrimeCode(16, ell)
  model = PrimeUNet(code, **TINY_IMAGE)
  y = random_subtokens(key(0), code, (2, 8, 8, 3))
  variables = model.init(key(0), y, train=False)
  zero = model.apply(variables, y, train=False)
  assert zero.shape == (2, 8, 8, 3, 16) and zero.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(zero), 0.0)  # Zero-initialised output conv.
  variables = perturb(variables, 1)
  logits = model.apply(variables, y, train=False)
  assert np.isfinite(np.asarray(logits)).all() and np.abs(np.asarray(logits)).max() > 0
  # Without time conditioning t is ignored.
  np.testing.assert_array_equal(model.apply(variables, y, jnp.array([0.1, 0.9]), train=False),
                                logits)
  assert "down_1_attn_0" in variables["params"] and "down_0_attn_0" not in variables["params"]


def test_unet_dropout_time_conditioning_names_and_gradients():
  code = PrimeCode(16, 2)
  model = PrimeUNet(code, time_conditioning=True, dropout=0.4, **TINY_IMAGE)
  y = random_subtokens(key(0), code, (2, 8, 8, 3))
  t_a, t_b = jnp.array([0.1, 0.2]), jnp.array([0.8, 0.9])
  variables = model.init(key(0), y, t_a, train=False)
  check_boxed(variables)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nn.logical_axis_rules(
      (("embed", "fsdp"), ("heads", "tensor"), ("conv_out", "tensor"))):
    jax.eval_shape(lambda: model.init(key(0), y, t_a, train=False))
  variables = perturb(variables, 1)
  eval_a = model.apply(variables, y, t_a, train=False)
  assert np.abs(np.asarray(model.apply(variables, y, t_b, train=False) - eval_a)).max() > 1e-4

  @jax.jit
  def train_logits_and_grads(params, dropout_key):
    def loss(p):
      logits = model.apply({"params": p}, y, t_a, train=True, rngs={"dropout": dropout_key})
      return jnp.mean(logits ** 2), logits
    return jax.grad(loss, has_aux=True)(params)

  grads, train_a = train_logits_and_grads(variables["params"], key(2))
  train_b = train_logits_and_grads(variables["params"], key(3))[1]
  assert np.abs(np.asarray(train_a - eval_a)).max() > 1e-4
  assert np.abs(np.asarray(train_a - train_b)).max() > 1e-4
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_unet_bad_values_raise():
  code = PrimeCode(16, 2)
  with pytest.raises(ValueError, match=r"ch\*ch_mult.*norm_groups=32"):
    PrimeUNet(code, ch=16, ch_mult=(1, 2))
  with pytest.raises(ValueError, match="head_dim=12"):
    PrimeUNet(code, **dict(TINY_IMAGE, head_dim=12))
  with pytest.raises(ValueError, match=r"emb_features=5.*ℓ=2"):
    PrimeUNet(code, emb_features=5, **TINY_IMAGE)
  model = PrimeUNet(code, **TINY_IMAGE)
  with pytest.raises(ValueError, match=r"H=7.*W=8.*2\*\*\(len\(ch_mult\)-1\) = 2"):
    model.init(key(0), jnp.zeros((1, 7, 8, 3, 2), jnp.int32), train=False)
  with pytest.raises(ValueError, match="image_channels=3"):
    model.init(key(0), jnp.zeros((1, 8, 8, 1, 2), jnp.int32), train=False)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 1)])
def test_im2col_convolution_equals_lax_convolution(kernel, stride):
  from prime_jax.models.unet import Conv2D
  x = jax.random.normal(key(0), (2, 8, 8, 5))
  conv = lambda impl: Conv2D(7, kernel, stride=stride, impl=impl)
  variables = nn.meta.unbox(conv("lax").init(key(1), x))
  variables = jax.tree.map(lambda v: v + jax.random.normal(key(2), v.shape), variables)
  want = conv("lax").apply(variables, x)
  got = conv("im2col").apply(variables, x)
  assert got.shape == want.shape == (2, 8 // stride, 8 // stride, 7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  grad = lambda impl: jax.grad(lambda v: (conv(impl).apply(v, x) ** 2).sum())(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               grad("im2col"), grad("lax"))
