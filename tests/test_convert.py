"""Converting the authors' released checkpoints: the converted networks against the official
forward (fixtures written by the authors' code), the reader's refusals, the errors, and
convert -> --mode=eval -> --mode=sample end to end."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

import official_files
from prime_jax import checkpointing, config as config_lib, experiment, step as step_lib, train
from prime_jax import torch_state
from prime_jax.convert import image, official
from prime_jax.convert.reading import OfficialFormatError
from prime_jax.data import tokenizers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "tests", "data", "official")
SHARED = next((p for p in (os.path.join(ROOT, "..", "shared", "fixtures", "official"),
                           os.path.join(ROOT, "..", "..", "shared", "fixtures", "official"))
               if os.path.isdir(p)), None)
TEXT = ["text_C1000_l1", "text_C1000_l2", "text_C1000_l3"]
IMAGE = ["image_l1", "image_l2"]


def _paths(name):
  """(checkpoint, npz) of a fixture; image fixtures live in the shared folder only."""
  if name.startswith("text"):
    base = os.path.join(DATA, name)
    return base + ".ckpt", base + ".npz"
  if SHARED is None:
    pytest.skip("image fixtures are in shared/fixtures/official, which is absent")
  base = os.path.join(SHARED, name)
  return base + ".pth", base + ".npz"


def _official_logits(name, weights):
  """(our logits, official logits) of a fixture's inputs, both (B, L, C) or (B, H, W, 3, C)."""
  path, npz = _paths(name)
  fx = dict(np.load(npz))
  model = official.read(path, weights)
  config = official.default_config(model)
  config.model.update(model.model_fields)
  config.model.dtype = "float32"
  if model.kind == "text":
    config.model.num_heads = int(fx["heads"])
    y = fx["y_t"].reshape(fx["y_t"].shape[0], -1, model.ell)
    shape, ref = (y.shape[1],), fx[f"logits_{weights}"][..., :model.vocab_size]
  else:
    height = int(fx["H"])
    config.model.update(head_dim=int(fx["head_channels"]),
                        attn_resolutions=image.attn_resolutions(model, height))
    b = fx["x_t"].shape[0]
    y = fx["x_t"].reshape(b, 3, model.ell, height, height).transpose(0, 3, 4, 1, 2)
    shape = (height, height, 3)
    ref = fx[f"logits_{weights}"][..., :model.vocab_size].transpose(0, 2, 3, 1, 4)
  net = step_lib.build_model(config, model.code, shape)
  params = official.network_params(model, config)
  out = net.apply({"params": params}, jnp.asarray(y), None, train=False)
  return np.asarray(out), ref


@pytest.mark.parametrize("weights", ["ema", "raw"])
@pytest.mark.parametrize("name", TEXT + IMAGE)
def test_converted_networks_give_the_official_logits(name, weights):
  ours, ref = _official_logits(name, weights)
  assert ours.shape == ref.shape
  scale = np.abs(ref).max()
  assert np.abs(ours - ref).max() / scale < 1e-4
  other = _official_logits(name, "raw" if weights == "ema" else "ema")[1]
  assert np.abs(other - ref).max() / scale > 1e-2  # The two sets of weights really differ.


