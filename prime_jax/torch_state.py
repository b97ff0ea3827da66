"""Reads PyTorch checkpoints (`torch.save` files) into numpy arrays, without importing torch.

Both of torch.save's formats are read: the zip archive (torch >= 1.6: `<dir>/data.pkl` plus one
record per storage under `<dir>/data/`) and the older sequential format (a magic number, the
pickled object, then the raw storages). Unpickling never imports or runs anything the file
names (the policy is `prime_jax.unpickling`): torch's tensor rebuild functions, its storage types
and plain containers are rebuilt; an object of any other class (an omegaconf DictConfig, a
tokenizer, an argparse.Namespace, ...) becomes an inert `Opaque` placeholder that records the
arguments and state it was pickled with. A global that could run code (os.system, builtins.eval,
subprocess.*, ...) and a call of any function the reader does not know are refused, naming the
global. Tensors come back as numpy arrays, or with `lazy=True` as `Tensor`s whose data is read
from the archive when asked for.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, BinaryIO, Callable, Mapping, Optional

import ml_dtypes
import numpy as np

from prime_jax import unpickling
from prime_jax.unpickling import Opaque  # Also re-exported: the placeholders it returns.

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
ZIP_MAGIC = b"PK\x03\x04"
# What the readers raise on a malformed file; load() turns each into a TorchFileError.
_READ_ERRORS = (pickle.UnpicklingError, EOFError, struct.error, TypeError, AttributeError,
                IndexError, KeyError, ValueError, zipfile.BadZipFile, OSError, RecursionError)


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
}


class _Unpickler(pickle.Unpickler):
  """Resolves globals to torch's rebuilders and storage types, and otherwise as `unpickling`
  allows; storages come from `persistent_load`."""

  def __init__(self, file: BinaryIO, path: str, load_storage: Callable[[tuple], Any]):
    super().__init__(file)
    self._path, self._load_storage = path, load_storage

  def find_class(self, module: str, name: str):
    if (module, name) in _REBUILDERS:
      return _REBUILDERS[(module, name)]
    if module in ("torch", "torch.storage", "torch.cuda") and name in STORAGE_DTYPES:
      return _StorageType(name)
    try:
      return unpickling.resolve_global(module, name)
    except unpickling.RefusedPickle as e:
      raise TorchFileError(f"{self._path}: {e} (expected {ACCEPTED})") from None

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise TorchFileError(f"{self._path}: unknown persistent id {pid!r}; expected {ACCEPTED}")
    return self._load_storage(pid)


class Tensor:
  """A tensor of a checkpoint opened with `lazy=True`; `numpy()` reads its data."""

  def __init__(self, read: Callable[[], np.ndarray], shape: tuple, dtype: np.dtype):
    self._read, self.shape, self.dtype = read, tuple(shape), dtype

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  def numpy(self) -> np.ndarray:
    return self._read()

  def __repr__(self) -> str:
    return f"Tensor({self.dtype}, {self.shape})"


def to_numpy(x: Any) -> np.ndarray:
  """A lazy `Tensor`'s data, or an array as it is."""
  return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


def _from_bytes(raw: bytes, dtype: np.dtype, byteorder: str) -> np.ndarray:
  array = np.frombuffer(raw, dtype)
  return array.byteswap() if byteorder != sys.byteorder and dtype.itemsize > 1 else array


def _view(t: _Tensor, flat: np.ndarray, path: str) -> np.ndarray:
  """A numpy copy of a tensor's strided view into its storage (the storage itself if whole)."""
  if t.size and min(t.size) == 0:
    return np.zeros(t.size, flat.dtype)
  last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
  if t.offset < 0 or min(t.stride, default=0) < 0 or last >= len(flat):
    raise TorchFileError(f"{path}: a tensor of size {t.size}, stride {t.stride} at offset "
                         f"{t.offset} reaches past its storage of {len(flat)} elements")
  if not t.size:
    return np.array(flat[t.offset:t.offset + 1].reshape(()))
  contiguous = tuple(int(np.prod(t.size[i + 1:], dtype=np.int64)) for i in range(len(t.size)))
  if t.offset == 0 and last + 1 == len(flat) and t.stride == contiguous:
    return flat.reshape(t.size)
  view = np.lib.stride_tricks.as_strided(
      flat[t.offset:], shape=t.size, strides=[s * flat.itemsize for s in t.stride])
  return np.array(view)


def _resolve(obj: Any, resolve_tensor: Callable[[_Tensor], Any],
             memo: Optional[dict] = None) -> Any:
  """Replaces every `_Tensor` in a structure by its value: dicts, lists and placeholders in
  place (pickles may hold cycles, e.g. omegaconf's parent links), tuples rebuilt."""
  memo = {} if memo is None else memo
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _Tensor):
    memo[id(obj)] = resolve_tensor(obj)
    return memo[id(obj)]
  memo[id(obj)] = obj
  if isinstance(obj, dict):
    for k, v in obj.items():
      obj[k] = _resolve(v, resolve_tensor, memo)
  elif isinstance(obj, list):
    obj[:] = [_resolve(v, resolve_tensor, memo) for v in obj]
  elif isinstance(obj, tuple):
    memo[id(obj)] = type(obj)(_resolve(v, resolve_tensor, memo) for v in obj)
  elif isinstance(obj, Opaque):
    for field in ("args", "state", "items", "elements"):
      setattr(obj, field, _resolve(getattr(obj, field), resolve_tensor, memo))
  return memo[id(obj)]


