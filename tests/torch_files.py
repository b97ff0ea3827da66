"""Test helpers shared with tests/data/make_inception_fixtures.py: torch.save-format files written
without torch, the reader fixture's values and seeded random FID-Inception weights."""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np

from prime_jax import torch_state

ROOT = "archive"


class _Global:
  """A module attribute of torch, pickled by name (GLOBAL) without importing torch."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # Never called: pickle only checks that a reduce target is callable.
    raise NotImplementedError


class _Storage:
  def __init__(self, key: str, storage_type: str, numel: int):
    self.key, self.storage_type, self.numel = key, storage_type, numel


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pickles numpy arrays as torch tensors: a rebuild call on a persistent storage id."""

  def __init__(self, file, storage_types: dict):
    super().__init__(file, protocol=2)
    self.storage_types, self.storages = storage_types, []

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", obj.storage_type), obj.key, "cpu", obj.numel)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, _Global):
      return obj.name  # A name: saved through save_global.
    if isinstance(obj, np.ndarray):
      array = np.array(obj, order="C")  # Keeps 0-d arrays 0-d.
      storage = _Storage(str(len(self.storages)), self.storage_types[array.dtype.name],
                         array.size)
      self.storages.append(array.tobytes())
      stride = tuple(s // max(array.itemsize, 1) for s in array.strides)
      return (_Global("torch._utils", "_rebuild_tensor_v2"),
              (storage, 0, array.shape, stride, False, collections.OrderedDict()))
    return NotImplemented

  def save_global(self, obj, name=None):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
      self.memoize(obj)
      return
    super().save_global(obj, name)


def write_pth(path: str, state) -> None:
  """Writes (nested dicts of) numpy arrays as torch.save's zip format would, without torch."""
  types = {torch_state._numpy_dtype(d).name: n  # pylint: disable=protected-access
           for n, d in torch_state.STORAGE_DTYPES.items() if n != "UntypedStorage"}
  buffer = io.BytesIO()
  pickler = _TorchPickler(buffer, types)

  def ordered(tree):
    if isinstance(tree, dict):
      return collections.OrderedDict((k, ordered(v)) for k, v in tree.items())
    return tree
  pickler.dump(ordered(state))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{ROOT}/data.pkl", buffer.getvalue())
    z.writestr(f"{ROOT}/byteorder", "little")
    for key, raw in enumerate(pickler.storages):
      z.writestr(f"{ROOT}/data/{key}", raw)
    z.writestr(f"{ROOT}/version", "3\n")


def reader_values() -> dict:
  """What tests/data/torch_state_{zip,legacy}.pth hold; 'transposed' and 'window' are saved as
  views (strided, offset) of the storage of 'matrix', 'param' as an nn.Parameter."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  matrix = np.arange(24, dtype=np.float32).reshape(4, 6) / 4 - 2
  return {
      "matrix": matrix, "transposed": matrix.T, "window": matrix[1:, 2:5],
      "float64": np.array([np.pi, -1e300, 5e-324]),
      "float16": np.array([0.5, -2.0, 65504.0], np.float16),
      "bfloat16": np.array([1.0, -0.5, 3.0e38], ml_dtypes.bfloat16),
      "int64": np.array([-(2 ** 40), 0, 2 ** 62], np.int64),
      "int32": np.array([[-7, 2 ** 31 - 1]], np.int32),
      "int16": np.array([-300, 300], np.int16), "int8": np.array([-128, 127], np.int8),
      "uint8": np.array([0, 17, 255], np.uint8), "bool": np.array([True, False, True]),
      "complex64": np.array([1 + 2j, -3j], np.complex64),
      "scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 3), np.float32),
      "nested": {"layer": {"weight": np.eye(3, dtype=np.float32), "bias": np.ones(3, np.int64)},
                 "step": np.array(12, np.int64)},
      "param": np.linspace(-1, 1, 5, dtype=np.float32),
  }


def random_inception_state(shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """A full state dict of random FID-Inception weights for `shapes` {torch name: shape}.

  Drawn in sorted-name order from one seed, so numpy reproduces exactly the weights that the
  fixture script loaded into pytorch-fid. Conv weights ~ N(0, 2/fan_in) keep activations of
  order 1; BatchNorm scales and running variances lie in [0.5, 1.5].
  """
  rng = np.random.default_rng(seed)
  out = {}
  for name in sorted(shapes):
    shape = tuple(shapes[name])
    if name.endswith("num_batches_tracked"):
      out[name] = np.zeros(shape, np.int64)
    elif name.endswith("conv.weight"):
      fan_in = int(np.prod(shape[1:]))
      out[name] = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    elif name.endswith(("bn.weight", "bn.running_var")):
      out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif name.endswith(("bn.bias", "bn.running_mean")):
      out[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    else:  # The classifier (fc), unused by the features.
      out[name] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
  return out
