"""Collects the runs of `launch/study.sh` into one results file and renders the report.

  python -m tools.study --study_dir=runs/study_small --report_dir=docs
writes STUDY_DIR/results.json, a copy at REPORT_DIR/study/results_SIZE.json, REPORT_DIR/results.md
(tables that name that copy) and PNG plots under REPORT_DIR/study/, drawn with Pillow.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Optional

from prime_jax import config as config_lib, sampling, schedules


TEXT_UNIT, IMAGE_UNIT = "bits/byte", "bits/pixel"


# --- Collecting. -------------------------------------------------------------------------------

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


def expected_idle(config, summary: dict[str, Any]) -> dict[str, float]:
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


def _positions(config) -> int:
  if config["model"]["type"] == "unet":
    return 28 * 28  # Fashion-MNIST, one channel.
  return int(config["data"]["seq_len"])


def collect_run(workdir: str, logs_dir: str, timings: list[dict[str, Any]]) -> dict[str, Any]:
  """Everything one study run produced: config, parameters, curves, evaluation and samples."""
  name = os.path.basename(os.path.normpath(workdir))
  config = config_lib.upgrade_saved(_read_json(os.path.join(workdir, "config.json")))
  kind = "image" if config["model"]["type"] == "unet" else "text"
  objective = config["diffusion"]["objective"]
  run: dict[str, Any] = {
      "name": name, "kind": kind, "dataset": config["data"]["name"],
      "ell": int(config["model"]["ell"]), "objective": objective,
      "baseline": "ar" if objective == "autoregressive" else ("mdm" if int(
          config["model"]["ell"]) == 1 else ""),
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
  samples = []
  for summary_path in sorted(glob.glob(os.path.join(workdir, "study_samples", "*",
                                                    "summary.json"))):
    s = _read_json(summary_path)
    tag = os.path.basename(os.path.dirname(summary_path))
    quality = s.get("quality", {})
    entry = {
        "tag": tag, "steps_T": int(s["settings"]["num_steps"]),
        "batch_size": int(re.search(r"_b(\d+)$", tag).group(1)),
        "num_samples": int(s["num_batches"]) * int(re.search(r"_b(\d+)$", tag).group(1)),
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
    samples.append(entry)
  run["samples"] = sorted(samples, key=lambda x: (x["batch_size"] == 1, x["steps_T"]))
  return run


def _hardware() -> dict[str, Any]:
  cpu = platform.processor()
  if os.path.isfile("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      names = re.findall(r"model name\s*:\s*(.*)", f.read())
    cpu = names[0].strip() if names else cpu
  import jax  # pylint: disable=g-import-not-at-top
  return {"nproc": os.cpu_count(), "cpu_model": cpu, "platform": jax.default_backend(),
          "devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version()}


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


# --- Tables. -----------------------------------------------------------------------------------

def _pm(mean: Optional[float], se: Optional[float], digits: int = 3) -> str:
  if mean is None:
    return "—"
  return f"{mean:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{mean:.{digits}f}"


def _num(x: Optional[float], digits: int = 2) -> str:
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _idle_sample(run: dict[str, Any]) -> Optional[dict[str, Any]]:
  """The T = L, batch-of-one sample set (the idle-step measurement)."""
  for s in run["samples"]:
    if s["batch_size"] == 1 and s["steps_T"] == run["positions"]:
      return s
  return None


def _label(run: dict[str, Any]) -> str:
  if run["baseline"] == "ar":
    return "AR (causal)"
  if run["ell"] == 1:
    return "MDM (ℓ=1)"
  return f"Prime ℓ={run['ell']}, {run['objective']}"


def tables(results: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
  """Every table of the report as {id: (header, rows)} of strings: the document is rendered from
  these, and the test compares the document against them and against the JSON."""
  runs = list(results["runs"].values())
  text = [r for r in runs if r["kind"] == "text"]
  image = [r for r in runs if r["kind"] == "image"]
  out = {}
  rows = []
  for r in text:
    e = r.get("eval", {})
    idle = _idle_sample(r) or {}
    if r["baseline"] == "ar":
      bound, joint = _pm(e.get("nll_bits"), e.get("nll_bits_se")), "—"
    else:
      bound = _pm(e.get("valid_bits"), e.get("valid_bits_se"))
      joint = _pm(e.get("joint_bits"), e.get("joint_bits_se"))
    rows.append([r["name"], _label(r), str(r["ell"]), f"{r['params']:,}" if r["params"] else "—",
                 bound, joint, _num(idle.get("gen_ppl")), _num(idle.get("unigram_entropy"), 3),
                 str(e.get("num_examples", "—"))])
  out["text"] = (["run", "model", "ℓ", "params", f"valid bound ({TEXT_UNIT})",
                  "joint objective (not a bound)", "gen-ppl (T=L)", "unigram entropy (nats)",
                  "held-out sequences"], rows)
  rows = []
  for r in image:
    e = r.get("eval", {})
    fds = [s for s in r["samples"] if "fd_fashion_mnist" in s]
    best = max(fds, key=lambda s: s["steps_T"]) if fds else {}
    rows.append([r["name"], _label(r), str(r["ell"]), f"{r['params']:,}" if r["params"] else "—",
                 _pm(e.get("valid_bits"), e.get("valid_bits_se")),
                 _pm(e.get("joint_bits"), e.get("joint_bits_se")),
                 _num(best.get("fd_fashion_mnist")), str(best.get("steps_T", "—")),
                 str(best.get("num_samples", "—")), str(e.get("num_examples", "—"))])
  out["image"] = (["run", "model", "ℓ", "params", f"valid bound ({IMAGE_UNIT})",
                   "joint objective (not a bound)", "FD", "FD at T", "FD samples",
                   "held-out images"], rows)
  rows = []
  for r in runs:
    for s in r["samples"]:
      if "gen_ppl" in s:
        rows.append([r["name"], str(s["steps_T"]), str(s["num_samples"]), _num(s["gen_ppl"]),
                     _num(s.get("reference_gen_ppl")), _num(s.get("unigram_entropy"), 3),
                     _num(s.get("reference_unigram_entropy"), 3), "—"])
      elif "fd_fashion_mnist" in s:
        rows.append([r["name"], str(s["steps_T"]), str(s["num_samples"]), "—", "—", "—", "—",
                     _num(s["fd_fashion_mnist"])])
  out["quality"] = (["run", "sampling steps T", "samples", "gen-ppl", "gen-ppl of as many "
                     "held-out sequences", "unigram entropy (nats)", "held-out unigram entropy",
                     "FD"], rows)
  rows = []
  for r in runs:
    s = _idle_sample(r)
    if s is None:
      continue
    rows.append([r["name"], str(r["ell"]), str(r["positions"]), str(s["num_samples"]),
                 str(s["num_steps_per_batch"]), str(s["num_calls"]), str(s["num_idle"]),
                 f"{s['idle_fraction']:.4f}", f"{s['formula_idle_fraction']:.4f}",
                 f"{s['paper_formula']:.4f}"])
  out["idle"] = (["run", "ℓ", "L", "samples (batch 1)", "steps per sample (T+1)", "network calls",
                  "idle steps", "measured idle fraction", "formula Σ(1-(α_s-α_t))^{ℓL}/(T+1)",
                  "(1-1/L)^{ℓL}"], rows)
  rows = []
  for r in runs:
    e = r.get("eval", {})
    mean = e.get("nll_bits", e.get("valid_bits"))
    rows.append([r["name"], str(r["steps"]), str(r["batch_size"]),
                 f"{r['params']:,}" if r["params"] else "—",
                 _num(r["seconds"].get("train"), 0), _num(r["seconds"].get("eval"), 0),
                 _num(sum(v for k, v in r["seconds"].items() if k.startswith("sample")), 0)])
    del mean
  out["budget"] = (["run", "training steps", "batch", "params", "train s", "eval s", "sample s"],
                   rows)
  return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
  return "\n".join(lines)


def parse_markdown_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
  """{id: (header, rows)} of every table that follows a `<!-- table: id -->` line."""
  out = {}
  lines = text.splitlines()
  for i, line in enumerate(lines):
    m = re.match(r"<!-- table: (\w+) -->", line.strip())
    if not m:
      continue
    j = i + 1
    while j < len(lines) and not lines[j].startswith("|"):
      j += 1
    block = []
    while j < len(lines) and lines[j].startswith("|"):
      block.append(lines[j])
      j += 1
    split = lambda row: [c.strip().replace("\\|", "|")
                         for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]
    out[m.group(1)] = (split(block[0]), [split(b) for b in block[2:]])
  return out


# --- Plots (Pillow). ---------------------------------------------------------------------------

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
          (0, 0, 0)]


def _font(size: int):
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
    if os.path.isfile(path):  # Has ℓ, α and ±, which Pillow's bundled font lacks.
      return ImageFont.truetype(path, size)
  try:
    return ImageFont.load_default(size=size)
  except TypeError:
    return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  if hi <= lo:
    hi = lo + 1.0
  raw = (hi - lo) / n
  mag = 10 ** math.floor(math.log10(raw))
  step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
  start = math.ceil(lo / step) * step
  return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def line_plot(path: str, series: list[dict[str, Any]], title: str, xlabel: str, ylabel: str,
              logx: bool = False) -> str:
  """A PNG line plot. Each series: label, x, y, optional yerr, dashed, color index."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  w, h, left, right, top, bottom = 900, 560, 80, 260, 50, 60
  img = Image.new("RGB", (w, h), "white")
  d = ImageDraw.Draw(img)
  font, small = _font(16), _font(13)
  fx = (lambda v: math.log2(v)) if logx else (lambda v: v)
  pts = [(fx(x), y) for s in series for x, y in zip(s["x"], s["y"]) if y is not None]
  errs = [y + e for s in series for y, e in zip(s["y"], s.get("yerr") or [0] * len(s["y"]))
          if y is not None and e] + [y - e for s in series for y, e in zip(
              s["y"], s.get("yerr") or [0] * len(s["y"])) if y is not None and e]
  if not pts:
    pts = [(0.0, 0.0), (1.0, 1.0)]
  xs, ys = [p[0] for p in pts], [p[1] for p in pts] + errs
  x0, x1 = min(xs), max(xs)
  y0, y1 = min(ys), max(ys)
  if x1 == x0:
    x0, x1 = x0 - 1, x1 + 1
  xpad = (x1 - x0) * 0.04
  x0, x1 = x0 - xpad, x1 + xpad
  pad = (y1 - y0) * 0.08 or abs(y0) * 0.1 or 1.0
  y0, y1 = y0 - pad, y1 + pad
  px = lambda v: left + (fx(v) - x0) / (x1 - x0) * (w - left - right)
  py = lambda v: h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)
  d.rectangle([left, top, w - right, h - bottom], outline="black")
  for t in _ticks(y0, y1):
    d.line([left - 4, py(t), left, py(t)], fill="black")
    d.line([left, py(t), w - right, py(t)], fill=(230, 230, 230))
    d.text((left - 6, py(t)), f"{t:g}", fill="black", font=small, anchor="rm")
  xticks = sorted({x for s in series for x in s["x"]}) if logx else _ticks(x0, x1)
  for t in xticks:
    d.line([px(t), h - bottom, px(t), h - bottom + 4], fill="black")
    d.text((px(t), h - bottom + 6), f"{t:g}", fill="black", font=small, anchor="ma")
  d.text(((left + w - right) / 2, 12), title, fill="black", font=font, anchor="ma")
  d.text(((left + w - right) / 2, h - 24), xlabel, fill="black", font=small, anchor="ma")
  label_img = Image.new("RGB", (h, 24), "white")
  ImageDraw.Draw(label_img).text((h / 2, 4), ylabel, fill="black", font=small, anchor="ma")
  img.paste(label_img.rotate(90, expand=True), (4, 0))
  for i, s in enumerate(series):
    color = COLORS[s.get("color", i) % len(COLORS)]
    xy = [(px(x), py(y)) for x, y in zip(s["x"], s["y"]) if y is not None]
    if len(xy) > 1:
      if s.get("dashed"):
        for (ax, ay), (bx, by) in zip(xy[:-1], xy[1:]):
          n = max(int(math.hypot(bx - ax, by - ay) / 8), 1)
          for k in range(0, n, 2):
            d.line([ax + (bx - ax) * k / n, ay + (by - ay) * k / n,
                    ax + (bx - ax) * (k + 1) / n, ay + (by - ay) * (k + 1) / n], fill=color,
                   width=2)
      else:
        d.line(xy, fill=color, width=2)
    for j, (x, y) in enumerate(zip(s["x"], s["y"])):
      if y is None:
        continue
      e = (s.get("yerr") or [None] * len(s["y"]))[j]
      if e:
        d.line([px(x), py(y - e), px(x), py(y + e)], fill=color, width=1)
      if s.get("markers", True):
        d.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=color)
    ly = top + 10 + 22 * i
    if s.get("dashed"):
      for k in range(12, 36, 8):
        d.line([w - right + k, ly, w - right + k + 4, ly], fill=color, width=3)
    else:
      d.line([w - right + 12, ly, w - right + 36, ly], fill=color, width=3)
    d.text((w - right + 42, ly), s["label"], fill="black", font=small, anchor="lm")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.save(path)
  return path


