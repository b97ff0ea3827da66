"""Configs, sharding, the train step, resume and the CLI, on tiny configs."""

import glob
import json
import os

import jax
import numpy as np
import pytest

import tiny
from run_helpers import compile_cache  # noqa: F401  (autouse: the train runs here compile once)
from prime_jax import config as config_lib, experiment, sharding, train, writers

CONFIG_FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


def load_config(name, arg=""):
  path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
  return config_lib.load(f"{path}:{arg}" if arg else path)


def tiny_config(arg="", **train):
  """tests/tiny.py's config, four steps with synchronous checkpoints every two."""
  train = {"num_steps": 4, "checkpoint_every": 2, "async_checkpoint": False, **train}
  return tiny.config_from_arg(arg, **{f"train__{k}": v for k, v in train.items()})


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_file_builds_and_validates(path):
  name = os.path.splitext(os.path.basename(path))[0]
  c = load_config(name)
  config_lib.validate(c, 8)
  json.loads(c.to_json_best_effort())


@pytest.mark.parametrize("arg,check", [
    ("ell=4", lambda c: c.model.ell == 4),
    ("ell=8,objective='joint'", lambda c: c.model.ell == 8 and c.diffusion.objective == "joint"),
    ("baseline=mdm", lambda c: c.model.ell == 1 and not c.model.causal),
    ("baseline=ar", lambda c: c.model.causal and c.diffusion.objective == "autoregressive"),
    ("carry_over=False", lambda c: c.diffusion.carry_over is False),
])
def test_config_variants(arg, check):
  for name in ("shakespeare", "openwebtext"):
    c = load_config(name, arg)
    assert check(c), (name, arg)
    config_lib.validate(c, 8)


def test_config_argument_errors():
  with pytest.raises(ValueError, match="unknown config argument 'elll'.*known"):
    load_config("shakespeare", "elll=2")
  with pytest.raises(ValueError, match="baseline='gpt'"):
    load_config("shakespeare", "baseline=gpt")


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c.model.update(ell=3), r"model.d_model=32.*multiple of model.ell=3"),
    (lambda c: c.train.update(batch_size=12), r"train.batch_size=12.*data×fsdp = 8"),
    (lambda c: c.mesh.update(data=3, fsdp=1, tensor=1), r"needs 3 devices but 8 are available"),
    (lambda c: c.mesh.update(data=-1, fsdp=-1), r"at most one axis may be -1"),
    (lambda c: c.diffusion.update(objective="elbo"), r"diffusion.objective='elbo'.*one of"),
    (lambda c: c.model.update(num_heads=3), r"model.d_model=32.*num_heads=3"),
    (lambda c: c.diffusion.update(schedule="linear"), r"diffusion.schedule='linear'"),
    (lambda c: c.model.update(causal=True), r"model.causal=True"),
    (lambda c: c.optim.update(lr=0.0), r"optim.lr=0.0"),
    (lambda c: c.train.update(nan_policy="ignore"), r"train.nan_policy='ignore'"),
    (lambda c: c.model.update(dtype="float16"), r"model.dtype='float16'"),
    (lambda c: c.optim.update(grad_accum_steps=3), r"train.batch_size=8.*grad_accum_steps=3"),
    (lambda c: c.eval.update(batch_size=4), r"eval.batch_size=4.*multiple of data×fsdp = 8"),
])
def test_bad_configs_fail_before_compilation(mutate, match):
  c = tiny_config()
  mutate(c)
  with pytest.raises(ValueError, match=match):
    experiment.build(c)


def test_model_type_must_match_the_data():
  c = tiny_config()
  c.model.type = "unet"
  with pytest.raises(ValueError, match="model.type='unet'.*text"):
    experiment.build(c)


def sharded_config():
  """tiny_config() wide enough for 2×2×2 sharding (four heads split over tensor=2)."""
  c = tiny_config()
  c.model.update(d_model=64, num_heads=4)
  return c


def _one_step(c, devices):
  c.mesh.update(data=len(devices) if len(devices) < 8 else 2,
                fsdp=1 if len(devices) < 8 else 2, tensor=1 if len(devices) < 8 else 2)
  run = experiment.build(c, devices)
  state = experiment.init_state(run, 0)
  step = experiment.make_train_step(run)
  tokens = np.random.default_rng(0).integers(0, 256, (8, 32)).astype(np.int32)
  state, metrics = step(state, sharding.global_batch(tokens, sharding.batch_sharding(run.mesh)))
  return jax.device_get(state.params), jax.device_get(metrics)


