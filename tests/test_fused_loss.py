"""The training loss with its gradient formed in the forward pass equals the objectives on
materialised logits: values, gradients and the per-token losses it reports."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from prime_jax import config as config_lib, fused_head, fused_loss, losses, schedules
from prime_jax import sharding, step as step_lib
from prime_jax.subtokens import PrimeCode

C, D, B, L = 57, 8, 4, 64  # 256 tokens: 4 row blocks of 64 at ℓ = 1 and 2.
SCHEDULE = schedules.LogLinear()
NAMES = ("valid", "joint", "cross_entropy")


def _inputs(ell: int, seed: int = 0):
  code, rng = PrimeCode(C, ell), np.random.default_rng(seed)
  params = tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((B, L, D), (D, C), (C,)))
  x0 = rng.integers(0, C, (B, L)).astype(np.int32)
  t = np.array([0.05, 0.3, 0.6, 0.95], np.float32)
  visible = rng.uniform(size=(B, L, ell)) < (1.0 - t)[:, None, None]
  y = np.where(visible, code.encode(x0), code.mask_value).astype(np.int32)
  return code, params, jnp.asarray(x0), jnp.asarray(y), jnp.asarray(t)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _both(code, carry_over, params, x0, y, t):
  """{name: ((reference value, grads), (fused value, grads, per-token losses))}."""
  out = {}
  for name in NAMES:
    def ref(p, name=name):
      logits = p[0] @ p[1] + p[2]
      return losses.get(name).token_loss(code, SCHEDULE, logits, x0, y, t, carry_over).mean()

    active = None if name == "cross_entropy" else (y == code.mask_value).any(-1)
    def got(p, name=name, active=active):
      return fused_loss.mean_loss(code, SCHEDULE, name, *p, x0, y, t, carry_over,
                                  active=active)
    stats = fused_head.head_stats(code, *params, x0, y if carry_over else None, active=active)
    per_ref = fused_head.losses_from_stats(code, SCHEDULE, stats, y, t)
    (value, per), grads = jax.value_and_grad(got, has_aux=True)(params)
    out[name] = (jax.value_and_grad(ref)(params), (value, grads, per), per_ref)
  return out


def _close(actual, expected, rel, what):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = max(np.abs(expected).max(), 1e-6)
  err = np.abs(actual - expected).max()
  assert err <= rel * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("carry_over", [True, False])
@pytest.mark.parametrize("ell", [1, 2, 4, 6])
def test_loss_gradients_and_reported_losses_equal_the_unfused_ones(ell, carry_over,
                                                                   monkeypatch):
  # Blocks of 64 rows go in parts of 16, so each block takes a loop of 4 parts.
  monkeypatch.setattr(fused_loss, "BLOCK_LOGITS_MAX_BYTES", 4 * 16 * C)
  code, params, x0, y, t = _inputs(ell)
  for name, ((v0, g0), (v1, g1, per), per_ref) in _both(code, carry_over, params, x0, y,
                                                         t).items():
    _close(v1, v0, 1e-5, f"{name} value")
    for arg, a, b in zip(("h", "kernel", "bias"), g1, g0):
      _close(a, b, 1e-5, f"{name} d/d{arg}")
    for key in per_ref:  # Every per-token loss, as the head's stats give them (0 if skipped).
      if key in per:
        _close(per[key], per_ref[key], 1e-5, f"{name}: per-token {key}")
    assert set(per) >= {"joint", "cross_entropy"}


def test_parts_are_the_largest_divisors_of_a_block_that_fit():
  assert fused_loss.block_rows(4096, 50257) == 4096  # 823 MB of float32 logits.
  assert fused_loss.block_rows(16384, 50257) == 16384  # 3.3 GB.
  assert fused_loss.block_rows(24576, 50257) == 12288  # 4.9 GB would not fit 4 GiB.
  assert fused_loss.block_rows(7, 10**12) == 1


def test_each_part_forms_its_logits_once(monkeypatch):
  """Three products in the compiled loss + gradient (h·W, dz·Wᵀ, hᵀ·dz), where the stats'
  custom VJP forms the logits a second time in the backward pass: four."""
  monkeypatch.setattr(fused_loss, "BLOCK_LOGITS_MAX_BYTES", 4 * 64 * C)  # A loop of 4 parts.
  code, (h, kernel, bias), x0, y, t = _inputs(2)

  def products(loss):
    """Matmuls in the compiled program, counted where they are called (a fused computation
    may be shared by several call sites)."""
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(h, kernel, bias).compile().as_text()
    dots, name = {}, None
    for line in hlo.splitlines():
      if line[:1] not in ("", " ", "}"):  # A computation's header.
        name = re.match(r"(?:ENTRY )?%?([\w.\-]+)", line)[1]
      elif " dot(" in line:
        dots[name] = dots.get(name, 0) + 1
    called = re.findall(r"calls=%([\w.\-]+)", hlo)
    return (sum(dots.get(c, 0) for c in called)
            + sum(n for c, n in dots.items() if c not in set(called)))

  fused = lambda *p: fused_loss.mean_loss(code, SCHEDULE, "valid", *p, x0, y, t)[0]
  # In chunks, so that the backward pass's products sit in a loop of their own (in one chunk
  # XLA would merge the two logits products, as it does in `fused_loss`).
  recomputed = lambda *p: fused_head.losses_from_stats(
      code, SCHEDULE, fused_head.head_stats(code, *p, x0, y, keep_logits=False, chunk_size=16),
      y, t)["valid"].mean()
  assert products(fused) == 3 and products(recomputed) == 4


def test_a_name_it_does_not_compute_and_bad_shapes_are_refused_by_name():
  code, params, x0, y, t = _inputs(2)
  with pytest.raises(ValueError, match="'valid' \\(with_hits=True\\), 'joint'"):
    fused_loss.mean_loss(code, SCHEDULE, "autoregressive", *params, x0, y, t)
  with pytest.raises(ValueError, match="with_hits=False"):
    fused_loss.mean_loss(code, SCHEDULE, "valid", *params, x0, y, t, with_hits=False)
  h, kernel, bias = params
  with pytest.raises(ValueError, match=r"kernel must have shape \(D, C=57\)"):
    fused_loss.mean_loss(code, SCHEDULE, "valid", h, kernel[:, :50], bias, x0, y, t)
  with pytest.raises(ValueError, match=r"y must have shape \(4, 64, 2\)"):
    fused_loss.mean_loss(code, SCHEDULE, "valid", h, kernel, bias, x0, y[..., :1], t)
  with pytest.raises(ValueError, match="active must have x0's shape"):
    fused_loss.mean_loss(code, SCHEDULE, "valid", *params, x0, y, t, active=y)


def _train_loss(chunk: int, mesh_shape=None):
  """((loss, metrics), gradients) of the tiny ℓ = 2 config's train loss at perturbed params, on
  one device or, with `mesh_shape` (data, tensor), on a mesh of 8 virtual devices."""
  c = tiny.config_from_arg("ell=2", model__fused_head_chunk=chunk)
  if mesh_shape:
    c.mesh.update(data=mesh_shape[0], fsdp=1, tensor=mesh_shape[1])
  config_lib.validate(c, 8)
  task = step_lib.build_task(c, 256, (32,))
  tokens = jax.random.randint(jax.random.key(2), (16, 32), 0, 256)

  def run(tokens):
    state = step_lib.init_state(task, jax.random.key(0), (32,))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape),
                          state.params)
    loss = lambda p: step_lib.loss_terms(task, p, tokens, jax.random.key(3), train=False)
    return jax.value_and_grad(loss, has_aux=True)(params)
  if not mesh_shape:
    return jax.jit(run)(tokens)
  mesh = sharding.make_mesh(c, jax.devices()[:8])
  with sharding.activate(mesh, sharding.rules(c)):
    return jax.jit(run)(jax.device_put(tokens, sharding.batch_sharding(mesh)))


def _assert_same(got, want, what: str):
  ((v1, m1), g1), ((v0, m0), g0) = got, want
  _close(v1, v0, 1e-5, f"{what} loss")
  for name in m0:
    _close(m1[name], m0[name], 1e-5, f"{what} {name}")
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    _close(a, b, 1e-4, f"{what} gradient")


@pytest.fixture
def past_the_kept_limit(monkeypatch):
  """Training through the fused head goes through `fused_loss` (counted as it is traced)."""
  monkeypatch.setattr(fused_head, "KEEP_LOGITS_MAX_BYTES", 0)
  calls, mean_loss = [], fused_loss.mean_loss
  monkeypatch.setattr(fused_loss, "mean_loss",
                      lambda *a, **k: calls.append(1) or mean_loss(*a, **k))
  return calls


def test_a_train_step_past_the_kept_logits_limit_equals_the_one_on_logits(past_the_kept_limit):
  """On one device, and over a batch sharded on data = 4 and tensor = 2 devices (the row sort,
  switch and loop over parts under SPMD partitioning)."""
  unfused = _train_loss(0)
  assert not past_the_kept_limit
  _assert_same(_train_loss(100), unfused, "fused")
  _assert_same(_train_loss(100, (4, 2)), unfused, "sharded")
  assert len(past_the_kept_limit) == 2


def test_train_steps_over_micro_batches_equal_the_ones_on_logits(monkeypatch):
  """The OWT config trains as 4 micro-batches: the custom VJP inside the accumulation loop."""
  monkeypatch.setattr(fused_head, "KEEP_LOGITS_MAX_BYTES", 0)
  tokens = jax.random.randint(jax.random.key(2), (16, 32), 0, 256)
  out = {}
  for chunk in (0, 100):
    c = tiny.config_from_arg("ell=2", model__fused_head_chunk=chunk)
    c.optim.grad_accum_steps, c.train.batch_size = 2, 16
    c.mesh.update(data=1, fsdp=1, tensor=1)
    task = step_lib.build_task(c, 256, (32,))
    step = jax.jit(functools.partial(step_lib.train_step, task))
    state, metrics = step(*step(step_lib.init_state(task, jax.random.key(0), (32,)), tokens)[:1],
                          tokens)
    out[chunk] = (state.params, metrics)
  for name in ("loss_bits", "valid_bits", "joint_bits", "grad_norm"):
    _close(out[100][1][name], out[0][1][name], 1e-5, name)
  for a, b in zip(jax.tree.leaves(out[100][0]), jax.tree.leaves(out[0][0])):
    _close(a, b, 1e-5, "parameters after two steps")


def test_the_gradient_scales_with_the_loss_cotangent():
  """The backward pass scales the gradient the forward pass formed by the loss's cotangent."""
  code, params, x0, y, t = _inputs(2)
  loss = lambda p: fused_loss.mean_loss(code, SCHEDULE, "valid", *p, x0, y, t)[0]
  once, scaled = jax.jit(lambda p: (jax.grad(loss)(p), jax.grad(lambda q: -2.5 * loss(q))(p)))(
      params)
  for a, b in zip(scaled, once):
    np.testing.assert_allclose(a, -2.5 * b, rtol=1e-6, atol=1e-12)
    assert np.abs(b).max() > 0