def plots(results: dict[str, Any], out_dir: str) -> dict[str, str]:
  """The report's PNGs; returns {id: path}."""
  runs = list(results["runs"].values())
  text = [r for r in runs if r["kind"] == "text"]
  image = [r for r in runs if r["kind"] == "image"]
  files = {}
  for kind, group, unit in (("text", text, TEXT_UNIT), ("image", image, IMAGE_UNIT)):
    if not group:
      continue
    series = [{"label": _label(r), "x": [c[0] for c in r["curve"]], "y": [c[1] for c in r["curve"]],
               "yerr": [c[2] for c in r["curve"]], "color": i} for i, r in enumerate(group)]
    files[f"curves_{kind}"] = line_plot(
        os.path.join(out_dir, f"curves_{kind}.png"), series,
        f"Held-out valid bound during training ({kind}; AR: exact NLL)", "training step", unit)
    series = []
    for obj, color in (("joint", 0), ("valid", 2)):
      rs = sorted([r for r in group if r["baseline"] != "ar" and "eval" in r
                   and (r["objective"] == obj or r["ell"] == 1)], key=lambda r: r["ell"])
      if len({r["ell"] for r in rs}) < 1 or not any(r["objective"] == obj for r in rs):
        continue
      series.append({"label": f"valid bound, trained {obj}", "x": [r["ell"] for r in rs],
                     "y": [r["eval"]["valid_bits"] for r in rs],
                     "yerr": [r["eval"]["valid_bits_se"] for r in rs], "color": color})
      series.append({"label": f"joint obj., trained {obj}", "x": [r["ell"] for r in rs],
                     "y": [r["eval"]["joint_bits"] for r in rs], "dashed": True,
                     "color": color + 1})
    if series:
      files[f"bound_vs_ell_{kind}"] = line_plot(
          os.path.join(out_dir, f"bound_vs_ell_{kind}.png"), series,
          f"Held-out valid bound vs ℓ ({kind}); dashed: joint objective, not a bound", "ℓ", unit,
          logx=True)
  for kind, group, key, ylabel in (("text", text, "gen_ppl", "generative perplexity (AR model)"),
                                   ("image", image, "fd_fashion_mnist", "Fréchet distance")):
    series = []
    for i, r in enumerate(group):
      ss = sorted([s for s in r["samples"] if key in s], key=lambda s: s["steps_T"])
      if ss:
        series.append({"label": _label(r), "x": [s["steps_T"] for s in ss],
                       "y": [s[key] for s in ss], "color": i})
    if series:
      files[f"quality_{kind}"] = line_plot(
          os.path.join(out_dir, f"quality_{kind}.png"), series,
          f"Sample quality vs sampling steps ({kind})", "sampling steps T", ylabel, logx=True)
  series = []
  groups = (("text, trained joint", [r for r in text if r["objective"] != "valid" or r["ell"] == 1]),
            ("text, trained valid", [r for r in text if r["objective"] == "valid"]),
            ("images", image))
  for i, (label, group) in enumerate(groups):
    pts = sorted([(r["ell"], _idle_sample(r)) for r in group if _idle_sample(r)],
                 key=lambda p: p[0])
    if not pts:
      continue
    series.append({"label": f"{label}: measured", "x": [p[0] for p in pts],
                   "y": [p[1]["idle_fraction"] for p in pts], "color": 2 * i})
    series.append({"label": f"{label}: formula", "x": [p[0] for p in pts],
                   "y": [p[1]["formula_idle_fraction"] for p in pts], "dashed": True,
                   "color": 2 * i + 1})
  if series:
    files["idle"] = line_plot(os.path.join(out_dir, "idle_vs_ell.png"), series,
                              "Idle-step fraction with T = L, one sample per batch", "ℓ",
                              "idle steps / (T+1)", logx=True)
  return files


