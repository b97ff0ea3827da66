"""Tests of the text backbone (DiT transformer) and what all backbones share. Tiny sizes, CPU."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from model_helpers import (TINY_IMAGE, TINY_TEXT, check_boxed, init, jitted_apply, key,
                           perturb, random_subtokens)
from prime_jax import config as config_lib, step as step_lib
from prime_jax.models import (ACTIVATION_AXES, LOGICAL_AXES, REMAT_POLICIES, PrimeTransformer,
                              PrimeUNet, apply_rotary, count_params,
                              transformer_body_matmul_params)
from prime_jax.models.layers import flat_matmul
from prime_jax.subtokens import PrimeCode


@pytest.mark.parametrize("ell", [1, 2, 3])
def test_transformer_output_shape(ell):
  code = PrimeCode(27, ell)
  model = PrimeTransformer(code, **TINY_TEXT)
  y = random_subtokens(key(0), code, (2, 7))
  variables = init(model, y)
  assert nn.meta.unbox(variables)["params"]["embed"]["embedding"].shape[0] == code.base + 1
  logits = jitted_apply(model)(perturb(variables, 1), y, train=False)
  assert logits.shape == (2, 7, 27) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


def test_transformer_zero_head_gives_zero_logits_at_init():
  code = PrimeCode(27, 3)
  model = PrimeTransformer(code, **TINY_TEXT)
  y = random_subtokens(key(0), code, (2, 7))
  logits = jitted_apply(model)(init(model, y), y, train=False)
  np.testing.assert_array_equal(np.asarray(logits), 0.0)


def test_transformer_blocks_are_identity_at_init_adaln_zero():
  """Zero-initialised gates make every block the identity: only adaLN params can change that."""
  code = PrimeCode(27, 3)
  model = PrimeTransformer(code, **TINY_TEXT)
  y = random_subtokens(key(0), code, (2, 7))
  params = nn.meta.unbox(init(model, y))["params"]
  params["head"] = perturb(params["head"], 1)
  params["final_adaln"] = perturb(params["final_adaln"], 2)
  apply = jitted_apply(model)
  base = apply({"params": params}, y, train=False)
  assert np.abs(np.asarray(base)).max() > 1e-3
  moved = dict(params)
  for i in range(2):
    block = dict(params[f"block_{i}"])
    for name in block:
      if name != "adaln":
        block[name] = perturb(block[name], 10 + i)
    moved[f"block_{i}"] = block
  np.testing.assert_allclose(apply({"params": moved}, y, train=False), base, atol=1e-6)
  moved["block_0"] = dict(moved["block_0"], adaln=perturb(params["block_0"]["adaln"], 20))
  assert np.abs(np.asarray(apply({"params": moved}, y, train=False) - base)).max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_causal_switch(causal):
  code = PrimeCode(27, 2)
  model = PrimeTransformer(code, causal=causal, **TINY_TEXT)
  y = random_subtokens(key(0), code, (1, 6), mask_rate=0.0)
  variables = perturb(init(model, y), 1)
  k = 3
  y2 = y.at[0, k].set((y[0, k] + 1) % code.base)
  apply = jitted_apply(model)
  diff = np.abs(np.asarray(apply(variables, y2, train=False) - apply(variables, y, train=False)))
  per_position = diff.max(-1)[0]
  assert (per_position[k:] > 1e-4).all()
  if causal:
    np.testing.assert_allclose(per_position[:k], 0.0, atol=1e-6)
  else:
    assert (per_position[:k] > 1e-4).all()


def test_time_conditioning_changes_outputs_only_when_enabled():
  code = PrimeCode(27, 3)
  y = random_subtokens(key(0), code, (2, 5))
  t_a, t_b = jnp.array([0.1, 0.2]), jnp.array([0.8, 0.9])
  for enabled in (False, True):
    model = PrimeTransformer(code, time_conditioning=enabled, **TINY_TEXT)
    variables = perturb(init(model, y, t_a), 1)
    apply = jitted_apply(model)
    diff = np.abs(np.asarray(apply(variables, y, t_a, train=False)
                             - apply(variables, y, t_b, train=False))).max()
    if enabled:
      assert diff > 1e-4
      with pytest.raises(ValueError, match="time"):
        model.apply(variables, y, None, train=False)
    else:
      assert diff == 0.0
      np.testing.assert_array_equal(apply(variables, y, None, train=False),
                                    apply(variables, y, t_a, train=False))


def test_dropout_only_in_training():
  code = PrimeCode(27, 3)
  model = PrimeTransformer(code, dropout=0.3, **TINY_TEXT)
  y = random_subtokens(key(0), code, (2, 5))
  variables = perturb(init(model, y), 1)
  apply = jitted_apply(model)
  eval_a = apply(variables, y, train=False, rngs={"dropout": key(2)})
  eval_b = apply(variables, y, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = apply(variables, y, train=True, rngs={"dropout": key(2)})
  train_b = apply(variables, y, train=True, rngs={"dropout": key(3)})
  assert np.abs(np.asarray(train_a - eval_a)).max() > 1e-4
  assert np.abs(np.asarray(train_a - train_b)).max() > 1e-4


def test_rotary_scores_depend_only_on_relative_position():
  kq, kk = jax.random.split(key(0))
  q = jax.random.normal(kq, (1, 1, 1, 16))
  k = jax.random.normal(kk, (1, 1, 1, 16))

  def score(m, n):
    return float(jnp.sum(apply_rotary(q, jnp.array([m])) * apply_rotary(k, jnp.array([n]))))

  for m, n in [(0, 0), (3, 1), (2, 7), (10, 4)]:
    for shift in (1, 5, 100):
      assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-4)
  # The score does depend on the offset, and position 0 is the identity.
  assert abs(score(3, 1) - score(1, 3)) > 1e-3
  np.testing.assert_allclose(apply_rotary(q, jnp.array([0])), q, rtol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(apply_rotary(q, jnp.array([9]))),
                             jnp.linalg.norm(q), rtol=1e-5)



def test_rotary_constant_tables_equal_the_traced_ones():
  """The model passes NumPy positions (constant cos/sin tables); they rotate as traced ones do,
  and the rotation is the explicit 2-D rotation of each pair (i, i + H/2)."""
  x = jax.random.normal(key(4), (2, 33, 3, 8))
  positions = np.arange(33)
  constant = apply_rotary(x, positions)
  np.testing.assert_allclose(constant, apply_rotary(x, jnp.asarray(positions)), atol=2e-5)
  angle = 17 * 10_000.0 ** (-1 / 4)  # position 17, pair i = 1 of H = 8
  x1, x2 = x[:, 17, :, 1], x[:, 17, :, 5]
  np.testing.assert_allclose(constant[:, 17, :, 1], x1 * np.cos(angle) - x2 * np.sin(angle),
                             atol=1e-5)
  np.testing.assert_allclose(constant[:, 17, :, 5], x2 * np.cos(angle) + x1 * np.sin(angle),
                             atol=1e-5)

def test_transformer_bad_construction_raises():
  code = PrimeCode(27, 3)
  with pytest.raises(ValueError, match=r"d_model=30.*num_heads=4"):
    PrimeTransformer(code, d_model=30, num_layers=1, num_heads=4)
  with pytest.raises(ValueError, match=r"head dimension.*even"):
    PrimeTransformer(code, d_model=30, num_layers=1, num_heads=2)  # Head dim 15.
  with pytest.raises(ValueError, match=r"d_model=20.*ℓ=3"):
    PrimeTransformer(code, d_model=20, num_layers=1, num_heads=2)
  with pytest.raises(ValueError, match="combine"):
    PrimeTransformer(code, d_model=24, num_layers=1, num_heads=2, combine="max")
  with pytest.raises(ValueError, match="num_layers"):
    PrimeTransformer(code, d_model=24, num_layers=0, num_heads=2)
  model = PrimeTransformer(code, **TINY_TEXT)
  with pytest.raises(ValueError, match="ℓ=3"):
    model.init(key(0), jnp.zeros((2, 5, 2), jnp.int32), train=False)


def test_attention_impls_agree_and_bad_impl_raises():
  code = PrimeCode(27, 3)
  y = random_subtokens(key(0), code, (2, 5))
  auto = PrimeTransformer(code, causal=True, **TINY_TEXT)
  variables = perturb(init(auto, y), 1)
  xla = PrimeTransformer(code, causal=True, attention_impl="xla", **TINY_TEXT)
  np.testing.assert_allclose(jitted_apply(xla)(variables, y, train=False),
                             jitted_apply(auto)(variables, y, train=False), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"attention_impl.*'auto', 'xla', 'cudnn'.*'flash'"):
    PrimeTransformer(code, attention_impl="flash", **TINY_TEXT)
  with pytest.raises(ValueError, match="attention_impl"):
    PrimeUNet(code, attention_impl="flash", **TINY_IMAGE)


def test_config_attention_impl_reaches_both_backbones():
  for model_type, shape in [("transformer", (16,)), ("unet", (8, 8, 1))]:
    c = config_lib.base_config()
    c.model.update(type=model_type, attention_impl="cudnn")
    assert step_lib.build_model(c, PrimeCode(27, 2), shape).attention_impl == "cudnn"
    del c.model["attention_impl"]  # a workdir's config from before the key: 'auto'
    assert step_lib.build_model(c, PrimeCode(27, 2), shape).attention_impl == "auto"


def test_axis_registry_covers_the_activation_constraints(monkeypatch):
  """Every name used in an activation constraint is documented (checked by tracing one)."""
  used = []
  real = nn.with_logical_constraint

  def spy(x, names, *args, **kwargs):
    used.extend(n for n in names if n is not None)
    return real(x, names, *args, **kwargs)

  code = PrimeCode(16, 2)
  y_text = random_subtokens(key(0), code, (1, 3))
  y_image = random_subtokens(key(0), code, (1, 4, 4, 3))
  monkeypatch.setattr(nn, "with_logical_constraint", spy)
  text = PrimeTransformer(code, **TINY_TEXT)
  jax.eval_shape(lambda: text.init(key(0), y_text, train=False))
  image = PrimeUNet(code, **TINY_IMAGE)
  jax.eval_shape(lambda: image.init(key(0), y_image, train=False))
  assert {"batch", "length", "embed", "height", "channels"} <= set(used)
  assert set(used) <= set(ACTIVATION_AXES) and set(ACTIVATION_AXES) <= set(LOGICAL_AXES)


@pytest.mark.parametrize("options", [
    dict(), dict(time_conditioning=True, per_digit_tables=True, combine="sum"),
    dict(scan_layers=True, remat=True)])
def test_transformer_params_have_logical_axis_names(options):
  code = PrimeCode(27, 3)
  model = PrimeTransformer(code, **TINY_TEXT, **options)
  y = random_subtokens(key(0), code, (2, 4))
  variables = jax.eval_shape(lambda: model.init(key(0), y, jnp.ones(2), train=False))
  check_boxed(variables)


@pytest.fixture(scope="module")
def remat_runs():
  """The plain transformer's outputs and gradients (of Σ logits²) at perturbed params, beside
  those of its scanned, rematerialised and 'dots'-policy variants, as one jitted program: on a
  CPU that compiles in about half the time of one program each."""
  code = PrimeCode(27, 3)
  y = random_subtokens(key(0), code, (2, 5))
  plain = PrimeTransformer(code, **TINY_TEXT)
  params = nn.meta.unbox(perturb(init(plain, y), 1))["params"]
  scanned_params = {k: v for k, v in params.items() if not k.startswith("block_")}
  scanned_params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), params["block_0"],
                                          params["block_1"])
  models = {"plain": plain, "remat": PrimeTransformer(code, remat=True, **TINY_TEXT),
            "dots": PrimeTransformer(code, remat=True, remat_policy="dots", **TINY_TEXT)}
  scanned = PrimeTransformer(code, scan_layers=True, remat=True, **TINY_TEXT)

  def loss(model, p):
    return jnp.sum(model.apply({"params": p}, y, train=False) ** 2)

  @jax.jit
  def run(params, scanned_params):
    return {"logits": plain.apply({"params": params}, y, train=False),
            "scanned_logits": scanned.apply({"params": scanned_params}, y, train=False),
            **{f"grad_{name}": jax.grad(functools.partial(loss, model))(params)
               for name, model in models.items()}}
  return dict(run(params, scanned_params), params=params, code=code,
              loss_dots=functools.partial(loss, models["dots"]))


def test_scan_and_remat_match_the_plain_loop(remat_runs):
  np.testing.assert_allclose(remat_runs["scanned_logits"], remat_runs["logits"], rtol=1e-5,
                             atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               remat_runs["grad_plain"], remat_runs["grad_remat"])


def _checkpoint_policies(jaxpr) -> list:
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("checkpoint", "remat2"):  # jax.checkpoint, by version
      found.append(eqn.params["policy"])
    for sub in jax_core.jaxprs_in_params(eqn.params):
      found += _checkpoint_policies(sub)
  return found


def test_remat_policy_keeps_gradients_and_reaches_the_blocks(remat_runs):
  # Recomputed float32 sums may round differently: gradient entries reach ~30 here.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               remat_runs["grad_plain"], remat_runs["grad_dots"])
  policies = _checkpoint_policies(jax.make_jaxpr(remat_runs["loss_dots"])(
      remat_runs["params"]).jaxpr)
  assert policies == [REMAT_POLICIES["dots"]] * TINY_TEXT["num_layers"]
  with pytest.raises(ValueError, match="remat_policy must be one of"):
    PrimeTransformer(remat_runs["code"], remat=True, remat_policy="some", **TINY_TEXT)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_transformer_gradients_are_finite(dtype):
  code = PrimeCode(27, 3)
  model = PrimeTransformer(code, dtype=dtype, time_conditioning=True, **TINY_TEXT)
  y = random_subtokens(key(0), code, (2, 5))
  t = jnp.array([0.3, 0.7])
  x0 = jax.random.randint(key(3), (2, 5), 0, 27)
  variables = init(model, y, t)

  @jax.jit
  def loss_and_grad(params):
    def loss(p):
      logits = model.apply({"params": p}, y, t, train=True, rngs={"dropout": key(2)})
      assert logits.dtype == jnp.float32
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x0[..., None], -1))
    return jax.value_and_grad(loss)(params)

  value, grads = loss_and_grad(variables["params"])
  assert np.isfinite(float(value))
  flat = jax.tree.leaves(nn.meta.unbox(grads))
  assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in flat)
  # The zero-initialised head still learns at init (its gradient is nonzero).
  assert np.abs(np.asarray(nn.meta.unbox(grads)["head"]["kernel"])).max() > 0


def test_logical_constraints_are_noops_without_mesh_and_work_with_rules(capfd):
  code = PrimeCode(26, 3)  # b + 1 = 4 table rows and C = 26: both split evenly in two.
  model = PrimeTransformer(code, d_model=24, num_layers=1, num_heads=2, cond_dim=16)
  y = random_subtokens(key(0), code, (4, 8))
  variables = perturb(init(model, y), 1)
  eager = model.apply(variables, y, train=False)  # No jit, no mesh: constraints do nothing.
  np.testing.assert_allclose(jitted_apply(model)(variables, y, train=False), eager, atol=1e-5)

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
           ("heads", "tensor"), ("vocab", "tensor"))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, rules)
  sharded = jax.device_put(nn.meta.unbox(variables), shardings)
  assert sharded["params"]["block_0"]["mlp_in"]["kernel"].sharding.spec == P("fsdp", "tensor")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    logits = jax.jit(model.apply, static_argnames=("train",))(sharded, y, train=False)
    # Initialising under the mesh applies every parameter's constraint: names must fit shapes.
    fresh = jax.jit(functools.partial(model.init, train=False), out_shardings=shardings)(
        key(0), y)
  assert logits.sharding.spec == P(("data", "fsdp"), None, "tensor")  # The constraint held.
  # No activation had to be replicated to move between shardings (the partitioner warns if so).
  assert "Involuntary full rematerialization" not in capfd.readouterr().err
  np.testing.assert_allclose(logits, eager, atol=1e-5)
  assert nn.meta.unbox(fresh)["params"]["head"]["kernel"].sharding.spec == P("fsdp", "tensor")


def test_param_counters():
  code = PrimeCode(27, 3)
  model = PrimeTransformer(code, **TINY_TEXT)
  y = random_subtokens(key(0), code, (1, 3))
  params = nn.meta.unbox(init(model, y))["params"]
  assert count_params(params) == sum(np.size(x) for x in jax.tree.leaves(params))
  body = sum(params[f"block_{i}"][name]["kernel"].size for i in range(2)
             for name in ("query", "key", "value", "attn_out", "mlp_in", "mlp_out"))
  assert model.body_matmul_params() == body == transformer_body_matmul_params(24, 2, 4)
  assert transformer_body_matmul_params(768, 12) == 12 * 12 * 768**2



@pytest.mark.parametrize("num_in_axes,x_shape,k_shape", [
    (1, (2, 3, 5), (5, 7)), (1, (2, 3, 4, 5), (5, 2, 3)), (2, (2, 3, 4, 5), (4, 5, 6))])
def test_flat_matmul_is_the_contraction_in_value_and_gradient(num_in_axes, x_shape, k_shape):
  x = jax.random.normal(key(1), x_shape)
  kernel = jax.random.normal(key(2), k_shape)
  n_lead, n_out = len(x_shape) - num_in_axes, len(k_shape) - num_in_axes
  letters = "abcdefgh"
  lead, inner, out = (letters[:n_lead], letters[n_lead:n_lead + num_in_axes],
                      letters[n_lead + num_in_axes:n_lead + num_in_axes + n_out])
  spec = f"{lead}{inner},{inner}{out}->{lead}{out}"
  ref, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), x, kernel)
  got, got_vjp = jax.vjp(lambda a, b: flat_matmul(a, b, num_in_axes), x, kernel)
  assert got.shape == ref.shape == x_shape[:n_lead] + k_shape[num_in_axes:]
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(key(3), ref.shape)
  for g, r in zip(got_vjp(cotangent), ref_vjp(cotangent)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)

# --------------------------------------------------------------------------- U-Net


# The U-Net runs op by op here (no jit) but for its gradient: XLA takes seconds to compile even
# this tiny U-Net as one program, each ℓ and each call signature anew, while op by op every ℓ
# and both models below share almost all compiled operations (only the embedding differs).
