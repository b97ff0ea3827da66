"""The fused head equals the objectives on materialised logits h @ W + b: values and gradients."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from prime_jax import config as config_lib, fused_head, losses, objectives, schedules
from prime_jax import sharding, step as step_lib, vocab_chunks
from prime_jax.models import PrimeTransformer
from prime_jax.models.transformer import head_params
from prime_jax.subtokens import PrimeCode

C, D, B, L = 57, 8, 3, 6  # C = 3·16 + 9: the last chunk of 16 overlaps the one before it.
SCHEDULE = schedules.LogLinear()
DIFFUSION = ("valid", "joint", "cross_entropy")


def _inputs(ell: int, seed: int = 0):
  code = PrimeCode(C, ell)
  rng = np.random.default_rng(seed)  # numpy draws: nothing to compile.
  params = tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((B, L, D), (D, C), (C,)))
  x0 = rng.integers(0, C, (B, L)).astype(np.int32)
  t = np.array([0.05, 0.5, 0.95], np.float32)  # Mostly visible, half, mostly masked.
  visible = rng.uniform(size=(B, L, ell)) < (1.0 - t)[:, None, None]
  y = np.where(visible, code.encode(x0), code.mask_value).astype(np.int32)
  cot = rng.uniform(0.5, 1.5, (B, L)).astype(np.float32)  # Per-token weights.
  return code, params, jnp.asarray(x0), jnp.asarray(y), jnp.asarray(t), jnp.asarray(cot)


def _reference(code, objective, carry_over, h, kernel, bias, x0, y, t):
  logits = h @ kernel + bias
  if objective == "autoregressive":
    return -objectives.token_log_probs(code, logits, x0)
  return losses.get(objective).token_loss(code, SCHEDULE, logits, x0, y, t, carry_over)


def _fused(code, objective, carry_over, h, kernel, bias, x0, y, t, chunk_size=16):
  if objective == "autoregressive":
    return fused_head.autoregressive_nll(code, h, kernel, bias, x0, chunk_size=chunk_size)
  return losses.get(objective).fused_loss(code, SCHEDULE, h, kernel, bias, x0, y, t,
                                             carry_over, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _values_and_grads(loss_fn, code, names, carry_over, params, x0, y, t, cot):
  """{objective: (per-token values, grads w.r.t. (h, kernel, bias) of Σ cot · values)}."""
  out = {}
  for name in names:
    f = lambda p, name=name: loss_fn(code, name, carry_over, *p, x0, y, t)
    value, vjp = jax.vjp(f, params)
    out[name] = (value, vjp(cot)[0])
  return out


def _assert_close(actual, expected, rel=1e-5, what=""):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = max(np.abs(expected).max(), 1e-6)
  err = np.abs(actual - expected).max()
  assert err <= rel * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def _compare(code, names, carry_over, params, x0, y, t, cot, rel=1e-5, **kw):
  fused_fn = functools.partial(_fused, **kw) if kw else _fused
  ref = _values_and_grads(_reference, code, names, carry_over, params, x0, y, t, cot)
  got = _values_and_grads(fused_fn, code, names, carry_over, params, x0, y, t, cot)
  for name in names:
    _assert_close(got[name][0], ref[name][0], rel, f"{name} value")
    for arg, g_got, g_ref in zip(("h", "kernel", "bias"), got[name][1], ref[name][1]):
      _assert_close(g_got, g_ref, rel, f"{name} d/d{arg}")
  return ref


@pytest.mark.parametrize("carry_over", [True, False])
@pytest.mark.parametrize("ell", [1, 2, 4, 6])
def test_every_objective_and_gradient_equals_unfused(ell, carry_over):
  code, params, x0, y, t, cot = _inputs(ell)
  names = DIFFUSION + (("autoregressive",) if carry_over else ())
  ref = _compare(code, names, carry_over, params, x0, y, t, cot)
  # The inputs exercise both branches: some tokens cost nothing, some a lot.
  visible = (y != code.mask_value).all(-1)
  assert visible.any() and (~visible).any()
  if carry_over:
    np.testing.assert_array_equal(np.asarray(ref["valid"][0])[np.asarray(visible)], 0.0)


@pytest.mark.parametrize("chunk_size,keep", [(1, False), (19, False), (1000, False), (19, True)])
def test_any_chunk_size_gives_the_same_values_and_gradients(chunk_size, keep, monkeypatch):
  """With the logits formed again chunk by chunk, or kept from the forward pass (the default at
  these sizes), where the whole vocabulary goes as one chunk whatever `chunk_size` says."""
  monkeypatch.setattr(fused_head, "KEEP_LOGITS_MAX_BYTES", 1 << 30 if keep else 0)
  code, params, x0, y, t, cot = _inputs(2, seed=1)
  _compare(code, ("valid", "joint"), True, params, x0, y, t, cot, chunk_size=chunk_size)


def test_one_pass_gives_every_diffusion_objective_and_bfloat16_stays_close():
  code, (h, kernel, bias), x0, y, t, _ = _inputs(4, seed=2)

  @jax.jit
  def run(h, kernel, bias, x0, y, t):
    logits = h @ kernel + bias
    ref = {n: losses.get(n).token_loss(code, SCHEDULE, logits, x0, y, t) for n in DIFFUSION}
    stats = fused_head.head_stats(code, h, kernel, bias, x0, y, chunk_size=16)
    bf16 = fused_head.valid_loss(code, SCHEDULE, h, kernel, bias, x0, y, t, chunk_size=16,
                                 compute_dtype=jnp.bfloat16)
    return ref, fused_head.losses_from_stats(code, SCHEDULE, stats, y, t), bf16

  ref, got, bf16 = run(h, kernel, bias, x0, y, t)
  for name in DIFFUSION:
    _assert_close(got[name], ref[name], what=name)
  assert bf16.dtype == jnp.float32
  _assert_close(bf16, ref["valid"], rel=3e-2, what="bfloat16 valid")


def test_bfloat16_logits_come_out_of_their_product_in_bfloat16():
  """As the unfused head's do (half the bytes per pass over a chunk); the gradient's products
  still accumulate into float32."""
  code, (h, kernel, bias), x0, y, _, _ = _inputs(2, seed=2)

  def log_z_sum(h, kernel, bias):
    return fused_head.head_stats(code, h, kernel, bias, x0, y, chunk_size=16,
                                 compute_dtype=jnp.bfloat16, keep_logits=False).log_z.sum()

  text = jax.jit(jax.grad(log_z_sum, argnums=(0, 1, 2))).lower(h, kernel, bias).as_text()
  products = re.findall(r"dot_general .*: \(tensor<(\d+)x(\d+)xbf16>, tensor<(\d+)x(\d+)xbf16>\)"
                        r" -> tensor<\d+x\d+x(\w+)>", text)
  d = str(kernel.shape[0])
  is_logits = lambda p: p[1] == d and p[2] == d and p[3] == "16"  # (R, D) · (D, K)
  assert {p[4] for p in products if is_logits(p)} == {"bf16"}  # Forward and backward.
  assert {p[4] for p in products if not is_logits(p)} == {"f32"}  # dz·Wᵀ and hᵀ·dz.


def _skipped_rows(active: np.ndarray, row_blocks: int) -> np.ndarray:
  """Which rows land in blocks with no active row, once active rows are put first (stably)."""
  n = active.size
  size = -(-n // min(row_blocks, n))
  computed = -(-int(active.sum()) // size) * size
  position = np.empty(n, int)
  position[np.argsort(~active.reshape(-1), kind="stable")] = np.arange(n)
  return (position >= computed).reshape(active.shape)


@pytest.mark.parametrize("row_blocks,product_rows,keep", [
    (3, 512, True), (7, 512, True), (100, 512, True), (7, 6, True), (100, 1, True),
    (7, 512, False), (7, 6, False)])
def test_blocks_of_rows_with_no_masked_digit_are_never_computed(row_blocks, product_rows, keep,
                                                                 monkeypatch):
  """NaN features on the rows that should be skipped leave the diffusion losses, and every
  gradient (0 on those rows), equal to the reference on finite features. With few rows to a
  product, the active blocks go in several groups: a loop of static length, then a shorter one.
  The skipped rows' kept logits are never written, nor read."""
  monkeypatch.setattr(vocab_chunks, "MAX_PRODUCT_ROWS", product_rows)
  monkeypatch.setattr(fused_head, "KEEP_LOGITS_MAX_BYTES", 1 << 30 if keep else 0)
  code, (h, kernel, bias), x0, y, t, cot = _inputs(2, seed=3)
  active = (y == code.mask_value).any(-1)
  skipped = _skipped_rows(np.asarray(active), row_blocks)
  assert skipped.any() and not (skipped & np.asarray(active)).any()
  block = -(-active.size // min(row_blocks, active.size))
  group = max(1, product_rows // block) * block
  assert product_rows > block or (~skipped).sum() >= 2 * group  # Those go through the loop.
  poisoned = jnp.where(skipped[..., None], jnp.nan, h)

  def total(loss_fn, h, kernel, bias):
    per = loss_fn(h, kernel, bias)
    return (per["valid"] * cot + per["joint"]).sum(), per

  def fused(h, kernel, bias):
    stats = fused_head.head_stats(code, h, kernel, bias, x0, y, chunk_size=16, active=active,
                                  row_blocks=row_blocks)
    return fused_head.losses_from_stats(code, SCHEDULE, stats, y, t)

  def reference(h, kernel, bias):
    logits = h @ kernel + bias
    return {n: losses.get(n).token_loss(code, SCHEDULE, logits, x0, y, t) for n in DIFFUSION}

  run = lambda f, h: jax.jit(jax.value_and_grad(functools.partial(total, f), argnums=(0, 1, 2),
                                                has_aux=True))(h, kernel, bias)
  (_, got), got_grads = run(fused, poisoned)
  (_, want), want_grads = run(reference, h)
  for name in ("valid", "joint"):
    _assert_close(got[name], want[name], what=name)
  for arg, g, r in zip(("h", "kernel", "bias"), got_grads, want_grads):
    _assert_close(g, r, what=f"d/d{arg}")


def _loops(ell: int, active: bool, rows: int = B * L, **kw) -> tuple[int, int, int]:
  """(loops, switches, loops whose bound is data) in the gradient of the fused valid loss."""
  code = PrimeCode(C, ell)
  rng = np.random.default_rng(0)
  h, kernel, bias = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                     for s in ((rows, D), (D, C), (C,)))
  x0 = jnp.asarray(rng.integers(0, C, rows), jnp.int32)
  y = jnp.where(jnp.arange(rows)[:, None] % 2 == 0, code.mask_value, jnp.asarray(code.encode(x0)))
  def loss(h):
    stats = fused_head.head_stats(code, h, kernel, bias, x0, y, chunk_size=16,
                                  active=(y == code.mask_value).any(-1) if active else None, **kw)
    return fused_head.losses_from_stats(code, SCHEDULE, stats, y, 0.5)["valid"].sum()
  grad = jax.grad(loss)
  text = jax.jit(grad).lower(h).as_text()
  # A fori_loop of static length traces to a scan; one whose bound is data stays a while.
  return (text.count("stablehlo.while"), text.count("stablehlo.case"),
          str(jax.make_jaxpr(grad)(h)).count("while["))


def test_no_loop_waits_on_data(monkeypatch):
  """Without `active`, one loop over the chunks in each pass. With it, each pass switches on the
  number of active blocks, and each nonzero count has its chunk loop, of static length: no loop
  bound is data (a GPU would wait on the host for it). Kept logits (one chunk) need no loop."""
  assert _loops(2, active=False) == (0, 0, 0)
  assert _loops(2, active=True, row_blocks=3) == (0, 2, 0)
  monkeypatch.setattr(fused_head, "KEEP_LOGITS_MAX_BYTES", 0)
  assert _loops(2, active=False) == (2, 0, 0)
  assert _loops(2, active=True, row_blocks=3) == (6, 2, 0)
  assert _loops(2, active=True, row_blocks=1) == (2, 0, 0)


def _logit_products(**kw) -> list:
  """Output widths of the products that form logits (B·L rows) in the gradient of the fused valid
  loss (C = 57, chunks of 16)."""
  code, (h, kernel, bias), x0, y, t, _ = _inputs(2)
  loss = lambda h: fused_head.losses_from_stats(
      code, SCHEDULE, fused_head.head_stats(code, h, kernel, bias, x0, y, chunk_size=16, **kw),
      y, t)["valid"].sum()
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(h))
  widths = [int(w) for w in re.findall(rf"f32\[{B * L},(\d+)\] = dot_general", jaxpr)]
  return [w for w in widths if w != D]  # dz Wᵀ has D columns.


