"""Images as token grids: uint8 (H, W, channels) quantised to a number of grey levels.

A pixel value x in [0, base) becomes the token x * levels // base, so levels = base is the
identity; decoding maps token q back to round(q * 255 / (levels - 1)) as uint8.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from prime_jax import errors


def quantise(pixels: np.ndarray, base_levels: int, levels: int) -> np.ndarray:
  """Pixel values in [0, base_levels) to tokens in [0, levels), as int32."""
  x = np.asarray(pixels).astype(np.int32)
  if levels == base_levels:
    return x
  return (x * levels) // base_levels


def to_uint8(tokens: np.ndarray, levels: int) -> np.ndarray:
  """Tokens in [0, levels) back to a viewable uint8 image."""
  q = np.clip(np.asarray(tokens).astype(np.int64), 0, levels - 1)
  return np.rint(q * 255.0 / (levels - 1)).astype(np.uint8)


class Dequantiser:
  """Picklable decode function for `DatasetInfo.decode`."""

  def __init__(self, levels: int):
    self.levels = levels

  def __call__(self, tokens: np.ndarray) -> np.ndarray:
    return to_uint8(tokens, self.levels)


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (as MNIST ships them, optionally gzipped) into a uint8 array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise errors.UserError(f"{path} is not an unsigned-byte IDX file")
  ndim = data[3]
  dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise errors.UserError(f"{path}: header says {dims} but holds {body.size} bytes")
  return body.reshape(dims)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as a gzipped IDX file (used to build test fixtures)."""
  array = np.asarray(array, dtype=np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())
