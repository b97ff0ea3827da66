"""docs/results.md's text: the study's tables with the prose around them, its plots and findings.

Every number in the document comes from results.json's content; the findings are statements
computed from those numbers, then the limits of the study.
"""

from __future__ import annotations

import math
import os
from typing import Any

from tools.study_tables import IMAGE_UNIT, TEXT_UNIT, idle_sample, label, markdown_table, tables

CAPTIONS = {"curves_text": "Held-out valid bound during training, text",
            "curves_image": "Held-out valid bound during training, images",
            "bound_vs_ell_text": "Valid bound and joint objective vs ℓ, text",
            "bound_vs_ell_image": "Valid bound and joint objective vs ℓ, images",
            "quality_text": "Generative perplexity vs sampling steps",
            "quality_image": "Fréchet distance vs sampling steps",
            "idle": "Idle-step fraction vs ℓ, measured and formula"}


def render(results: dict[str, Any], results_path: str, plot_files: dict[str, str],
           doc_dir: str) -> str:
  """docs/results.md's text; plots are linked relative to `doc_dir`."""
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
      *_table_sections(results),
      "## Plots",
      "",
  ]
  for key, caption in CAPTIONS.items():
    if key in plot_files:
      parts += [f"![{caption}]({os.path.relpath(plot_files[key], doc_dir)})", ""]
  hw = results["hardware"]
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
  return "\n".join(parts) + "\n"


def _table_sections(results: dict[str, Any]) -> list[str]:
  """The five tables, each with its heading and the prose that says how to read it."""
  tables_by_id = tables(results)
  return [
      "## Text: Shakespeare bytes (held-out plays)",
      "",
      "<!-- table: text -->",
      markdown_table(*tables_by_id["text"]),
      "",
      "gen-ppl: perplexity of the samples (T = L, one sample per batch) under the study's own "
      "AR run (`text_ar`), first byte left out; unigram entropy: mean entropy of each sample's "
      "byte histogram.",
      "",
      "## Images: Fashion-MNIST (test images)",
      "",
      "<!-- table: image -->",
      markdown_table(*tables_by_id["image"]),
      "",
      "FD: Fréchet distance on the features of the project's Fashion-MNIST classifier "
      f"(`prime_jax/quality/fashion_mnist.py`{_classifier_note(results)}), samples against the "
      "10,000 test images; few samples bias it upwards, so compare rows only at equal sample "
      "counts. No real-image FD at the same sample count is measured here.",
      "",
      "## Sample quality vs sampling steps",
      "",
      f"Sampler: {_sampler_line(results)}. The held-out columns score as many real held-out "
      "sequences as there are samples with the same AR model.",
      "",
      "<!-- table: quality -->",
      markdown_table(*tables_by_id["quality"]),
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
      markdown_table(*tables_by_id["idle"]),
      "",
      "## Budget and wall time",
      "",
      "<!-- table: budget -->",
      markdown_table(*tables_by_id["budget"]),
      "",
      _budget_line(results),
      "",
  ]


def _budget_line(results: dict[str, Any]) -> str:
  """Total wall time, classifier training time and the text runs' parameter counts."""
  wall = results["wall_seconds"]
  text_params = sorted({r["params"] for r in results["runs"].values()
                        if r["kind"] == "text" and r["params"]})
  return " ".join(x for x in (
      f"Total wall time of the study: {wall:.0f} s ({wall / 60:.1f} min)." if wall else
      "Total wall time: not recorded.",
      f"The FD classifier was trained in {results['classifier_seconds']:.0f} s." if
      results.get("classifier_seconds") else "",
      f"Text parameter counts: {', '.join(f'{p:,}' for p in text_params)} (the digit "
      "embedding table is (b+1)·D/ℓ, so ℓ = 1 carries the largest one)." if text_params
      else "") if x)


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


def _bound_findings(runs: dict[str, Any]) -> list[str]:
  """Each Prime run's valid bound against MDM's of the same kind, within 2 s.e. or not."""
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
      out.append(f"* {kind}, {label(r)}: valid bound {e['valid_bits']:.3f} {unit}, "
                 f"{verdict} MDM ({base['valid_bits']:.3f}; difference {diff:+.3f} ± "
                 f"{se:.3f}, s.e. combined as if independent); "
                 f"joint objective minus its valid bound: {-gap:+.3f} {unit}.")
  return out


def _findings(results: dict[str, Any]) -> list[str]:
  """Plain statements computed from the numbers, then the limits of the study."""
  runs = results["runs"]
  out = _bound_findings(runs)
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
               f"{best['eval']['valid_bits']:.3f} ({label(best)}).")
  for r in runs.values():
    s = idle_sample(r)
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