def test_small_heads_keep_their_logits_for_the_backward_pass(monkeypatch):
  """Up to KEEP_LOGITS_MAX_BYTES of logits (18 tokens x 57 codes: 4104 bytes), the forward forms
  them once for the whole vocabulary and the backward reuses them; above, both passes form them
  in chunks of 16."""
  assert _logit_products(keep_logits=True) == [C]
  assert _logit_products(keep_logits=False) == [16, 16]
  monkeypatch.setattr(fused_head, "KEEP_LOGITS_MAX_BYTES", 4 * C * B * L)
  assert _logit_products() == [C]
  monkeypatch.setattr(fused_head, "KEEP_LOGITS_MAX_BYTES", 4 * C * B * L - 1)
  assert _logit_products() == [16, 16]


def test_rows_are_cut_into_blocks_only_where_a_block_is_likely_to_be_skipped(monkeypatch):
  """By default 256 tokens make 4 blocks of 64: worth it at ℓ = 2 (a third of the tokens have
  no masked digit), not at ℓ = 4 (a fifth), where every row goes as one block. 320 tokens make 5
  blocks, and 512 make 8 (each count of blocks has its chunk loop in each pass)."""
  monkeypatch.setattr(fused_head, "KEEP_LOGITS_MAX_BYTES", 0)
  assert _loops(2, active=True, rows=256) == (8, 2, 0)
  assert _loops(4, active=True, rows=256) == (2, 0, 0)
  assert _loops(4, active=True, rows=320) == (10, 2, 0)
  assert _loops(4, active=True, rows=512) == (16, 2, 0)


