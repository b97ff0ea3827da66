"""Collects the runs of `launch/study.sh` into one results file and renders the report.

  python3 -m tools.study --study_dir=runs/study_small --report_dir=docs
writes STUDY_DIR/results.json, a copy at REPORT_DIR/study/results_SIZE.json, REPORT_DIR/results.md
(tables that name that copy; tools/study_report.py) and PNG plots under REPORT_DIR/study/ (drawn
with matplotlib; tools/study_plots.py).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Optional

import jax

from prime_jax import config as config_lib, sampling, schedules
from tools import study_plots, study_report


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _param_count(log_path: str) -> Optional[int]:
  """The parameter count the trainer prints ('params=1,252,768') in a training log."""
  if not os.path.isfile(log_path):
    return None
  with open(log_path, encoding="utf-8", errors="replace") as f:
    found = re.findall(r"params=([\d,]+)", f.read())
  return int(found[-1].replace(",", "")) if found else None


def expected_idle(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, float]:
  """The formula's idle steps for a sample summary: Σ_k (1 - (α_s - α_t))^{ℓL} over its T + 1
  steps (the last one fills every remaining mask), and the paper's e^{-ℓ}-style (1 - 1/L)^{ℓL}."""
  settings = dict(summary["settings"])
  sconf = sampling.SamplerConfig(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in settings.items()})
  schedule = schedules.make_schedule(config["diffusion"]["schedule"])
  positions = _positions(config)
  ell = int(config["model"]["ell"])
  probs = sampling.idle_probability(schedule, sconf, ell * positions)
  return {"formula_idle_per_batch": float(probs.sum()),
          "formula_idle_fraction": float(probs.mean()),
          "paper_formula": float((1.0 - 1.0 / positions) ** (ell * positions))}


def _positions(config: dict[str, Any]) -> int:
  if config["model"]["type"] == "unet":
    return 28 * 28  # Fashion-MNIST, one channel.
  return int(config["data"]["seq_len"])


def _sample_entry(config: dict[str, Any], summary_path: str) -> dict[str, Any]:
  """One kept sample set (WORKDIR/study_samples/TAG/summary.json) with the formula beside it."""
  s = _read_json(summary_path)
  tag = os.path.basename(os.path.dirname(summary_path))
  quality = s.get("quality", {})
  batch_size = int(re.search(r"_b(\d+)$", tag).group(1))
  entry = {
      "tag": tag, "steps_T": int(s["settings"]["num_steps"]), "batch_size": batch_size,
      "num_samples": int(s["num_batches"]) * batch_size,
      "num_batches": int(s["num_batches"]), "num_steps_per_batch": int(s["num_steps_per_batch"]),
      "num_calls": int(s["num_calls"]), "num_idle": int(s["num_idle"]),
      "num_invalid": int(s.get("num_invalid", 0)), "seconds": float(s["seconds"]),
      "digit_source": s["settings"].get("digit_source"),
      "sampler": {k: s["settings"].get(k) for k in (
          "grid", "draw_dtype", "top_p", "temperature", "cache_idle_steps", "carry_over")},
  }
  entry["idle_fraction"] = entry["num_idle"] / (entry["num_batches"]
                                                * entry["num_steps_per_batch"])
  entry.update(expected_idle(config, s))
  for k in ("gen_ppl", "unigram_entropy", "reference_gen_ppl", "reference_unigram_entropy",
            "fd_fashion_mnist", "fd_num_samples", "fd_classifier_accuracy", "scorer_step"):
    if k in quality:
      entry[k] = quality[k]
  return entry