def test_the_backbone_options_of_the_released_models():
  """Checked without the image fixtures: the adaLN vector from the time MLP at t = 0, and a
  U-Net without input or resampling convolutions."""
  from prime_jax.models import PrimeUNet, layers  # pylint: disable=g-import-not-at-top
  from prime_jax.subtokens import PrimeCode  # pylint: disable=g-import-not-at-top
  cond = layers.Conditioning(8, zero_time=True)
  variables = cond.init(jax.random.key(0), None, 2)
  p = jax.tree.map(np.asarray, nn.meta.unbox(variables["params"]))
  sinusoid = np.concatenate([np.ones(128), np.zeros(128)]).astype(np.float32)
  silu = lambda x: x / (1 + np.exp(-x))
  hidden = silu(sinusoid @ p["time_in"]["kernel"] + p["time_in"]["bias"])
  want = silu(hidden @ p["time_out"]["kernel"] + p["time_out"]["bias"])
  got = cond.apply(variables, jnp.full((2,), 0.7), 2)  # The time given is ignored,
  np.testing.assert_allclose(np.asarray(got), want[None], rtol=1e-5, atol=1e-6)  # c is shared.
  unet = PrimeUNet(PrimeCode(256, 2), ch=32, ch_mult=(3, 4), num_res_blocks=1,
                   attn_resolutions=(4,), head_dim=16, emb_features=32, dropout=0.0,
                   input_conv=False, resample_conv=False)
  y = jnp.zeros((1, 8, 8, 3, 2), jnp.int32)
  params = jax.eval_shape(lambda: unet.init(jax.random.key(0), y, None, train=False))["params"]
  names = set(params)
  assert not names & {"conv_in", "down_0_downsample", "up_1_upsample"}
  assert {"down_1_attn_0", "up_1_attn_1", "mid_attn"} <= names
  with pytest.raises(ValueError, match=r"input_conv=False needs image_channels\*emb_features = "
                                       r"3\*16 to equal ch\*ch_mult\[0\] = 96"):
    PrimeUNet(PrimeCode(256, 2), ch=32, ch_mult=(3, 4), emb_features=16, input_conv=False)


def _bytes_as_fixture_vocab(monkeypatch):
  """The byte tokenizer with the fixtures' C = 1000 (ids >= 256 simply never occur)."""
  original = tokenizers.get_tokenizer
  monkeypatch.setattr(tokenizers, "get_tokenizer", lambda name, *a, **k: (
      tokenizers.ByteTokenizer(vocab_size=1000) if name == "bytes" else original(name, *a, **k)))


def _embedded_config(ell=2):
  c = config_lib.load(os.path.join(ROOT, "configs", "official_owt.py") + f":ell={ell}")
  c.data.update(name="shakespeare_bytes", tokenizer="bytes", seq_len=16, data_dir=None)
  return c


def test_the_workdir_restores_the_chosen_weights(tmp_path, monkeypatch):
  _bytes_as_fixture_vocab(monkeypatch)
  path, npz = _paths("text_C1000_l2")
  workdir = str(tmp_path / "run")
  summary = official.convert(path, workdir, "raw", _embedded_config())
  assert (summary["ell"], summary["base"], summary["step"]) == (2, 32, 12345)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["model"]["d_model"] == 64 and saved["model"]["zero_time_conditioning"]
  run = experiment.build(config_lib.load(os.path.join(workdir, "config.py")),
                        devices=jax.devices()[:1])
  step, state = experiment.restore(run, workdir)
  fx = np.load(npz)
  y = jnp.asarray(fx["y_t"].reshape(3, 16, 2))
  for params in (state.params, state.ema_params):
    logits = run.task.model.apply({"params": params}, y, None, train=False)
    ref = fx["logits_raw"]
    assert step == 12345 and np.abs(np.asarray(logits) - ref).max() / np.abs(ref).max() < 1e-4
  saved = checkpointing.saved_tree(epath.Path(workdir) / "checkpoints" / "12345" / "state")
  assert saved["ema_params"] is None and saved["opt_state"] is None  # Made on restore.
  fresh = run.task.tx.init(state.params)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(fresh)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.opt_state),
                                                  jax.tree.leaves(fresh)))
  with pytest.raises(ValueError, match=r"step 12345 holds no optimizer state .* needs the "
                                       r"optimizer \(tx\)"):
    checkpointing.restore_latest(checkpointing.make_manager(workdir, run.config), state)
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    official.convert(path, workdir, "raw", _embedded_config())


def test_training_resumes_from_a_converted_workdir(tmp_path, monkeypatch, capsys):
  """No EMA, optimizer or data-iterator state in the workdir: restore makes them, and the
  first step runs from a fresh Adam state (count 0, so the warm-up's learning rate 0)."""
  _bytes_as_fixture_vocab(monkeypatch)
  workdir = str(tmp_path / "run")
  official.convert(_paths("text_C1000_l2")[0], workdir, "raw", _embedded_config())
  config = config_lib.load(os.path.join(workdir, "config.py"))
  config.train.update(batch_size=8, num_steps=12346, eval_every=0, sample_every=0,
                      log_every=1, checkpoint_every=1, async_checkpoint=False)
  run = experiment.build(config)
  _, before = experiment.restore(run, workdir)
  assert train.train_and_evaluate(config, workdir)["step"] == 12346
  out = capsys.readouterr().out
  assert "[train] resumed from step 12345" in out and "starting a fresh one" in out
  assert "holds no data-iterator state" in out
  step, after = experiment.restore(run, workdir)
  adam = after.opt_state[-1][0]  # chain(clip, adamw): adamw's ScaleByAdamState.
  assert step == 12346 and int(adam.count) == 1
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after.params),
                                                  jax.tree.leaves(before.params)))
  assert max(float(np.abs(np.asarray(m)).max()) for m in jax.tree.leaves(adam.mu)) > 0


