"""`python -m prime_jax.main` end to end: train, eval and sample, on tfds mock data."""

import glob
import json
import os
import subprocess
import sys

import pytest

from run_helpers import compile_cache  # noqa: F401  (the session's shared compilation cache)

tfds = pytest.importorskip("tensorflow_datasets")

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = ["--config.data.name=tiny_shakespeare", "--config.data.seq_len=32",
        "--config.model.d_model=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
        "--config.model.cond_dim=16", "--config.train.batch_size=8", "--config.train.num_steps=4",
        "--config.train.log_every=2", "--config.train.eval_every=4",
        "--config.train.eval_batches=1", "--config.train.checkpoint_every=2",
        "--config.train.sample_every=4", "--config.eval.batch_size=8",
        "--config.eval.num_batches=0", "--config.eval.num_time_samples=2",
        "--config.sample.batch_size=8", "--config.sample.num_samples=8",
        "--config.sample.steps=8"]


# The real command line, inside tfds's mock data (which patches tfds in that process only).
LAUNCHER = ("import runpy, sys, tensorflow_datasets as tfds\n"
            "with tfds.testing.mock_data(num_examples=64):\n"
            "  sys.argv[0] = 'prime_jax.main'\n"
            "  runpy.run_module('prime_jax.main', run_name='__main__')\n")


def _run(workdir, cache, mode, *extra):
  """One CLI call, with the compilation cache `cache`: eval and sample load the evaluation and
  sampler that train compiled, and train loads the train step of the tests' tiny config (the
  same shapes) when an earlier module compiled it."""
  argv = [f"--config={ROOT}/configs/shakespeare.py:ell=2", f"--workdir={workdir}",
          f"--mode={mode}", *TINY, *extra]
  env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT), "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": cache,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  proc = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_train_eval_sample_on_mock_tfds(tmp_path, compile_cache):
  workdir = str(tmp_path / "run")
  out = _run(workdir, compile_cache, "train") + _run(workdir, compile_cache, "eval")
  out += _run(workdir, compile_cache, "sample", "--config.sample.prefix=To be")
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["data"]["name"] == "tiny_shakespeare" and saved["train"]["num_steps"] == 4
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "loss_bits" in r] == [2, 4]
  assert any("eval/valid_bits" in r for r in rows)
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert os.path.exists(os.path.join(workdir, "samples", "step_4", "samples.txt"))
  (result_file,) = glob.glob(os.path.join(workdir, "eval", "*.json"))
  result = json.load(open(result_file))
  assert result["checkpoint_step"] == 4 and result["valid_bits"] > result["joint_bits"] > 0
  assert result["valid_bits_se"] > 0
  summary = json.load(open(os.path.join(workdir, "samples", "step_4", "summary.json")))
  assert summary["num_calls"] + summary["num_idle"] == 9  # 8 grid steps and the final fill
  text = open(os.path.join(workdir, "samples", "step_4", "samples.txt")).read()
  assert text.count("=== sample") == 8
  assert all(block.startswith("To be") for block in text.split("=== sample ")[1:]
             for block in [block.split("===\n", 1)[1]])
  assert "[eval] tiny_shakespeare/validation @ step 4" in out