def test_transformer_features_times_head_params_are_its_logits():
  code = PrimeCode(C, 2)
  model = PrimeTransformer(code, d_model=24, num_layers=1, num_heads=2, cond_dim=16)
  y = jnp.asarray(code.encode(np.arange(2 * L).reshape(2, L) % C))
  y = y.at[:, ::2, 1].set(code.mask_value)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(1, impl="rbg"), y, None)["params"]
  rs = np.random.RandomState(0)
  params = jax.tree.map(lambda a: a + 0.2 * rs.standard_normal(a.shape).astype(a.dtype),
                        jax.tree.map(np.asarray, params))
  logits, h = jax.jit(lambda p: (
      model.apply({"params": p}, y, None, train=False),
      model.apply({"params": p}, y, None, train=False, return_features=True)))(params)
  kernel, bias = head_params(params)
  assert h.shape == (2, L, 24) and kernel.shape == (24, C)
  _assert_close(h @ kernel + bias, logits, what="logits")


@pytest.mark.parametrize("change,match", [
    (dict(chunk_size=0), "chunk_size"),
    (dict(kernel=jnp.zeros((D, C - 1))), "kernel"),
    (dict(bias=jnp.zeros((C + 1,))), "bias"),
    (dict(h=jnp.zeros((B, L, D + 1))), "features"),
    (dict(x0=jnp.zeros((B, L + 1), jnp.int32)), "x0"),
    (dict(y=jnp.zeros((B, L, 3), jnp.int32)), "y"),
    (dict(active=jnp.ones((B, L + 1), bool)), "active"),
    (dict(row_blocks=0), "row_blocks"),
    (dict(keep_logits="yes"), "keep_logits"),
])
def test_bad_shapes_and_chunk_sizes_are_named(change, match):
  code, (h, kernel, bias), x0, y, _, _ = _inputs(2)
  args = dict(h=h, kernel=kernel, bias=bias, x0=x0, y=y, chunk_size=16)
  args.update(change)
  with pytest.raises(ValueError, match=match):
    fused_head.head_stats(code, *(args.pop(k) for k in ("h", "kernel", "bias", "x0", "y")),
                          **args)


