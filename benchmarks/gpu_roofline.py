"""A roofline estimate of a compiled XLA:GPU program, read from its optimized HLO text.

Each kernel takes max(FLOPs / peak, bytes / bandwidth); a loop counts its body once per trip
(once where XLA does not know the trip count) and a switch the branch asked for. That is a
lower bound on the step's time, not a measurement: it ranks settings of a GPU step compiled on
a CPU (`gpu_target`), where nothing can be timed.
Bytes are a kernel's operands and outputs, less what it only slices or gathers, or updates in
place.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

H100_PEAK_FLOPS = 989e12  # dense bf16
H100_BANDWIDTH = 3.35e12  # HBM3, bytes/s
# Memory bandwidth (bytes/s) by device kind (SXM parts), for `estimate(bandwidth=)`.
BANDWIDTH = {"H100": H100_BANDWIDTH, "H200": 4.8e12}

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][a-z\-]*)\((.*)$")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "opt-barrier", "partition-id", "replica-id"}
_SLICES = {"slice", "dynamic-slice", "gather"}
# Ops that read one element of each operand for each element they write.
_ELEMENTWISE = {"abs", "add", "and", "bitcast", "clamp", "compare", "convert", "copy", "divide",
                "exponential", "exponential-minus-one", "log", "log-plus-one", "maximum",
                "minimum", "multiply", "negate", "not", "or", "power", "rsqrt", "select",
                "sign", "sqrt", "subtract", "tanh", "xor"}


@dataclasses.dataclass(frozen=True)
class Instr:
  name: str
  shape: str  # the result's shape text, e.g. "f32[8,4]{1,0}" or a tuple of them
  op: str
  rest: str  # operands and attributes

  @property
  def operands(self) -> list[str]:
    return re.findall(r"%([\w.\-]+)", self.rest.split("), ")[0])

  def attr(self, key: str) -> str | None:
    m = re.search(key + r"=%([\w.\-]+)", self.rest)
    return m.group(1) if m else None


def array_bytes(shape: str) -> int:
  """Bytes of every array in a shape text (all elements of a tuple)."""
  return sum(math.prod(int(d) for d in dims.split(",") if d) * _BYTES[dt]
             for dt, dims in _ARRAY.findall(shape))


def _dims(shape: str) -> list[int]:
  m = _ARRAY.search(shape)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


def _shape_in(body: list[Instr], name: str) -> str:
  return next((i.shape for i in body if i.name == name), "")


def _dot_flops(dot: Instr, body: list[Instr]) -> float:
  """2 · output elements · contracted size of a `dot` inside a fused computation."""
  contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", dot.rest).group(1)
  lhs = _dims(_shape_in(body, dot.operands[0]))
  k = math.prod(lhs[int(d)] for d in contracting.split(",") if d)
  return 2.0 * math.prod(_dims(dot.shape)) * k


def parse(hlo: str) -> tuple[dict[str, list[Instr]], str]:
  """({computation name: its instructions}, entry computation name) of an HLO module's text."""
  comps, current, entry = {}, None, ""
  for line in hlo.splitlines():
    if line.startswith(("%", "ENTRY")):
      current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      comps[current] = []
      entry = current if line.startswith("ENTRY") else entry
    elif current is not None and (m := _INSTR.match(line)):
      comps[current].append(Instr(*m.groups()))
  if not entry:
    raise ValueError("no ENTRY computation in the HLO text")
  return comps, entry


