"""Reads PyTorch checkpoints (`torch.save` files) into numpy arrays, without importing torch.

Both of torch.save's formats are read: the zip archive (torch >= 1.6: `<dir>/data.pkl` plus one
record per storage under `<dir>/data/`) and the older sequential format (a magic number, the
pickled object, then the raw storages). Unpickling allows only OrderedDict, torch's tensor
rebuild functions and its storage types, so a checkpoint cannot run code; tensors come back as
numpy arrays (copies that honour the storage offset, size and stride).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, BinaryIO, Callable, Mapping

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001

# torch storage type -> numpy dtype name ('bfloat16' comes from ml_dtypes).
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
ACCEPTED = ("a torch.save file (zip archive, or the sequential format of torch < 1.6) holding "
            "tensors in (nested) dicts, lists or tuples")


class TorchFileError(ValueError):
  """A file that is not a torch.save checkpoint this reader accepts."""


def _numpy_dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


class _StorageType:
  """Stands in for torch.<X>Storage while unpickling: only its dtype matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _numpy_dtype(STORAGE_DTYPES[name])


class _Tensor:
  """A tensor's storage key, offset, size and stride, resolved to numpy once storages are read."""

  def __init__(self, storage, offset: int, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args) -> _Tensor:
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, unused_requires_grad, unused_hooks, *unused_state):
  return data


