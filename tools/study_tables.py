"""The study report's tables, built from results.json's content, and a reader for them.

`tables(results)` gives every table as {id: (header, rows)} of strings; the document is rendered
from it, and `parse_markdown_tables` reads a rendered document back so a test can compare them.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

TEXT_UNIT, IMAGE_UNIT = "bits/byte", "bits/pixel"

Table = tuple[list[str], list[list[str]]]


def _pm(mean: Optional[float], se: Optional[float], digits: int = 3) -> str:
  if mean is None:
    return "—"
  return f"{mean:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{mean:.{digits}f}"


def _num(x: Optional[float], digits: int = 2) -> str:
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _params(run: dict[str, Any]) -> str:
  return f"{run['params']:,}" if run["params"] else "—"


def idle_sample(run: dict[str, Any]) -> Optional[dict[str, Any]]:
  """The T = L, batch-of-one sample set (the idle-step measurement), or None."""
  for s in run["samples"]:
    if s["batch_size"] == 1 and s["steps_T"] == run["positions"]:
      return s
  return None


def label(run: dict[str, Any]) -> str:
  """How plots and tables name a run: AR, MDM or Prime with its ℓ and training objective."""
  if run["baseline"] == "ar":
    return "AR (causal)"
  if run["ell"] == 1:
    return "MDM (ℓ=1)"
  return f"Prime ℓ={run['ell']}, {run['objective']}"


def _text_table(text: list[dict[str, Any]]) -> Table:
  rows = []
  for r in text:
    e = r.get("eval", {})
    idle = idle_sample(r) or {}
    if r["baseline"] == "ar":
      bound, joint = _pm(e.get("nll_bits"), e.get("nll_bits_se")), "—"
    else:
      bound = _pm(e.get("valid_bits"), e.get("valid_bits_se"))
      joint = _pm(e.get("joint_bits"), e.get("joint_bits_se"))
    rows.append([r["name"], label(r), str(r["ell"]), _params(r), bound, joint,
                 _num(idle.get("gen_ppl")), _num(idle.get("unigram_entropy"), 3),
                 str(e.get("num_examples", "—"))])
  return (["run", "model", "ℓ", "params", f"valid bound ({TEXT_UNIT})",
           "joint objective (not a bound)", "gen-ppl (T=L)", "unigram entropy (nats)",
           "held-out sequences"], rows)


def _image_table(image: list[dict[str, Any]]) -> Table:
  rows = []
  for r in image:
    e = r.get("eval", {})
    fds = [s for s in r["samples"] if "fd_fashion_mnist" in s]
    best = max(fds, key=lambda s: s["steps_T"]) if fds else {}
    rows.append([r["name"], label(r), str(r["ell"]), _params(r),
                 _pm(e.get("valid_bits"), e.get("valid_bits_se")),
                 _pm(e.get("joint_bits"), e.get("joint_bits_se")),
                 _num(best.get("fd_fashion_mnist")), str(best.get("steps_T", "—")),
                 str(best.get("num_samples", "—")), str(e.get("num_examples", "—"))])
  return (["run", "model", "ℓ", "params", f"valid bound ({IMAGE_UNIT})",
           "joint objective (not a bound)", "FD", "FD at T", "FD samples", "held-out images"],
          rows)


def _quality_table(runs: list[dict[str, Any]]) -> Table:
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
  return (["run", "sampling steps T", "samples", "gen-ppl",
           "gen-ppl of as many held-out sequences", "unigram entropy (nats)",
           "held-out unigram entropy", "FD"], rows)


def _idle_table(runs: list[dict[str, Any]]) -> Table:
  rows = []
  for r in runs:
    s = idle_sample(r)
    if s is None:
      continue
    rows.append([r["name"], str(r["ell"]), str(r["positions"]), str(s["num_samples"]),
                 str(s["num_steps_per_batch"]), str(s["num_calls"]), str(s["num_idle"]),
                 f"{s['idle_fraction']:.4f}", f"{s['formula_idle_fraction']:.4f}",
                 f"{s['paper_formula']:.4f}"])
  return (["run", "ℓ", "L", "samples (batch 1)", "steps per sample (T+1)", "network calls",
           "idle steps", "measured idle fraction", "formula Σ(1-(α_s-α_t))^{ℓL}/(T+1)",
           "(1-1/L)^{ℓL}"], rows)


def _budget_table(runs: list[dict[str, Any]]) -> Table:
  rows = []
  for r in runs:
    sample_s = sum(v for k, v in r["seconds"].items() if k.startswith("sample"))
    rows.append([r["name"], str(r["steps"]), str(r["batch_size"]), _params(r),
                 _num(r["seconds"].get("train"), 0), _num(r["seconds"].get("eval"), 0),
                 _num(sample_s, 0)])
  return ["run", "training steps", "batch", "params", "train s", "eval s", "sample s"], rows


def tables(results: dict[str, Any]) -> dict[str, Table]:
  """Every table of the report as {id: (header, rows)} of strings: the document is rendered from
  these, and the test compares the document against them and against the JSON."""
  runs = list(results["runs"].values())
  return {"text": _text_table([r for r in runs if r["kind"] == "text"]),
          "image": _image_table([r for r in runs if r["kind"] == "image"]),
          "quality": _quality_table(runs), "idle": _idle_table(runs),
          "budget": _budget_table(runs)}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  """A GitHub markdown table; '|' inside a cell (header or body) is escaped."""
  line = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
  return "\n".join([line(header), "|" + "---|" * len(header)] + [line(row) for row in rows])


def _cells(row: str) -> list[str]:
  return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def parse_markdown_tables(text: str) -> dict[str, Table]:
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
    out[m.group(1)] = (_cells(block[0]), [_cells(b) for b in block[2:]])
  return out