# --- The document. -----------------------------------------------------------------------------

def render(results: dict[str, Any], results_path: str, plot_files: dict[str, str],
           doc_dir: str) -> str:
  """docs/results.md's text."""
  t = tables(results)
  hw = results["hardware"]
  rel = lambda p: os.path.relpath(p, doc_dir)
  runs = results["runs"]
  text_params = sorted({r["params"] for r in runs.values() if r["kind"] == "text" and r["params"]})
  wall = results["wall_seconds"]
  parts = [
      "# Does partial masking help when the likelihood is measured correctly?",
      "",
      f"Results file: `{results_path}` (size `{results['size']}`, collected at commit "
      f"`{results['commit']}`). Every number below is read from it; it was written by "
      "`launch/study.sh` through `python -m tools.study`.",
      "",
      "Prime (ℓ > 1) against an ordinary masked diffusion model (MDM, ℓ = 1) and a causal "
      "(autoregressive) baseline, with every likelihood measured by the **valid bound** "
      "(per-digit marginals, DESIGN §1.4). The paper's joint objective is shown beside it and "
      "is *not* a bound for ℓ > 1. Within a dataset every run has the same training steps, "
      "batch, optimiser and backbone; only ℓ (the input embedding) and the training objective "
      "change, so the parameter counts differ only in the small digit-embedding table.",
      "",
      "## Text: Shakespeare bytes (held-out plays)",
      "",
      "<!-- table: text -->",
      markdown_table(*t["text"]),
      "",
      "gen-ppl: perplexity of the samples (T = L, one sample per batch) under the study's own "
      "AR run (`text_ar`), first byte left out; unigram entropy: mean entropy of each sample's "
      "byte histogram.",
      "",
      "## Images: Fashion-MNIST (test images)",
      "",
      "<!-- table: image -->",
      markdown_table(*t["image"]),
      "",
      "FD: Fréchet distance on the features of the project's Fashion-MNIST classifier "
      f"(`prime_jax/sample_quality.py`{_classifier_note(results)}), samples against the "
      "10,000 test images; few samples bias it upwards, so compare rows only at equal sample "
      "counts. No real-image FD at the same sample count is measured here.",
      "",
      "## Sample quality vs sampling steps",
      "",
      f"Sampler: {_sampler_line(results)}. The held-out columns score as many real held-out "
      "sequences as there are samples with the same AR model.",
      "",
      "<!-- table: quality -->",
      markdown_table(*t["quality"]),
      "",
      "## Idle steps and network calls with T = L",
      "",
      "One sample per batch (a step is idle only if nothing in the batch is revealed). The "
      "formula column averages (1 - (α_s - α_t))^{ℓL} over the T + 1 steps actually taken "
      "(the last step fills every remaining mask); (1 - 1/L)^{ℓL} ≈ e^{-ℓ} is the paper's "
      "headline form. Which sub-tokens a step reveals depends only on the random seed, not "
      "on the network, so runs with the same ℓ and seed show the same counts.",
      "",
      "<!-- table: idle -->",
      markdown_table(*t["idle"]),
      "",
      "## Budget and wall time",
      "",
      "<!-- table: budget -->",
      markdown_table(*t["budget"]),
      "",
      " ".join(x for x in (
          f"Total wall time of the study: {wall:.0f} s ({wall / 60:.1f} min)." if wall else
          "Total wall time: not recorded.",
          f"The FD classifier was trained in {results['classifier_seconds']:.0f} s." if
          results.get("classifier_seconds") else "",
          f"Text parameter counts: {', '.join(f'{p:,}' for p in text_params)} (the digit "
          "embedding table is (b+1)·D/ℓ, so ℓ = 1 carries the largest one)." if text_params
          else "") if x),
      "",
      "## Plots",
      "",
  ]
  captions = {"curves_text": "Held-out valid bound during training, text",
              "curves_image": "Held-out valid bound during training, images",
              "bound_vs_ell_text": "Valid bound and joint objective vs ℓ, text",
              "bound_vs_ell_image": "Valid bound and joint objective vs ℓ, images",
              "quality_text": "Generative perplexity vs sampling steps",
              "quality_image": "Fréchet distance vs sampling steps",
              "idle": "Idle-step fraction vs ℓ, measured and formula"}
  for key, caption in captions.items():
    if key in plot_files:
      parts += [f"![{caption}]({rel(plot_files[key])})", ""]
  parts += [
      "## Hardware",
      "",
      f"{hw['nproc']} CPU cores ({hw['cpu_model']}), JAX {hw['jax']} on `{hw['platform']}` "
      f"with {hw['devices']} device(s), Python {hw['python']}. The cores were shared with "
      "other work while the study ran, so wall times are upper bounds.",
      "",
      "## What these numbers do and do not show",
      "",
      *_findings(results),
      "",
      "## Commands",
      "",
      f"Reproduce with `SIZE={results['size']} bash launch/study.sh` (set `OUT=` for the study "
      "folder; `TEXT_FLAGS` / `IMAGE_FLAGS` add `--config.*` overrides, e.g. a bigger model on "
      "an accelerator). It ran exactly these commands, in order:",
      "",
      "```",
      *results["commands"],
      "```",
      "",
  ]
  return "\n".join(p for p in parts if p is not None) + "\n"