TRAIN_STEP_ARGS = ("ell=2", "ell=4,carry_over=False", "objective=joint", "baseline=ar")


def _loss_and_grads(task, tokens):
  """((mean loss, metrics), gradients) of the tiny config's loss at perturbed initial params."""
  state = step_lib.init_state(task, jax.random.key(0), (32,))
  # A non-zero head, so its gradient and the logits it gives are not trivial.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape),
                        state.params)

  def loss(p):
    return step_lib.loss_terms(task, p, tokens, jax.random.key(3), train=False)
  return jax.value_and_grad(loss, has_aux=True)(params)


@pytest.fixture(scope="module")
def train_step_losses():
  """{(config arg, fused_head_chunk): _loss_and_grads} for every case of the test below, as one
  jitted program: on a CPU it compiles in about two thirds of the time the cases take op by op,
  and in a quarter of what one program per case takes."""
  tasks = {}
  cases = [(arg, chunk, True) for arg in TRAIN_STEP_ARGS for chunk in (0, 100)]
  for arg, chunk, skip in cases + [("ell=2", 100, False)]:  # 256 is not a multiple of 100.
    c = tiny.config_from_arg(arg, model__fused_head_chunk=chunk, model__fused_head_skip_rows=skip)
    config_lib.validate(c, 8)
    tasks[f"{arg}/{chunk}" + ("" if skip else "/all rows")] = step_lib.build_task(c, 256, (32,))
  # 16 × 32 tokens: at ℓ = 2 the fused head cuts them into 4 blocks and skips the free ones.
  tokens = jax.random.randint(jax.random.key(2), (16, 32), 0, 256)
  return jax.jit(lambda x: {name: _loss_and_grads(task, x) for name, task in tasks.items()})(
      tokens)


