"""benchmarks/gpu_check.sh keeps to its time budget: the figures the device check exists for
come first and always fit it, and what would overrun it is cut short or skipped, by name."""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("the OWT train step at 32 × 1024", "the sampler's own cost at batch 1",
            "the sampler's own cost at batch 64")


def _run(tmp_path, sleep_s: int, **env_extra) -> subprocess.CompletedProcess:
  """gpu_check.sh with `python3` replaced by a stand-in that sleeps `sleep_s` seconds."""
  fake = tmp_path / "python3"
  fake.write_text(f"#!/bin/sh\nsleep {sleep_s}\n")
  fake.chmod(0o755)
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SKIP_SETUP": "1",
         **env_extra}
  return subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)


def _limits(stdout: str) -> dict[str, int]:
  return {m[1]: int(m[2]) for m in re.finditer(r"\[gpu_check\] (.+) \(limit (\d+) s\):", stdout)}


def test_every_part_runs_and_the_required_figures_fit_the_default_budget(tmp_path):
  proc = _run(tmp_path, 0)
  assert proc.returncode == 0, proc.stderr
  limits = _limits(proc.stdout)
  assert len(limits) == 7 and "skipped" not in proc.stdout
  assert list(limits)[:3] == list(REQUIRED)
  assert sum(limits[k] for k in REQUIRED) <= 280  # The default GPU_CHECK_BUDGET_S.


def test_a_part_gets_only_what_is_left_and_later_parts_are_skipped(tmp_path):
  proc = _run(tmp_path, 30, GPU_CHECK_BUDGET_S="2", GPU_CHECK_MIN_PART_S="1")
  assert proc.returncode == 0, proc.stderr
  assert _limits(proc.stdout) == {REQUIRED[0]: 2}
  assert f"{REQUIRED[0]} failed (exit 124: out of time)" in proc.stdout
  assert proc.stdout.count("[gpu_check] skipped:") == 6
  assert f"skipped: {REQUIRED[1]}" in proc.stdout