def collect_run(workdir: str, logs_dir: str, timings: list[dict[str, Any]]) -> dict[str, Any]:
  """Everything one study run produced: config, parameters, curves, evaluation and samples."""
  name = os.path.basename(os.path.normpath(workdir))
  config = config_lib.upgrade_saved(_read_json(os.path.join(workdir, "config.json")))
  objective = config["diffusion"]["objective"]
  ell = int(config["model"]["ell"])
  run: dict[str, Any] = {
      "name": name, "kind": "image" if config["model"]["type"] == "unet" else "text",
      "dataset": config["data"]["name"], "ell": ell, "objective": objective,
      "baseline": "ar" if objective == "autoregressive" else ("mdm" if ell == 1 else ""),
      "params": _param_count(os.path.join(logs_dir, f"{name}.train.log")),
      "steps": int(config["train"]["num_steps"]), "batch_size": int(config["train"]["batch_size"]),
      "positions": _positions(config),
      "seconds": {t["phase"]: t["seconds"] for t in timings if t["run"] == name},
  }
  rows = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  key = "nll_bits" if objective == "autoregressive" else "valid_bits"
  run["curve"] = [[r["step"], r[f"eval/{key}"], r.get(f"eval/{key}_se")]
                  for r in rows if f"eval/{key}" in r]
  run["train_curve"] = [[r["step"], r[key]] for r in rows if key in r and "finite" in r]
  evals = sorted(glob.glob(os.path.join(workdir, "eval", "*.json")), key=os.path.getmtime)
  if evals:
    e = _read_json(evals[-1])
    run["eval"] = {k: e[k] for k in (
        "valid_bits", "valid_bits_se", "joint_bits", "joint_bits_se", "nll_bits", "nll_bits_se",
        "num_examples", "num_tokens", "checkpoint_step", "split", "unit",
        "num_time_samples") if k in e}
    run["eval"]["file"] = os.path.relpath(evals[-1], os.path.dirname(workdir))
  samples = [_sample_entry(config, p) for p in sorted(glob.glob(
      os.path.join(workdir, "study_samples", "*", "summary.json")))]
  run["samples"] = sorted(samples, key=lambda x: (x["batch_size"] == 1, x["steps_T"]))
  return run


def _hardware() -> dict[str, Any]:
  cpu = platform.processor()
  if os.path.isfile("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      names = re.findall(r"model name\s*:\s*(.*)", f.read())
    cpu = names[0].strip() if names else cpu
  return {"nproc": os.cpu_count(), "cpu_model": cpu, "platform": jax.default_backend(),
          "devices": jax.device_count(), "jax": jax.__version__,
          "python": platform.python_version()}


def collect(study_dir: str) -> dict[str, Any]:
  """results.json's content: every run under `study_dir` plus commands, hardware and wall time."""
  meta = _read_json(os.path.join(study_dir, "study.json"))
  timings = _read_jsonl(os.path.join(study_dir, "timings.jsonl"))
  wall_path = os.path.join(study_dir, "wall.json")
  with open(os.path.join(study_dir, "commands.txt")) as f:
    commands = [line.rstrip("\n") for line in f if line.strip()]
  runs = {}
  for name in meta["runs"].split():
    workdir = os.path.join(study_dir, name)
    if os.path.isfile(os.path.join(workdir, "config.json")):
      runs[name] = collect_run(workdir, os.path.join(study_dir, "logs"), timings)
  classifier = [t for t in timings if t["run"] == "classifier"]
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = ""
  return {
      "size": meta["size"], "study_dir": study_dir, "commit": commit,
      "wall_seconds": _read_json(wall_path)["seconds"] if os.path.isfile(wall_path) else None,
      "classifier_seconds": classifier[0]["seconds"] if classifier else None,
      "hardware": _hardware(), "commands": commands, "runs": runs,
  }


def write(study_dir: str, report_dir: str) -> dict[str, str]:
  """Collects, writes results.json (study and report copies), the plots and results.md."""
  results = collect(study_dir)
  results_json = os.path.join(study_dir, "results.json")
  with open(results_json, "w") as f:
    json.dump(results, f, indent=1)
  study_sub = os.path.join(report_dir, "study")
  os.makedirs(study_sub, exist_ok=True)
  copy = os.path.join(study_sub, f"results_{results['size']}.json")
  shutil.copyfile(results_json, copy)
  plot_files = study_plots.plots(results, study_sub)
  doc = os.path.join(report_dir, "results.md")
  with open(doc, "w", encoding="utf-8") as f:
    f.write(study_report.render(results, _display_path(copy), plot_files, report_dir))
  return {"results": results_json, "copy": copy, "doc": doc, **plot_files}


def _display_path(path: str) -> str:
  """The path as the doc names it: relative to the repository root when it lies inside."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  full = os.path.abspath(path)
  return os.path.relpath(full, root) if full.startswith(root + os.sep) else full


def main(argv: Optional[list[str]] = None) -> int:
  """CLI: --study_dir (what launch/study.sh wrote) and --report_dir (results.md and plots)."""
  parser = argparse.ArgumentParser(prog="python3 -m tools.study", description=__doc__)
  parser.add_argument("--study_dir", required=True)
  parser.add_argument("--report_dir", required=True)
  args = parser.parse_args(argv)
  files = write(args.study_dir, args.report_dir)
  for k, v in files.items():
    print(f"[study] {k}: {v}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