class _ZipStorages:
  """The storage records of a torch.save zip archive: sizes up front, data when read."""

  def __init__(self, path: str, archive: zipfile.ZipFile, root: str, lazy: bool):
    self.path, self.archive, self.root, self.lazy = path, archive, root, lazy
    names = archive.namelist()
    self.byteorder = "little"
    if root + "byteorder" in names:
      self.byteorder = archive.read(root + "byteorder").decode().strip()
    self.types: dict[str, _StorageType] = {}
    self.numel: dict[str, int] = {}
    self.loaded: dict[str, np.ndarray] = {}

  def register(self, pid: tuple) -> str:
    _, storage_type, key = pid[:3]
    if not isinstance(storage_type, _StorageType):
      raise TorchFileError(f"{self.path}: storage of unknown type {storage_type!r}")
    key, record = str(key), f"{self.root}data/{key}"
    if key not in self.types:
      try:
        size = self.archive.getinfo(record).file_size
      except KeyError:
        raise TorchFileError(f"{self.path}: storage record {record} is missing") from None
      if size % storage_type.dtype.itemsize:
        raise TorchFileError(f"{self.path}: storage record {record} holds {size} bytes, not a "
                             f"whole number of {storage_type.name} elements")
      self.types[key], self.numel[key] = storage_type, size // storage_type.dtype.itemsize
      if not self.lazy:
        self.loaded[key] = self.read(key)
    return key

  def read(self, key: str) -> np.ndarray:
    if key in self.loaded:
      return self.loaded[key]
    record = f"{self.root}data/{key}"
    try:
      raw = self.archive.read(record)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
      raise TorchFileError(f"{self.path}: storage record {record} is truncated or corrupted "
                           f"({e})") from e
    return _from_bytes(raw, self.types[key].dtype, self.byteorder)

  def tensor(self, t: _Tensor) -> Any:
    numel = self.numel[t.storage]
    if t.size and min(t.size) > 0:
      last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
      if t.offset < 0 or min(t.stride, default=0) < 0 or last >= numel:
        raise TorchFileError(f"{self.path}: a tensor of size {t.size}, stride {t.stride} at "
                             f"offset {t.offset} reaches past its storage of {numel} elements")
    if not self.lazy:
      return _view(t, self.loaded[t.storage], self.path)
    return Tensor(lambda: _view(t, self.read(t.storage), self.path), t.size,
                  self.types[t.storage].dtype)


def _load_zip(path: str, lazy: bool) -> Any:
  archive = zipfile.ZipFile(path)
  names = archive.namelist()
  pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pickles) != 1:
    archive.close()
    raise TorchFileError(f"{path} is a zip archive without a single <dir>/data.pkl record, so "
                         f"not a torch.save file; expected {ACCEPTED}")
  storages = _ZipStorages(path, archive, pickles[0][:-len("data.pkl")], lazy)
  with archive.open(pickles[0]) as f:
    obj = _Unpickler(io.BytesIO(f.read()), path, storages.register).load()
  obj = _resolve(obj, storages.tensor)
  if not lazy:
    archive.close()
  return obj


def _legacy_header(path: str, f: BinaryIO) -> None:
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


def _load_legacy(path: str, f: BinaryIO, lazy: bool) -> Any:
  """torch < 1.6: pickles of magic, protocol and sys info, the object, storage keys, raw data."""
  _legacy_header(path, f)
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
  storages = {}
  for key in pickle.load(f):
    storage_type = types.get(str(key))
    if storage_type is None:
      raise TorchFileError(f"{path}: storage {key!r} is listed but not used by any tensor")
    head = f.read(8)
    if len(head) != 8:
      raise TorchFileError(f"{path} ends before storage {key!r} (truncated)")
    numel = struct.unpack("<q", head)[0]
    raw = f.read(numel * storage_type.dtype.itemsize)
    if len(raw) != numel * storage_type.dtype.itemsize:
      raise TorchFileError(f"{path} ends inside storage {key!r} (truncated)")
    storages[str(key)] = _from_bytes(raw, storage_type.dtype, "little")

  def tensor(t: _Tensor):
    root, offset, size = views.get(t.storage, (t.storage, 0, None))
    flat = storages[root][offset:None if size is None else offset + size]
    array = _view(t, flat, path)
    return Tensor(lambda: array, array.shape, array.dtype) if lazy else array
  return _resolve(obj, tensor)


def load(path: str, lazy: bool = False) -> Any:
  """The object saved with torch.save at `path`, tensors as numpy arrays (or lazy `Tensor`s).

  Dicts, lists and tuples come back as they were; objects of other classes as `Opaque`
  placeholders.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist (expected {ACCEPTED})")
  with open(path, "rb") as f:
    starts_as_zip = f.read(4) == ZIP_MAGIC
  if zipfile.is_zipfile(path):
    return _translated(path, lambda: _load_zip(path, lazy), "a torch.save zip archive",
                       "it may be truncated or corrupted")
  if starts_as_zip:
    raise TorchFileError(f"{path} starts as a zip archive but has no readable central "
                         "directory: the file is truncated or corrupted (an interrupted "
                         "download or copy?)")
  with open(path, "rb") as f:
    return _translated(path, lambda: _load_legacy(path, f, lazy), "a torch.save file",
                       f"expected {ACCEPTED}")


def _translated(path: str, read: Callable[[], Any], what: str, hint: str) -> Any:
  """`read()`, whatever a malformed file makes it raise turned into a TorchFileError."""
  try:
    return read()
  except TorchFileError:
    raise
  except unpickling.RefusedPickle as e:
    raise TorchFileError(f"{path}: {e} (expected {ACCEPTED})") from None
  except _READ_ERRORS as e:
    raise TorchFileError(f"{path} could not be read as {what} ({type(e).__name__}: {e}); "
                         f"{hint}") from e


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dicts of arrays -> {'a.b.c': array}, as nested module state dicts name them."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    elif isinstance(value, (np.ndarray, Tensor)):
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
