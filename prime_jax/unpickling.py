"""What a checkpoint's pickle may build: plain data and inert stand-ins, nothing that runs code.

`resolve_global(module, name)` is the policy of `torch_state`'s unpickler for every global that
is not one of torch's tensor rebuilders or storage types:
* plain data types (dict, list, int, str, OrderedDict, ...) are the real ones; a defaultdict
  comes back as a dict (its factory is never called), bytes only from (str, encoding);
* a global of a module that can run code, open files or reach the interpreter (os, subprocess,
  sys, builtins.eval/exec/getattr/open/__import__, ...) is refused, naming it;
* any other class (a capitalised name) becomes an `Opaque` subclass: constructing it (REDUCE,
  NEWOBJ) and BUILD only record what they were given;
* any other function becomes an `OpaqueFunction`, which may be referred to but refuses calls.
Nothing the file names is ever imported.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
from typing import Any

# Modules whose globals can run code, open files or processes, or reach the interpreter.
DENIED_MODULES = frozenset((
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "pickle", "_pickle",
    "marshal", "ctypes", "cffi", "socket", "runpy", "code", "codeop", "pty", "multiprocessing",
    "threading", "_thread", "signal", "webbrowser", "pydoc", "io", "_io", "codecs", "tempfile",
    "asyncio", "types", "inspect", "operator", "gc", "ast", "timeit", "pdb", "bdb", "trace",
    "site", "sysconfig", "platform", "urllib", "http", "ftplib", "smtplib", "xmlrpc", "dill",
    "cloudpickle", "joblib", "torch.hub", "torch.serialization", "torch._C", "torch.jit"))
# Builtins that are plain data types; every other builtin is refused.
SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bool",
    "slice", "range", "object")}
TEXT_ENCODINGS = ("latin1", "latin-1", "utf-8", "utf8", "ascii")


class RefusedPickle(ValueError):
  """A pickle asked for a global or a call this policy does not allow."""


class Opaque:
  """An object of a class that is not imported: what it was pickled with, inert.

  `args`/`kwargs` are the constructor arguments (REDUCE, NEWOBJ), `state` what BUILD gave,
  `items`/`elements` what SETITEMS/APPENDS added; the class attributes `module` and `name` name
  the class. Nothing here calls anything it was given.
  """

  module = ""
  name = ""

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.args, obj.kwargs, obj.state, obj.items, obj.elements = args, kwargs, None, {}, []
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs  # Recorded by __new__.

  def __setstate__(self, state: Any) -> None:
    self.state = state

  def __setitem__(self, key: Any, value: Any) -> None:
    self.items[key] = value

  def append(self, value: Any) -> None:
    self.elements.append(value)

  def extend(self, values: Any) -> None:
    self.elements.extend(list(values))

  def __repr__(self) -> str:
    return f"<{self.module}.{self.name} placeholder>"


_PLACEHOLDERS: dict[tuple[str, str], type] = {}


def placeholder_class(module: str, name: str) -> type:
  """The (cached) `Opaque` subclass standing in for class `module.name`."""
  key = (module, name)
  if key not in _PLACEHOLDERS:
    _PLACEHOLDERS[key] = type(str(name), (Opaque,), {"module": module, "name": name})
  return _PLACEHOLDERS[key]


class OpaqueFunction:
  """A function that is not imported: it may be referred to, never called."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    raise RefusedPickle(f"refusing to call {self.module}.{self.name} while unpickling; a "
                        "checkpoint that needs to run a function to be read is not accepted")

  def __repr__(self) -> str:
    return f"<{self.module}.{self.name}>"


def _plain_defaultdict(*unused_factory_and_items) -> dict:
  """A defaultdict comes back as a plain (empty) dict: its factory is never called."""
  return {}


def _text_bytes(text: str = "", encoding: str = "latin1", *unused) -> bytes:
  """bytes/bytearray as protocol 2 pickles them: (str, encoding) -> bytes; nothing else."""
  if not isinstance(text, str) or encoding not in TEXT_ENCODINGS:
    raise RefusedPickle(f"refusing to build bytes from a {type(text).__name__} with encoding "
                        f"{encoding!r}")
  return text.encode(encoding)


def _reconstructor(cls, base, state=None):
  """copyreg._reconstructor, for placeholder classes only."""
  if not (isinstance(cls, type) and issubclass(cls, Opaque)) or base is not object:
    raise RefusedPickle(f"refusing copyreg._reconstructor of {cls!r} on {base!r}")
  obj = cls.__new__(cls)
  obj.state = state
  return obj


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _plain_defaultdict,
    ("_codecs", "encode"): _text_bytes,
    ("copyreg", "_reconstructor"): _reconstructor,
}


def is_denied(module: str, name: str) -> bool:
  """Whether `module.name` could run code (so a pickle naming it is refused outright)."""
  if module == "builtins":
    return name not in SAFE_BUILTINS and name not in ("bytes", "bytearray")
  return any(module == m or module.startswith(m + ".") for m in DENIED_MODULES)


def python3_name(module: str, name: str) -> tuple[str, str]:
  """Protocol-2 pickles name globals as Python 2 did (__builtin__, commands, ...)."""
  if (module, name) in _compat_pickle.NAME_MAPPING:
    return _compat_pickle.NAME_MAPPING[(module, name)]
  return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def resolve_global(module: str, name: str) -> Any:
  """What GLOBAL/STACK_GLOBAL `module.name` becomes; raises RefusedPickle for denied ones."""
  module, name = python3_name(module, name)
  if (module, name) in _ALLOWED:
    return _ALLOWED[(module, name)]
  if is_denied(module, name):
    raise RefusedPickle(
        f"refusing to unpickle {module}.{name}; only tensors, storages, plain containers and "
        f"inert stand-ins of other classes are read, and {module}.{name} could run code")
  if module == "builtins":
    return _text_bytes if name in ("bytes", "bytearray") else SAFE_BUILTINS[name]
  if name.rpartition(".")[2][:1].isupper():
    return placeholder_class(module, name)
  return OpaqueFunction(module, name)
