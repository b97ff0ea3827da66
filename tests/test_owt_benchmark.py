"""The OpenWebText-small benchmark's code paths, on a scaled-down model so they run on a CPU."""

import importlib.util
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_target, owt_step
from prime_jax import config as config_lib


@pytest.fixture(scope="module")
def small_owt():
  c = owt_step.owt_config(2)
  c.model.update(d_model=32, num_layers=2, num_heads=2, cond_dim=16)
  c.data.seq_len = 32
  return c


def test_owt_config_neither_remats_nor_scans_and_trains_the_fused_head():
  c = owt_step.owt_config(32)
  assert (c.model.remat, c.model.remat_policy, c.model.scan_layers) == (False, "dots", False)
  assert c.model.fused_head_chunk > 0 and c.train.batch_size == 32
  assert c.data.seq_len == 1024 and c.model.dtype == "bfloat16"


def test_model_flops_count_six_n_per_token_plus_attention_and_head(small_owt):
  d, layers, seq, batch = 32, 2, 32, 2
  n_body = layers * 12 * d * d
  expected = 6 * n_body * batch * seq + 12 * layers * seq**2 * d * batch + 6 * d * 50257 * batch * seq
  assert owt_step.model_flops(small_owt) == expected


def test_report_times_the_step_and_the_head_share(small_owt, capsys):
  out = owt_step.report(2, 2, peak_tflops=1.0, config=small_owt, timed=True)
  assert out["peak_bytes"] > 0 and out["step_s"] > 0
  assert out["tokens_per_s"] == pytest.approx(2 * 32 / out["step_s"])
  # The timed share is one minus the body-only step's time over the whole step's. On a shared
  # CPU either timing can be hit by outside load, so only the formula is exact.
  assert out["body_s"] > 0
  assert out["head_share"] == pytest.approx(1.0 - out["body_s"] / out["step_s"])
  # A 50257-way head on a 32-wide, 2-block body: the head's products are 98% of the model's
  # FLOPs. Its 64 tokens' logits are kept (one chunk, no loop), so XLA counts every product; both
  # programs also update every weight (the head's 1.6M with a zero gradient in the body-only one).
  assert 0.9 < out["head_flop_share"] < 0.98
  # The step's line comes out before the share's second compile, which a time limit may stop.
  lines = capsys.readouterr().out.splitlines()
  step_at = [i for i, l in enumerate(lines) if "MFU" in l]
  share_at = [i for i, l in enumerate(lines)
              if f"{out['head_flop_share']:.1%} of its compiled FLOPs" in l]
  assert len(step_at) == len(share_at) == 1 and step_at[0] < share_at[0]


def test_report_without_the_share_compiles_once_and_writes_a_profile(small_owt, tmp_path):
  out = owt_step.report(2, 1, peak_tflops=1.0, config=small_owt, timed=True, head_share=False,
                        profile_dir=str(tmp_path))
  assert out["step_s"] > 0 and "head_share" not in out
  assert list(tmp_path.rglob("*.trace.json.gz"))


def test_overrides_reach_the_config_and_bad_ones_name_the_key():
  c = owt_step.owt_config(4, overrides=("model.remat=True", "model.fused_head_chunk=8192",
                                        "model.remat_policy=full"))
  assert (c.model.remat, c.model.fused_head_chunk, c.model.remat_policy) == (True, 8192, "full")
  for bad, named in [("model.remats=False", "remats"), ("modl.remat=False", "modl.remat"),
                     ("model.remat", "model.remat"), ("model.remat='yes'", "remat"),
                     ("model.remat_policy=fast", "model.remat_policy")]:
    with pytest.raises(config_lib.ConfigError, match=named):
      owt_step.owt_config(4, overrides=(bad,))


HAS_CUDA_PLUGIN = (importlib.util.find_spec("jax_plugins") is not None
                   and importlib.util.find_spec("jax_plugins.xla_cuda12") is not None)
SMALL_OWT = ("model.d_model=32", "model.num_layers=2", "model.num_heads=2", "model.cond_dim=16",
             "data.seq_len=32")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile_for_h100(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--owt", "--owt_only",
                         "--owt_target", "h100", "--owt_no_share", *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="the CUDA plugin is installed here")
def test_a_gpu_target_without_the_cuda_plugin_says_what_to_install():
  run = _compile_for_h100("--owt_batch", "2", "--owt_set", *SMALL_OWT)
  assert run.returncode != 0
  assert 'pip install "jax[cuda12]==' in run.stderr and "gpu_compile.sh" in run.stderr
  with pytest.raises(ValueError, match=r"'a100' is not one of \['h100'\]"):
    gpu_target.compile_only_device("a100")


CUDNN_CHECK = """
from benchmarks import gpu_target
gpu_target.prepare()
from benchmarks import owt_step
config = owt_step.owt_config(2, overrides={overrides!r})
compiled, _, _ = owt_step.compile_step(config, device=gpu_target.compile_only_device("h100"))
print("fmha calls:", compiled.as_text().count('custom_call_target="__cudnn$fmha'))
"""


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax's CUDA plugin (gpu_compile.sh)")
def test_the_owt_step_compiles_for_an_h100_on_this_host():
  """The small OWT model at two batches: XLA:GPU's memory and roofline grow with the batch,
  and 'auto' attention becomes cuDNN's fused kernel although the host's backend is the CPU."""
  run = _compile_for_h100("--owt_batch", "2", "8", "--owt_set", *SMALL_OWT)
  assert run.returncode == 0, run.stderr[-2000:]
  lines = [l for l in run.stdout.splitlines() if "compiled for an NVIDIA H100" in l]
  gib = [float(l.split("compiled peak memory ")[1].split(" GiB")[0]) for l in lines]
  assert len(gib) == 2 and 0 < gib[0] < gib[1]
  roofline = [float(l.split("; roofline ")[1].split(" ms")[0]) for l in lines]
  assert 0 < roofline[0] < roofline[1] and all("MFU at most" in l for l in lines)
  script = CUDNN_CHECK.format(overrides=SMALL_OWT + ("model.num_heads=1",))  # head size 32
  run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert int(run.stdout.split("fmha calls:")[1]) >= 2  # forward and backward
