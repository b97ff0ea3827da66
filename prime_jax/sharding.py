"""The device mesh (data, fsdp, tensor), logical-axis rules, and the shardings built from them."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from prime_jax import config as config_lib

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh over all (or the given) devices with sizes from config.mesh (-1 fills)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = config_lib.resolve_mesh_shape(config.mesh, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def rules(config: ml_collections.ConfigDict) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in config.sharding_rules)


@contextlib.contextmanager
def activate(mesh: Mesh, axis_rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Mesh and logical rules in force while tracing, so activation constraints resolve."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
    yield


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def tree_shardings(boxed_abstract_tree: Any, mesh: Mesh,
                   axis_rules: Sequence[tuple[str, Any]]) -> Any:
  """Shardings for a tree whose parameter leaves carry logical boxes; unboxed leaves replicate.

  A dimension that a rule would split unevenly (an embedding table of b+1 rows, say) stays whole.
  """
  specs = nn.get_partition_spec(boxed_abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, axis_rules)
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  shapes = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x,
                        boxed_abstract_tree, is_leaf=is_box)
  return jax.tree.map(lambda s, a: _divisible(s, a.shape), shardings, shapes)


def _divisible(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  spec = []
  for dim, axes in zip(shape, tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([sharding.mesh.shape[n] for n in names])) if names else 1
    spec.append(axes if dim % size == 0 else None)
  return NamedSharding(sharding.mesh, P(*spec))


def global_batch(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Assembles this process's slice of the batch into the global, sharded array."""
  return jax.make_array_from_process_local_data(sharding, local)