_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals a state dict needs; storages come from `persistent_load`."""

  def __init__(self, file: BinaryIO, path: str, load_storage: Callable[[tuple], Any]):
    super().__init__(file)
    self._path, self._load_storage = path, load_storage

  def find_class(self, module: str, name: str):
    if (module, name) in _REBUILDERS:
      return _REBUILDERS[(module, name)]
    if module in ("torch", "torch.storage", "torch.cuda") and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise TorchFileError(
        f"{self._path}: refusing to unpickle {module}.{name}; only tensors, storages and "
        f"OrderedDict are read (expected {ACCEPTED})")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise TorchFileError(f"{self._path}: unknown persistent id {pid!r}; expected {ACCEPTED}")
    return self._load_storage(pid)


def _from_bytes(raw: bytes, dtype: np.dtype, byteorder: str) -> np.ndarray:
  array = np.frombuffer(raw, dtype)
  return array.byteswap() if byteorder != sys.byteorder and dtype.itemsize > 1 else array


def _resolve(obj: Any, storage_array: Callable[[Any], np.ndarray], path: str) -> Any:
  """Replaces every `_Tensor` in a nested structure by a numpy copy of its view."""
  if isinstance(obj, _Tensor):
    flat = storage_array(obj.storage)
    if not obj.size or min(obj.size) > 0:
      last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
      if obj.offset < 0 or min(obj.stride, default=0) < 0 or last >= len(flat):
        raise TorchFileError(f"{path}: a tensor of size {obj.size}, stride {obj.stride} at offset "
                             f"{obj.offset} reaches past its storage of {len(flat)} elements")
    else:
      return np.zeros(obj.size, flat.dtype)
    if not obj.size:
      return flat[obj.offset:obj.offset + 1].reshape(())
    view = np.lib.stride_tricks.as_strided(
        flat[obj.offset:], shape=obj.size, strides=[s * flat.itemsize for s in obj.stride])
    return np.array(view)
  if isinstance(obj, dict):
    return {k: _resolve(v, storage_array, path) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, storage_array, path) for v in obj)
  return obj


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise TorchFileError(f"{path} is a zip archive without a single <dir>/data.pkl record, so "
                           f"not a torch.save file; expected {ACCEPTED}")
    root = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if root + "byteorder" in names:
      byteorder = archive.read(root + "byteorder").decode().strip()
    storages = {}

    def load_storage(pid):
      _, storage_type, key, _, numel = pid[:5]
      if not isinstance(storage_type, _StorageType):
        raise TorchFileError(f"{path}: storage of unknown type {storage_type!r}")
      key = str(key)
      if key not in storages:
        record = f"{root}data/{key}"
        if record not in names:
          raise TorchFileError(f"{path}: storage record {record} is missing")
        raw = archive.read(record)
        if len(raw) % storage_type.dtype.itemsize:
          raise TorchFileError(f"{path}: storage record {record} holds {len(raw)} bytes, not a "
                               f"whole number of {storage_type.name} elements")
        storages[key] = _from_bytes(raw, storage_type.dtype, byteorder)
      return key

    with archive.open(pickles[0]) as f:
      obj = _Unpickler(io.BytesIO(f.read()), path, load_storage).load()
  return _resolve(obj, storages.__getitem__, path)


def _load_legacy(path: str, f: BinaryIO) -> Any:
  """torch < 1.6: pickles of magic, protocol and sys info, the object, storage keys, raw data."""
  try:
    magic = pickle.load(f)
  except Exception:  # pylint: disable=broad-except
    magic = None
  if magic != LEGACY_MAGIC:
    raise TorchFileError(f"{path} is neither a zip archive nor torch's sequential format (no "
                         f"magic number); expected {ACCEPTED}")
  protocol = pickle.load(f)
  if protocol != LEGACY_PROTOCOL:
    raise TorchFileError(f"{path}: unsupported torch.save protocol {protocol!r}")
  sys_info = pickle.load(f)
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise TorchFileError(f"{path} was written on a big-endian machine; expected {ACCEPTED}")
  types, views = {}, {}

  def load_storage(pid):
    _, storage_type, key, _, _, view = (tuple(pid) + (None,))[:6]
    if not isinstance(storage_type, _StorageType):
      raise TorchFileError(f"{path}: storage of unknown type {storage_type!r}")
    types[str(key)] = storage_type
    if view is not None:  # An old storage view: (view key, offset, size) into the root storage.
      views[str(view[0])] = (str(key), int(view[1]), int(view[2]))
      return str(view[0])
    return str(key)

  obj = _Unpickler(f, path, load_storage).load()
  keys = pickle.load(f)
  storages = {}
  for key in keys:
    storage_type = types.get(str(key))
    if storage_type is None:
      raise TorchFileError(f"{path}: storage {key!r} is listed but not used by any tensor")
    head = f.read(8)
    if len(head) != 8:
      raise TorchFileError(f"{path} ends before storage {key!r}")
    numel = struct.unpack("<q", head)[0]
    raw = f.read(numel * storage_type.dtype.itemsize)
    if len(raw) != numel * storage_type.dtype.itemsize:
      raise TorchFileError(f"{path} ends inside storage {key!r}")
    storages[str(key)] = _from_bytes(raw, storage_type.dtype, "little")

  def storage_array(key):
    if key in views:
      root, offset, size = views[key]
      return storages[root][offset:offset + size]
    return storages[key]
  return _resolve(obj, storage_array, path)


def load(path: str) -> Any:
  """The object saved with torch.save at `path`, tensors as numpy arrays, OrderedDicts as dicts."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist (expected {ACCEPTED})")
  if zipfile.is_zipfile(path):
    try:
      return _load_zip(path)
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as e:
      raise TorchFileError(f"{path} could not be read as a torch.save zip archive ({e})") from e
  with open(path, "rb") as f:
    try:
      return _load_legacy(path, f)
    except (pickle.UnpicklingError, EOFError, struct.error) as e:
      raise TorchFileError(f"{path} could not be read as a torch.save file ({e}); "
                           f"expected {ACCEPTED}") from e


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dicts of arrays -> {'a.b.c': array}, as nested module state dicts name them."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    elif isinstance(value, np.ndarray):
      out[name] = value
  return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state dict saved with torch.save, flattened to {'layer.weight': array}.

  Non-tensor entries (epoch counters, ...) are left out; a file without tensors is an error.
  """
  obj = load(path)
  if not isinstance(obj, Mapping):
    raise TorchFileError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of "
                         "tensors)")
  state = flatten(obj)
  if not state:
    raise TorchFileError(f"{path} holds no tensors")
  return state


if __name__ == "__main__":
  for name, array in load_state_dict(sys.argv[1]).items():
    print(f"{name}: {array.dtype} {array.shape}")
