"""The study: launch/study.sh end to end at the tiny size, and docs/results.md against its JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

import pytest

from tools import study_plots, study_tables

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def check_doc_matches(doc_path: str, results: dict) -> None:
  """The doc's tables equal the tables rendered from `results`, and key cells equal its numbers."""
  with open(doc_path, encoding="utf-8") as f:
    parsed = study_tables.parse_markdown_tables(f.read())
  expected = study_tables.tables(results)
  assert set(parsed) == set(expected)
  for key, (header, rows) in expected.items():
    assert parsed[key] == (header, rows), key
  # Independently of the renderer: the bound columns are the eval files' numbers.
  for kind in ("text", "image"):
    header, rows = parsed[kind]
    col = next(i for i, h in enumerate(header) if h.startswith("valid bound"))
    for row in rows:
      e = results["runs"][row[0]]["eval"]
      mean, se = (float(x) for x in row[col].split("±"))
      prefix = "nll" if "nll_bits" in e else "valid"
      assert mean == pytest.approx(e[f"{prefix}_bits"], abs=6e-4)
      assert se == pytest.approx(e[f"{prefix}_bits_se"], abs=6e-4)
  header, rows = parsed["idle"]
  for row in rows:
    s = study_tables.idle_sample(results["runs"][row[0]])
    assert int(row[header.index("idle steps")]) == s["num_idle"]
    assert int(row[header.index("network calls")]) == s["num_calls"]


def test_markdown_tables_read_back_with_escaped_bars():
  header, rows = ["run", "a|b"], [["x", "1 | 2"], ["y", "—"]]
  doc = "intro\n<!-- table: t -->\n\n" + study_tables.markdown_table(header, rows) + "\n\nafter"
  assert study_tables.parse_markdown_tables(doc) == {"t": (header, rows)}


def test_line_plot_writes_a_png_with_gaps_and_log_axis(tmp_path):
  """Missing points (None) and missing error bars are left out rather than failing."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  series = [{"label": "measured", "x": [1, 2, 4, 8], "y": [0.5, None, 0.2, 0.1],
             "yerr": [0.05, None, None, 0.01]},
            {"label": "formula ℓ", "x": [1, 2, 4, 8], "y": [0.4, 0.3, 0.2, 0.1], "dashed": True,
             "yerr": [None] * 4, "color": 10}]
  path = study_plots.line_plot(str(tmp_path / "sub" / "p.png"), series, "title α", "ℓ", "y",
                               logx=True)
  with Image.open(path) as img:
    assert img.size == (900, 560)
    colours = {c for _, c in img.convert("RGB").getcolors(1 << 20)}
  assert (0, 0, 0) in colours and (31, 119, 180) in colours  # The black series, C0 (tab10).


def test_study_script_tiny(tmp_path):
  """SIZE=tiny on a subset of runs: AR scorer, one Prime text run, one image run with FD."""
  out, report = tmp_path / "study", tmp_path / "report"
  env = dict(os.environ, SIZE="tiny", OUT=str(out), REPORT_DIR=str(report), JAX_PLATFORMS="cpu",
             RUNS="text_ar text_l2_joint image_l2", XLA_FLAGS="",
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "prime_jax_study_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "study.sh")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  assert set(results["runs"]) == {"text_ar", "text_l2_joint", "image_l2"}
  text = results["runs"]["text_l2_joint"]
  assert text["ell"] == 2 and text["objective"] == "joint" and text["steps"] == 3
  assert text["eval"]["valid_bits"] > 0 and "joint_bits" in text["eval"]
  assert text["curve"] and text["params"] > 0
  idle = study_tables.idle_sample(text)
  assert idle["num_calls"] + idle["num_idle"] >= idle["num_steps_per_batch"]
  assert 0 <= idle["formula_idle_fraction"] <= 1
  assert any("gen_ppl" in s for s in text["samples"])
  assert any("fd_fashion_mnist" in s for s in results["runs"]["image_l2"]["samples"])
  assert "nll_bits" in results["runs"]["text_ar"]["eval"]
  doc = report / "results.md"
  named = re.search(r"Results file: `([^`]+)`", doc.read_text(encoding="utf-8")).group(1)
  assert json.loads(open(named).read()) == results
  check_doc_matches(str(doc), results)
  assert (report / "study" / "idle_vs_ell.png").is_file()


def test_docs_results_match_the_results_file():
  """docs/results.md's tables match the results file the document names."""
  doc = os.path.join(ROOT, "docs", "results.md")
  if not os.path.isfile(doc):
    pytest.skip("docs/results.md has not been generated")
  with open(doc, encoding="utf-8") as f:
    named = re.search(r"Results file: `([^`]+)`", f.read()).group(1)
  with open(os.path.join(ROOT, named)) as f:
    results = json.load(f)
  check_doc_matches(doc, results)
