"""The study report's PNG plots, drawn with matplotlib's Agg canvas (no display needed).

matplotlib is a test/report extra (requirements-test.txt), so it is imported where a plot is
drawn; collecting and tabulating a study does not need it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tools.study_tables import IMAGE_UNIT, TEXT_UNIT, idle_sample, label

# matplotlib's default cycle (tab10), then black.
COLORS = [f"C{i}" for i in range(10)] + ["black"]


def _floats(values: list[Any]) -> np.ndarray:
  """Values with None as NaN, which matplotlib leaves out of lines and error bars."""
  return np.array([np.nan if v is None else float(v) for v in values], np.float64)


def line_plot(path: str, series: list[dict[str, Any]], title: str, xlabel: str, ylabel: str,
              logx: bool = False) -> str:
  """A PNG line plot. Each series: label, x, y, optional yerr, dashed, color index, markers.

  With `logx` the x axis is base 2 and ticked at the series' own x values (ℓ, steps T).
  """
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import FixedLocator, NullLocator
  # pylint: enable=g-import-not-at-top
  fig = Figure(figsize=(9.0, 5.6), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for i, s in enumerate(series):
    y = _floats(s["y"])
    yerr = _floats(s["yerr"]) if s.get("yerr") else None
    if yerr is not None and np.isnan(yerr).all():
      yerr = None
    ax.errorbar(np.asarray(s["x"], np.float64), y, yerr=yerr, label=s["label"],
                color=COLORS[s.get("color", i) % len(COLORS)],
                linestyle="--" if s.get("dashed") else "-",
                marker="o" if s.get("markers", True) else None, markersize=4, capsize=2)
  if logx:
    ax.set_xscale("log", base=2)
    ticks = sorted({float(x) for s in series for x in s["x"]})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, color="0.9")
  if series:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path)
  return path


def _bound_series(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Valid bound (solid) and joint objective (dashed) against ℓ, per training objective; MDM
  (ℓ = 1) starts both lines."""
  series = []
  for obj, color in (("joint", 0), ("valid", 2)):
    rs = sorted([r for r in group if r["baseline"] != "ar" and "eval" in r
                 and (r["objective"] == obj or r["ell"] == 1)], key=lambda r: r["ell"])
    if not any(r["objective"] == obj for r in rs):
      continue
    series.append({"label": f"valid bound, trained {obj}", "x": [r["ell"] for r in rs],
                   "y": [r["eval"]["valid_bits"] for r in rs],
                   "yerr": [r["eval"]["valid_bits_se"] for r in rs], "color": color})
    series.append({"label": f"joint obj., trained {obj}", "x": [r["ell"] for r in rs],
                   "y": [r["eval"]["joint_bits"] for r in rs], "dashed": True,
                   "color": color + 1})
  return series


def _idle_series(text: list[dict[str, Any]], image: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Measured (solid) and formula (dashed) idle-step fractions against ℓ."""
  series = []
  groups = (("text, trained joint",
             [r for r in text if r["objective"] != "valid" or r["ell"] == 1]),
            ("text, trained valid", [r for r in text if r["objective"] == "valid"]),
            ("images", image))
  for i, (name, group) in enumerate(groups):
    pts = sorted([(r["ell"], idle_sample(r)) for r in group if idle_sample(r)],
                 key=lambda p: p[0])
    if not pts:
      continue
    series.append({"label": f"{name}: measured", "x": [p[0] for p in pts],
                   "y": [p[1]["idle_fraction"] for p in pts], "color": 2 * i})
    series.append({"label": f"{name}: formula", "x": [p[0] for p in pts],
                   "y": [p[1]["formula_idle_fraction"] for p in pts], "dashed": True,
                   "color": 2 * i + 1})
  return series


def plots(results: dict[str, Any], out_dir: str) -> dict[str, str]:
  """The report's PNGs; returns {id: path}."""
  runs = list(results["runs"].values())
  text = [r for r in runs if r["kind"] == "text"]
  image = [r for r in runs if r["kind"] == "image"]
  files = {}
  for kind, group, unit in (("text", text, TEXT_UNIT), ("image", image, IMAGE_UNIT)):
    if not group:
      continue
    series = [{"label": label(r), "x": [c[0] for c in r["curve"]], "y": [c[1] for c in r["curve"]],
               "yerr": [c[2] for c in r["curve"]], "color": i} for i, r in enumerate(group)]
    files[f"curves_{kind}"] = line_plot(
        os.path.join(out_dir, f"curves_{kind}.png"), series,
        f"Held-out valid bound during training ({kind}; AR: exact NLL)", "training step", unit)
    series = _bound_series(group)
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
        series.append({"label": label(r), "x": [s["steps_T"] for s in ss],
                       "y": [s[key] for s in ss], "color": i})
    if series:
      files[f"quality_{kind}"] = line_plot(
          os.path.join(out_dir, f"quality_{kind}.png"), series,
          f"Sample quality vs sampling steps ({kind})", "sampling steps T", ylabel, logx=True)
  series = _idle_series(text, image)
  if series:
    files["idle"] = line_plot(os.path.join(out_dir, "idle_vs_ell.png"), series,
                              "Idle-step fraction with T = L, one sample per batch", "ℓ",
                              "idle steps / (T+1)", logx=True)
  return files