@dataclasses.dataclass
class Roofline:
  """Seconds, FLOPs and bytes of one run of the program, and seconds by (scope, kind)."""
  seconds: float = 0.0
  flops: float = 0.0
  bytes: float = 0.0
  by: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class _Walker:
  def __init__(self, comps: dict[str, list[Instr]], peak: float, bandwidth: float, branch: int,
               scope: dict[str, str]):
    self.comps, self.peak, self.bw, self.branch, self.scope = comps, peak, bandwidth, branch, scope
    self.shapes = {i.name: i.shape for insts in comps.values() for i in insts}

  def run(self, comp: str, times: float, out: Roofline) -> None:
    for inst in self.comps[comp]:
      if inst.op == "while":
        trips = re.search(r'known_trip_count":\{"n":"(\d+)"', inst.rest)
        self.run(inst.attr("body"), times * (int(trips.group(1)) if trips else 1), out)
      elif inst.op == "conditional":
        self._branch(inst, times, out)
      elif inst.op == "call":
        self.run(inst.attr("to_apply"), times, out)
      elif inst.op not in _FREE:
        self._kernel(inst, times, out)

  def _branch(self, inst: Instr, times: float, out: Roofline) -> None:
    names = re.search(r"branch_computations=\{([^}]*)\}", inst.rest)
    names = ([n.strip().lstrip("%") for n in names.group(1).split(",")] if names else
             [inst.attr("true_computation"), inst.attr("false_computation")])
    costs = []
    for name in names:
      costs.append(Roofline())
      self.run(name, times, costs[-1])
    pick = (max(range(len(costs)), key=lambda k: costs[k].seconds) if self.branch < 0
            else min(self.branch, len(costs) - 1))
    for field in ("seconds", "flops", "bytes"):
      setattr(out, field, getattr(out, field) + getattr(costs[pick], field))
    out.by.update(costs[pick].by)

  def _kernel(self, inst: Instr, times: float, out: Roofline) -> None:
    flops, target = 0.0, ""
    if inst.op == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', inst.rest).group(1)
      flops = self._custom_flops(inst, target)
    elif inst.op == "fusion":
      body = self.comps.get(inst.attr("calls"), [])
      flops = sum(_dot_flops(sub, body) for sub in body if sub.op == "dot")
    moved = self._moved(inst)
    seconds = max(flops / self.peak, moved / self.bw) * times
    where = re.search(r'op_name="([^"]*)"', inst.rest)
    scope = next((s for key, s in self.scope.items() if where and key in where.group(1)), "rest")
    kind = "attention" if "fmha" in target else "gemm" if flops else "memory"
    out.seconds += seconds
    out.flops += flops * times
    out.bytes += moved * times
    out.by[(scope, kind)] += seconds

  def _custom_flops(self, inst: Instr, target: str) -> float:
    if "fmha" in target:
      m = re.search(r'intermediate_tensor_shape":\s*\{[^}]*?"dimensions":\s*\[([^\]]*)\]',
                    inst.rest)
      batch, heads, q_len, k_len = (int(d.strip(' "')) for d in m.group(1).split(","))
      head_dim = _dims(self.shapes[inst.operands[0]])[-1]
      forward = 4.0 * batch * heads * q_len * k_len * head_dim  # q·kᵀ and p·v
      return forward * (2.5 if "Backward" in target else 1.0)  # backward: 5 products
    if "gemm" in target or "matmul" in target:
      contracting = re.search(r'"lhs_contracting_dimensions":\[([0-9", ]*)\]', inst.rest)
      lhs = _dims(self.shapes[inst.operands[0]])
      k = math.prod(lhs[int(d)] for d in re.findall(r"\d+", contracting.group(1)))
      return 2.0 * math.prod(_dims(inst.shape)) * k  # the first output: the product
    return 0.0

  def _moved(self, inst: Instr) -> float:
    """Bytes a kernel reads and writes: a custom call's workspace output is not counted, an
    operand a fusion only slices counts as the slices, an in-place update as the update."""
    if inst.op == "custom-call":
      written = _ARRAY.search(inst.shape)
      first = array_bytes(written.group(0)) if written else 0
      return first + sum(array_bytes(self.shapes.get(o, "")) for o in inst.operands)
    if inst.op in ("dynamic-slice", "slice"):
      return 2 * array_bytes(inst.shape)
    if inst.op == "dynamic-update-slice":
      return 2 * array_bytes(self.shapes.get(inst.operands[1], ""))
    operands = [array_bytes(self.shapes.get(o, "")) for o in inst.operands]
    body = self.comps.get(inst.attr("calls") or "", [])
    if inst.op != "fusion" or not body:
      return array_bytes(inst.shape) + sum(operands)
    return self._fusion_moved(inst, body, operands)

  def _fusion_moved(self, inst: Instr, body: list[Instr], operands: list[int]) -> float:
    params = {int(re.match(r"(\d+)", i.rest).group(1)): i.name for i in body
              if i.op == "parameter"}
    users = collections.defaultdict(list)
    for sub in body:
      for o in sub.operands:
        users[o].append(sub)
    # A loop fusion computes each output element from a bounded number of each operand's
    # elements (it holds no reduction), so it reads at most an output's worth of each.
    outputs = [math.prod(_dims(a.group(0))) for a in _ARRAY.finditer(inst.shape)]
    per_output = max(outputs) if "kind=kLoop" in inst.rest and outputs else math.inf
    read, written = 0, array_bytes(inst.shape)
    for k, size in enumerate(operands):
      param = params.get(k, "")
      uses = users.get(param, [])
      updated = [u for u in uses if u.op == "dynamic-update-slice" and u.operands[0] == param]
      operand = _ARRAY.search(self.shapes.get(inst.operands[k], ""))
      if updated and all(u.op in _SLICES or u in updated for u in uses):
        for u in updated:  # written in place: only the update moves
          written += array_bytes(_shape_in(body, u.operands[1])) - array_bytes(u.shape)
        uses = [u for u in uses if u not in updated]
        size = sum(array_bytes(u.shape) for u in uses)
      elif operand and uses:
        shapes = {i.name: i.shape for i in body}
        size = min(size, per_output * _BYTES[operand.group(1)],
                   _elements_read(param, users, shapes) * _BYTES[operand.group(1)])
      read += size
    return read + written


def _elements_read(name: str, users: dict, shapes: dict, depth: int = 0) -> float:
  """Elements of `name` a fusion reads: through elementwise ops, only what slices or gathers
  further on take; everything where anything else (a reduction, a broadcast) reads it."""
  full = math.prod(_dims(shapes[name]))
  total = 0.0
  for u in users.get(name, []):
    if u.op in _SLICES and u.operands[0] == name:
      total += math.prod(_dims(u.shape))
    elif (u.op in _ELEMENTWISE and depth < 64 and u.name in users
          and math.prod(_dims(u.shape)) == full):
      total += _elements_read(u.name, users, shapes, depth + 1)
    else:
      return full
  return min(full, total)


def estimate(hlo: str, peak_flops: float = H100_PEAK_FLOPS, bandwidth: float = H100_BANDWIDTH,
             branch: int = -1, scope: dict[str, str] | None = None) -> Roofline:
  """The roofline of the module's entry computation; `branch` picks each switch's branch (-1:
  its costliest); `scope` maps op_name substrings to the names that `by` groups kernels under."""
  comps, entry = parse(hlo)
  out = Roofline()
  _Walker(comps, peak_flops, bandwidth, branch, scope or {}).run(entry, 1.0, out)
  return out