def test_sharded_step_equals_single_device_step(capfd):
  c = sharded_config()
  params8, metrics8 = _one_step(c.copy_and_resolve_references(), jax.devices())
  err = capfd.readouterr().err
  assert "Involuntary full rematerialization" not in err
  params1, metrics1 = _one_step(c.copy_and_resolve_references(), jax.devices()[:1])
  np.testing.assert_allclose(metrics8["loss_bits"], metrics1["loss_bits"], rtol=1e-5)
  # AdamW's first step moves each weight by about lr · sign(gradient), so the parameters alone
  # would hide a wrong gradient; its global norm does not.
  np.testing.assert_allclose(metrics8["grad_norm"], metrics1["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params8, params1)


def test_parameters_carry_sharding_over_fsdp_and_tensor():
  c = sharded_config()
  c.mesh.update(data=2, fsdp=2, tensor=2)
  run = experiment.build(c)
  mlp_in = run.state_shardings.params["block_0"]["mlp_in"]["kernel"]
  assert tuple(mlp_in.spec) == ("fsdp", "tensor")
  mu = jax.tree.leaves(run.state_shardings.opt_state)
  assert any(tuple(s.spec) == ("fsdp", "tensor") for s in mu)


def test_first_step_loss_matches_the_zero_init_head_exactly():
  """A golden value derived by hand rather than recorded.

  At init the head is zero, so every token value has probability 1/256 and each masked digit of
  base 16 has marginal 1/16: the loss is mean(w(t) · #masked digits) · log 16 per token, on the
  very times and masks the step draws from its key. The model is the single-device one of
  test_sharded_step_equals_single_device_step, so its compiled step comes from the cache when
  both run in one worker.
  """
  from prime_jax import forward, schedules
  c = sharded_config()
  c.mesh.update(data=1, fsdp=1, tensor=1)
  run = experiment.build(c, jax.devices()[:1])
  state = experiment.init_state(run, 0)
  tokens = (np.arange(8 * 32).reshape(8, 32) * 7 % 256).astype(np.int32)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0), 0)
  k_t, k_mask, _ = jax.random.split(key, 3)
  t = schedules.sample_times(k_t, 8, c.diffusion.t_min)
  y = forward.mask_subtokens(k_mask, run.task.code, tokens, run.task.loss.schedule.alpha(t))
  masked = np.asarray(y == 16).sum(-1)
  expected_nats = np.mean(np.asarray(run.task.loss.schedule.weight(t))[:, None] * masked * np.log(16))
  _, metrics = experiment.make_train_step(run)(state, tokens)
  assert float(metrics["loss_bits"]) == pytest.approx(expected_nats / np.log(2), rel=1e-5)
  # The joint loss of a uniform head charges log(#consistent tokens) per partly masked token.
  assert float(metrics["joint_bits"]) <= float(metrics["valid_bits"]) + 1e-6


def _train(c, workdir, until_step=None):
  return train.train_and_evaluate(c, str(workdir), until_step)


def test_resume_gives_identical_parameters_and_data_order(tmp_path):
  straight = tiny_config(num_steps=4)
  _train(straight, tmp_path / "a")
  _train(tiny_config(num_steps=4, checkpoint_every=4), tmp_path / "b", until_step=2)
  second = tiny_config(num_steps=4)
  result = _train(second, tmp_path / "b")
  assert result["step"] == 4
  from prime_jax import checkpointing
  states = []
  for run_dir in ("a", "b"):
    c = tiny_config(num_steps=4)
    run = experiment.build(c)
    manager = checkpointing.make_manager(str(tmp_path / run_dir), c)
    step, state = checkpointing.restore_latest(manager, experiment.abstract_state(run))
    assert step == 4
    states.append(jax.device_get(state))
  jax.tree.map(np.testing.assert_array_equal, states[0], states[1])
  iterator_states = [open(glob.glob(str(tmp_path / d / "checkpoints" / "4" / "data" / "*.json"))[0]).read()
                     for d in ("a", "b")]
  assert iterator_states[0] == iterator_states[1]
  rows = writers.read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4]


def test_out_of_range_token_ids_from_the_data_are_refused():
  run = experiment.build(tiny_config())
  with pytest.raises(ValueError, match=r"token ids in \[-1, 5\] at step 7.*\[0, 256\)"):
    train.check_token_range(np.array([[0, 5], [-1, 2]]), run, 7)
  with pytest.raises(ValueError, match=r"token ids in \[0, 256\] at step 1"):
    train.check_token_range(np.array([[0, 256]]), run, 1)
  train.check_token_range(np.array([[0, 255]]), run, 1)