def test_an_image_workdir_restores_the_unet_of_the_file(tmp_path):
  path, _ = _paths("image_l2")
  config = config_lib.load(os.path.join(ROOT, "configs", "official_cifar10.py") + ":ell=2")
  config.model.head_dim = 16  # The fixture's num_head_channels (the released models: 64).
  workdir = str(tmp_path / "c10")
  official.convert(path, workdir, "ema", config)
  saved = config_lib.load(os.path.join(workdir, "config.py"))
  assert tuple(saved.model.attn_resolutions) == (16,) and tuple(saved.model.ch_mult) == (3, 4)
  assert not saved.model.input_conv and not saved.model.resample_conv
  _, state = experiment.restore(experiment.build(saved, devices=jax.devices()[:1]), workdir)
  model = official.read(path, "ema")
  want = official.network_params(model, official.configure(model, config))
  got = jax.tree.map(np.asarray, state.ema_params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def test_ell_vocabulary_and_base_mismatches_are_named(tmp_path, monkeypatch):
  model = official.read(_paths("text_C1000_l2")[0])
  with pytest.raises(OfficialFormatError, match=r"ℓ=2, but config.model.ell=3; use the config "
                                                r"with :ell=2"):
    official.configure(model, _embedded_config(ell=3))
  with pytest.raises(OfficialFormatError, match=r"C=1000 tokens, but the config's data \("
                                                r"shakespeare_bytes, tokenizer 'bytes'\) has "
                                                r"C=256"):
    official.configure(model, _embedded_config())
  path = str(tmp_path / "c3125_l5.ckpt")  # ceil(3125 ** (1/5)) = 6 in floats; 5**5 = 3125.
  official_files.write(path, official_files.text_checkpoint(3125, 5, 6, 20, 1, 2, 8, length=8))
  with pytest.raises(OfficialFormatError, match=r"base b=6 \(C=3125, ℓ=5\) is not PrimeCode's "
                                                r"smallest b with b\*\*ℓ >= C, 5"):
    official.read(path)
  with pytest.raises(OfficialFormatError, match=r"--weights='best'"):
    official.read(_paths("text_C1000_l2")[0], "best")


# --- Files that try to run code. ------------------------------------------------------------

def _touch(path):
  """A function of this module: the real unpickler would call it."""
  open(path, "w").close()


class Touch:
  """A class whose construction creates a file."""

  def __init__(self, path):
    _touch(path)

  def __reduce__(self):
    return (Touch, ("never",))


class _Reduce:
  def __init__(self, *reduce):
    self.reduce = reduce

  def __reduce__(self):
    return self.reduce


def _checkpoint_with(tmp_path, payload) -> str:
  path = str(tmp_path / "evil.ckpt")
  blob = pickle.dumps({"state_dict": {}, "hyper_parameters": {"config": payload}}, protocol=2)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", blob)
  return path


@pytest.mark.parametrize("make, refused", [
    (lambda f: _Reduce(os.system, (f"touch {f}",)), r"refusing to unpickle (posix|os)\.system"),
    (lambda f: _Reduce(eval, (f"open({f!r}, 'w')",)), r"refusing to unpickle builtins\.eval"),
    (lambda f: _Reduce(subprocess.call, (["touch", f],)),
     r"refusing to unpickle subprocess\.call"),
    (lambda f: _Reduce(getattr, (_Reduce(__import__, ("os",)), "system")),
     r"refusing to unpickle builtins\.getattr"),
    (lambda f: _Reduce(_touch, (f,)), r"refusing to call test_convert\._touch while unpickling"),
])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, make, refused):
  target = str(tmp_path / "created")
  path = _checkpoint_with(tmp_path, make(target))
  with pytest.raises(torch_state.TorchFileError, match=refused):
    official.read(path)
  assert not os.path.exists(target)


