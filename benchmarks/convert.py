"""Time and peak host memory of converting a GPT-2-size checkpoint in the authors' format.

  python3 -m benchmarks.convert [--ell=2] [--dir=/tmp] [--no_optimizer]

Writes (with tests/official_files.py, no torch) a Lightning checkpoint of the released text
models' shape: DiT 12 × 768, 12 heads, cond 128, GPT-2's C = 50257 at the given ℓ, with EMA
weights and an Adam state as the released files hold, then runs
`python3 -m prime_jax.convert official` on it in a child process and reports the child's wall
time and peak resident memory (getrusage of children) against the file size. Targets: < 30 s,
peak < 2× the file size. Needs GPT-2's tokenizer file (python3 -m prime_jax.data.prepare
gpt2_tiktoken) since the default config's data is OpenWebText.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import official_files  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from prime_jax.subtokens import PrimeCode  # noqa: E402  pylint: disable=wrong-import-position

GPT2_VOCAB = 50257


def write_checkpoint(path: str, ell: int, optimizer: bool) -> float:
  """Writes the checkpoint; returns the seconds it took."""
  start = time.perf_counter()
  tree = official_files.text_checkpoint(GPT2_VOCAB, ell, PrimeCode(GPT2_VOCAB, ell).base,
                                        d_model=768, layers=12, heads=12, cond=128,
                                        optimizer=optimizer)
  official_files.write(path, tree)
  return time.perf_counter() - start


def convert_in_child(path: str, workdir: str, ell: int) -> tuple[float, float]:
  """(wall seconds, peak RSS in bytes) of the converter command line."""
  command = [sys.executable, "-m", "prime_jax.convert", "official", f"--checkpoint={path}",
             f"--workdir={workdir}", f"--config={ROOT}/configs/official_owt.py:ell={ell}"]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS",
                                                                           "cpu")}
  start = time.perf_counter()
  proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux.
  return seconds, peak_kib * 1024.0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ell", type=int, default=2)
  parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  parser.add_argument("--no_optimizer", action="store_true", help="leave out the Adam state")
  args = parser.parse_args()
  directory = tempfile.mkdtemp(dir=args.dir, prefix="convert_benchmark_")
  try:
    path = os.path.join(directory, "checkpoint.ckpt")
    written = write_checkpoint(path, args.ell, not args.no_optimizer)
    size = os.path.getsize(path)
    seconds, peak = convert_in_child(path, os.path.join(directory, "workdir"), args.ell)
    print(f"[convert] file {size / 2**30:.2f} GiB (written in {written:.1f} s); conversion "
          f"{seconds:.1f} s (target < 30), peak RSS {peak / 2**30:.2f} GiB = "
          f"{peak / size:.2f}× the file (target < 2)", flush=True)
  finally:
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  main()