@pytest.mark.parametrize("arg", TRAIN_STEP_ARGS)
def test_a_train_step_through_the_fused_head_equals_the_one_on_logits(arg, train_step_losses):
  """config.model.fused_head_chunk (and fused_head_skip_rows) change how the loss is computed,
  not its value or gradient."""
  (v0, m0), g0 = train_step_losses[f"{arg}/0"]
  fused = [k for k in train_step_losses if k.startswith(f"{arg}/100")]
  assert len(fused) == (2 if arg == "ell=2" else 1)
  for key in fused:
    (v1, m1), g1 = train_step_losses[key]
    _assert_close(v1, v0, what=f"{key} loss")
    for name in m0:
      _assert_close(m1[name], m0[name], what=f"{key} {name}")
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
      _assert_close(a, b, rel=1e-4, what=f"{key} gradient")


def test_the_fused_head_over_a_data_and_tensor_sharded_batch_equals_one_device(train_step_losses):
  """The fused head's row sort, switch and kept logits under SPMD partitioning: the loss and
  gradients of the ℓ = 2 case with its 16 sequences split over data = 4 and tensor = 2 devices
  equal the single-device ones."""
  c = tiny.config_from_arg("ell=2", model__fused_head_chunk=100)
  c.mesh.update(data=4, fsdp=1, tensor=2)
  task = step_lib.build_task(c, 256, (32,))
  mesh = sharding.make_mesh(c, jax.devices()[:8])
  tokens = jax.random.randint(jax.random.key(2), (16, 32), 0, 256)
  with sharding.activate(mesh, sharding.rules(c)):
    got = jax.jit(functools.partial(_loss_and_grads, task))(
        jax.device_put(tokens, sharding.batch_sharding(mesh)))
  (v0, m0), g0 = train_step_losses["ell=2/100"]
  (v1, m1), g1 = got
  _assert_close(v1, v0, what="sharded loss")
  for name in m0:
    _assert_close(m1[name], m0[name], what=f"sharded {name}")
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    _assert_close(a, b, rel=1e-4, what="sharded gradient")


def test_fused_head_skip_rows_off_leaves_no_switch_over_row_blocks():
  """model.fused_head_skip_rows=False: the train loss has no switch over the count of active
  row blocks in the head's two passes, for a batch that is otherwise cut into blocks."""
  tokens = jnp.zeros((16, 32), jnp.int32)
  switches = {}
  for skip in (True, False):
    c = tiny.config_from_arg("ell=2", model__fused_head_chunk=100, model__fused_head_skip_rows=skip)
    task = step_lib.build_task(c, 256, (32,))
    params = jax.eval_shape(lambda: step_lib.init_state(task, jax.random.key(0), (32,))).params
    loss = lambda p, task=task: step_lib.loss_terms(task, p, tokens, jax.random.key(3),
                                                    train=False)[0]
    switches[skip] = jax.jit(jax.grad(loss)).lower(params).as_text().count("stablehlo.case")
  assert switches[True] == switches[False] + 2


def test_weight_gradient_is_a_plain_product_in_the_compiled_backward():
  """With the rows in blocks (here 8 of 64), dW = hᵀ dz contracts the rows of both operands, a
  form XLA:CPU's YNNPACK ran ~1.3x slower than a plain product. The backward takes it from hᵀ."""
  code, rng = PrimeCode(300, 2), np.random.default_rng(0)
  h = jnp.asarray(rng.standard_normal((4, 128, 32)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((32, 300)), jnp.float32)
  x0 = rng.integers(0, 300, (4, 128))
  y = np.where(rng.uniform(size=(4, 128, 2)) < 0.5, code.encode(x0), code.mask_value)
  loss = lambda k: fused_head.valid_loss(code, SCHEDULE, h, k, jnp.zeros(300), x0, y,
                                         jnp.full((4,), 0.5), chunk_size=128).sum()
  hlo = jax.jit(jax.grad(loss)).lower(kernel).compile().as_text()
  dims = re.findall(r"dot\([^)]*\), lhs_contracting_dims=\{(\d)\}, rhs_contracting_dims=\{(\d)\}",
                    hlo)
  assert dims and ("0", "0") not in dims