def _classifier_note(results: dict[str, Any]) -> str:
  for r in results["runs"].values():
    for s in r["samples"]:
      if s.get("fd_classifier_accuracy") is not None:
        return f"; test accuracy {s['fd_classifier_accuracy']:.4f}"
  return ""


def _sampler_line(results: dict[str, Any]) -> str:
  """The sampler settings shared by the study's sample sets, from the first summary."""
  for r in results["runs"].values():
    for s in r["samples"]:
      c = s["sampler"]
      return (f"digit source `{s['digit_source']}`, {c['grid']} time grid, {c['draw_dtype']} "
              f"draws, top-p {c['top_p']:g}, temperature {c['temperature']:g}, carry-over "
              f"{c['carry_over']}, idle-step caching {c['cache_idle_steps']}")
  return "no samples"


def _findings(results: dict[str, Any]) -> list[str]:
  """Plain statements computed from the numbers, then the limits of the study."""
  runs = results["runs"]
  out = []
  for kind, unit in (("text", TEXT_UNIT), ("image", IMAGE_UNIT)):
    group = [r for r in runs.values() if r["kind"] == kind and r["baseline"] != "ar"
             and "eval" in r]
    mdm = [r for r in group if r["ell"] == 1]
    if not mdm:
      continue
    base = mdm[0]["eval"]
    for r in sorted(group, key=lambda r: (r["objective"], r["ell"])):
      if r["ell"] == 1:
        continue
      e = r["eval"]
      diff = e["valid_bits"] - base["valid_bits"]
      se = math.hypot(e["valid_bits_se"], base["valid_bits_se"])
      verdict = ("lower (better) than" if diff < -2 * se else
                 "higher (worse) than" if diff > 2 * se else "within 2 s.e. of")
      gap = e["valid_bits"] - e["joint_bits"]
      out.append(f"* {kind}, {_label(r)}: valid bound {e['valid_bits']:.3f} {unit}, "
                 f"{verdict} MDM ({base['valid_bits']:.3f}; difference {diff:+.3f} ± {se:.3f}, s.e. "
                 "combined as if independent); "
                 f"joint objective minus its valid bound: {-gap:+.3f} {unit}.")
  prime = [r for r in runs.values() if r["ell"] > 1 and "eval" in r]
  below = [r for r in prime if r["eval"]["joint_bits"] < r["eval"]["valid_bits"]]
  if prime:
    out.append(f"* The joint objective is below the valid bound in {len(below)} of {len(prime)} "
               "ℓ > 1 runs; read as a likelihood it would flatter Prime. Only the valid-bound "
               "columns compare models.")
  ar = runs.get("text_ar", {}).get("eval")
  diffusion = [r for r in runs.values() if r["kind"] == "text" and r["baseline"] != "ar"
               and "eval" in r]
  if ar and diffusion:
    best = min(diffusion, key=lambda r: r["eval"]["valid_bits"])
    out.append(f"* The AR baseline's exact held-out NLL is {ar['nll_bits']:.3f} ± "
               f"{ar['nll_bits_se']:.3f} {TEXT_UNIT}; the best diffusion bound is "
               f"{best['eval']['valid_bits']:.3f} ({_label(best)}).")
  for r in runs.values():
    s = _idle_sample(r)
    if s is None or r["baseline"] == "ar":
      continue
    expected = s["formula_idle_per_batch"] * s["num_batches"]
    out.append(f"* Idle steps, {r['name']} (ℓ={r['ell']}, L={r['positions']}): {s['num_idle']} "
               f"measured over {s['num_batches']} sample(s) of {s['num_steps_per_batch']} steps, "
               f"{expected:.1f} expected from the formula; {s['num_calls']} network calls.")
  out += [
      "",
      "What they do not show: this is one seed, a few minutes of CPU training per run "
      f"(size `{results['size']}`), tiny models far from convergence, and small held-out and "
      "sample sets. At this budget a lower bound can mean faster early training rather than a "
      "better model at convergence. Differences of a few standard errors can change with a "
      "seed, a longer schedule or a larger model; the study says nothing about the paper's "
      "scale (OpenWebText, CIFAR-10, ImageNet-32). Generative perplexity is measured under a "
      "small AR model trained with the same budget, and the FD uses a small project classifier "
      "with few samples — neither is comparable to published gen-ppl or FID figures.",
  ]
  return out


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
  plot_files = plots(results, study_sub)
  doc = os.path.join(report_dir, "results.md")
  with open(doc, "w", encoding="utf-8") as f:
    f.write(render(results, _display_path(copy), plot_files, report_dir))
  return {"results": results_json, "copy": copy, "doc": doc, **plot_files}


def _display_path(path: str) -> str:
  """The path as the doc names it: relative to the repository root when it lies inside."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  full = os.path.abspath(path)
  return os.path.relpath(full, root) if full.startswith(root + os.sep) else full


def main(argv: Optional[list[str]] = None) -> int:
  """CLI: --study_dir (what launch/study.sh wrote) and --report_dir (results.md and plots)."""
  parser = argparse.ArgumentParser(prog="python -m tools.study", description=__doc__)
  parser.add_argument("--study_dir", required=True)
  parser.add_argument("--report_dir", required=True)
  args = parser.parse_args(argv)
  files = write(args.study_dir, args.report_dir)
  for k, v in files.items():
    print(f"[study] {k}: {v}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
