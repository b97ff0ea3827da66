"""Metric writers: TensorBoard event files, JSON lines and a readable console line.

With TensorFlow installed (the `tensorboard` extra) TensorBoard files come from
`clu.metric_writers`; otherwise from tensorboardX, which needs no TensorFlow. Either way every
scalar also goes to `metrics.jsonl` in the workdir, which tests and scripts read back.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from typing import Any, Mapping

import numpy as np


def _tensorboard_writer(logdir: str):
  if importlib.util.find_spec("tensorflow") is not None:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    return metric_writers.SummaryWriter(logdir)
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("neither tensorflow nor tensorboardX is installed: no TensorBoard files")
    return None
  return _TensorboardX(tensorboardX.SummaryWriter(logdir))


class _TensorboardX:
  """The subset of clu's MetricWriter interface this project uses, over tensorboardX."""

  def __init__(self, writer):
    self._w = writer

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for k, v in scalars.items():
      self._w.add_scalar(k, float(v), step)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for k, v in texts.items():
      self._w.add_text(k, v, step)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    for k, v in images.items():
      self._w.add_images(k, np.asarray(v), step, dataformats="NHWC")

  def flush(self) -> None:
    self._w.flush()

  def close(self) -> None:
    self._w.close()


class MetricWriter:
  """Writes scalars to TensorBoard (when available) and to `metrics.jsonl`; only on process 0."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard")) if enabled else None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time(),
           **{k: float(v) for k, v in scalars.items()}}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      self._tb.write_scalars(step, scalars)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    if self.enabled and self._tb is not None:
      self._tb.write_texts(step, texts)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    if self.enabled and self._tb is not None:
      self._tb.write_images(step, images)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """Steps/s, tokens/s and ETA between reports, for the console line."""

  def __init__(self, total_steps: int, tokens_per_step: int, start_step: int):
    self.total, self.tokens = total_steps, tokens_per_step
    self._t, self._step = time.perf_counter(), start_step

  def update(self, step: int) -> dict:
    now = time.perf_counter()
    rate = (step - self._step) / max(now - self._t, 1e-9)
    self._t, self._step = now, step
    eta = (self.total - step) / max(rate, 1e-9)
    return {"steps_per_sec": rate, "tokens_per_sec": rate * self.tokens, "eta_sec": eta}


def console_line(step: int, total: int, scalars: Mapping[str, float]) -> str:
  eta = scalars.get("eta_sec", 0.0)
  parts = [f"step {step}/{total}"]
  for key in ("loss_bits", "valid_bits", "joint_bits", "nll_bits", "grad_norm"):
    if key in scalars:
      parts.append(f"{key} {scalars[key]:.4f}")
  if "steps_per_sec" in scalars:
    parts.append(f"{scalars['steps_per_sec']:.2f} steps/s "
                 f"{scalars['tokens_per_sec']:.0f} tok/s ETA {eta / 60:.1f} min")
  return " | ".join(parts)


def write_json(path: str, payload: Mapping[str, Any]) -> str:
  """Writes `payload` as indented JSON at `path` (creating its directory); returns the path."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=str)
  return path