def test_objects_of_other_classes_are_inert_records(tmp_path):
  target = str(tmp_path / "created")
  payload = [_Reduce(Touch, (target,)), _Reduce(Touch, (_touch, target))]
  path = _checkpoint_with(tmp_path, payload)
  loaded = torch_state.load(path)["hyper_parameters"]["config"]
  assert [type(x).__name__ for x in loaded] == ["Touch", "Touch"]
  assert loaded[0].module == "test_convert" and loaded[0].args == (target,)
  function = loaded[1].args[0]  # A function passed as an argument is kept, never called...
  with pytest.raises(ValueError, match=r"refusing to call test_convert\._touch"):
    function(target)  # ...not even when called by whoever reads it.
  assert not os.path.exists(target)  # Constructing the stand-ins ran nothing.


def test_truncated_and_cut_files_get_a_clear_error(tmp_path):
  path, _ = _paths("text_C1000_l2")
  raw = open(path, "rb").read()
  for size in (len(raw) // 2, len(raw) - 10):
    cut = tmp_path / f"cut_{size}.ckpt"
    cut.write_bytes(raw[:size])
    with pytest.raises(torch_state.TorchFileError, match=r"truncated or corrupted"):
      official.read(str(cut))
  short = tmp_path / "short_record.ckpt"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(short, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      dst.writestr(info.filename, data[:-4] if info.filename.endswith("data/1") else data)
  with pytest.raises(torch_state.TorchFileError, match=r"reaches past its storage"):
    official.read(str(short))


# --- The command lines. ---------------------------------------------------------------------

LAUNCHER = ("import runpy, sys\n"
            "from prime_jax.data import tokenizers\n"
            "original = tokenizers.get_tokenizer\n"
            "tokenizers.get_tokenizer = lambda name, *a, **k: (\n"
            "    tokenizers.ByteTokenizer(vocab_size=1000) if name == 'bytes'\n"
            "    else original(name, *a, **k))\n"
            "module = sys.argv.pop(1)\n"
            "sys.argv[0] = module\n"
            "runpy.run_module(module, run_name='__main__')\n")


def _cli(module, *argv):
  """A command line run with the byte tokenizer at the fixtures' C = 1000, on one CPU device."""
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.run([sys.executable, "-c", LAUNCHER, module, *argv], env=env,
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_convert_then_eval_then_sample_on_the_command_line(tmp_path):
  workdir = str(tmp_path / "official_l2")
  out = _cli("prime_jax.convert", "official", f"--checkpoint={_paths('text_C1000_l2')[0]}",
             f"--workdir={workdir}", "--config=configs/official_owt.py:ell=2",
             "--config.data.name=shakespeare_bytes", "--config.data.tokenizer=bytes",
             "--config.data.seq_len=16", "--config.data.data_dir=None")
  assert "C=1000 ℓ=2 b=32 step 12345, ema weights" in out
  small = ["--config.eval.batch_size=8", "--config.eval.num_batches=1",
           "--config.sample.batch_size=8", "--config.sample.num_samples=8",
           "--config.sample.steps=4", "--config.sample.top_p=1.0"]
  common = [f"--config={workdir}/config.py", f"--workdir={workdir}", *small]
  out = _cli("prime_jax.main", *common, "--mode=eval")
  result = json.loads(out.split("[result] ", 1)[1])
  assert result["ell"] == 2 and result["checkpoint_step"] == 12345
  assert result["reference_perplexity"] == 36.55  # The erratum's figure for ℓ = 2.
  assert result["valid_bits"] > 0 and result["joint_bits"] > 0
  out = _cli("prime_jax.main", *common, "--mode=sample")
  summary = json.load(open(os.path.join(workdir, "samples", "step_12345", "summary.json")))
  assert summary["num_calls"] + summary["num_idle"] == 5 and summary["weights"] == "ema"
  assert np.load(os.path.join(workdir, "samples", "step_12345", "tokens.npy")).shape == (8, 16)
