"""benchmarks.paired_official: workers alternate one step at a time and ratios are per pair."""

import ctypes.util
import sys

from benchmarks import paired_official


def _fake_worker(seconds: list[float], log: str) -> list[str]:
  """A worker that answers its n-th 'step' with seconds[n] and appends its name to `log`, after
  writing its LD_PRELOAD to `log`.NAME."""
  code = (
      "import os, sys\n"
      f"times = {seconds!r}\n"
      f"open({log!r} + '.' + sys.argv[1], 'w').write(os.environ.get('LD_PRELOAD', ''))\n"
      "print('ready', flush=True)\n"
      "for i, line in enumerate(sys.stdin):\n"
      f"  open({log!r}, 'a').write(sys.argv[1] + ' ')\n"
      "  print(times[i], flush=True)\n")
  return [sys.executable, "-c", code]


def test_workers_alternate_and_ratios_pair_each_step(tmp_path):
  log = str(tmp_path / "order")
  ours = [9.0, 1.0, 2.0, 4.0, 5.0]
  official = [9.0, 2.0, 3.0, 4.0, 20.0]  # Per-pair ratios after one warm-up: 2, 1.5, 1, 4.
  commands = {"ours": _fake_worker(ours, log) + ["ours"],
              "official": _fake_worker(official, log) + ["official"]}
  times = paired_official.alternate(commands, {"ours": "tcmalloc", "official": "system"},
                                    pairs=4, warmup=1, pause=0.0)
  assert times == {"ours": ours[1:], "official": official[1:]}
  # Each worker starts through launch/cpu_allocator.sh with its own allocator.
  has_tcmalloc = ctypes.util.find_library("tcmalloc_minimal") is not None
  assert ("libtcmalloc_minimal.so.4" in open(log + ".ours").read()) == has_tcmalloc
  assert open(log + ".official").read() == ""
  # Each pair starts with the worker that went second in the pair before.
  assert open(log).read().split() == ["official", "ours", "ours", "official", "official",
                                      "ours", "ours", "official", "official", "ours"]
  r = paired_official.summary(times)
  assert r["pairs"] == 4 and r["ratio_median"] == 1.75
  assert r["ours_ms_min"] == 1000.0 and r["official_ms_median"] == 3500.0
  assert r["ours_ms"] == [1000.0, 2000.0, 4000.0, 5000.0]
  assert r["official_ms"] == [2000.0, 3000.0, 4000.0, 20000.0]
  # Kept in step order, not sorted: a slow burst shows where it happened.
  assert paired_official.summary({"ours": [0.3, 0.1], "official": [0.3, 0.3]})["ours_ms"] == [
      300.0, 100.0]
