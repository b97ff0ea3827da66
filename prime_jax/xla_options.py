"""XLA compiler options that a config asks for: for now, which library runs XLA:CPU's matmuls.

XLA:CPU runs a dot with YNNPACK ('ynn', this jaxlib's default) or with Eigen ('eigen').
Reductions stay in YNNPACK either way. We timed both side by side on a 2-core Ice Lake Xeon.
Eigen made the train step of a text transformer whose blocks dominate its matmuls 4-6% faster
(bytes and Shakespeare shapes). YNNPACK ran the GPT-2-vocabulary head's products ~20% faster.
'auto' picks the library of the products that dominate. Other platforms get no options.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from prime_jax import errors
from prime_jax.models import transformer_body_matmul_params

CPU_DOT_LIBRARIES = ("auto", "ynn", "eigen")
_FUSION_TYPE_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# What YNNPACK is given under each choice: 'eigen' keeps reductions only.
_YNN_FUSION_TYPES = {"ynn": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
                     "eigen": "LIBRARY_FUSION_TYPE_REDUCE"}


def requested(config: ml_collections.ConfigDict) -> str:
  """`config.xla.cpu_dot_library` as written; configs saved before it existed read as 'auto'."""
  return config.get("xla", ml_collections.ConfigDict()).get("cpu_dot_library", "auto")


def cpu_dot_library(config: ml_collections.ConfigDict, vocab_size: int) -> str:
  """'ynn' or 'eigen': `config.xla.cpu_dot_library`, with 'auto' resolved for this model.

  'auto' is 'eigen' for a transformer whose blocks hold at least as many matmul weights per
  token as its vocabulary head (d_model x C), and 'ynn' otherwise (and for the U-Net).
  """
  choice = requested(config)
  if choice != "auto":
    return choice
  m = config.model
  if m.type != "transformer":
    return "ynn"
  body = transformer_body_matmul_params(m.d_model, m.num_layers, m.get("mlp_ratio", 4))
  return "eigen" if body >= m.d_model * vocab_size else "ynn"


def compiler_options(config: ml_collections.ConfigDict, vocab_size: int,
                     platform: str) -> dict[str, Any]:
  """`jax.jit(..., compiler_options=)` for a computation of this config on `platform`."""
  if platform != "cpu":
    return {}
  library = cpu_dot_library(config, vocab_size)
  if not _option_known():
    if requested(config) != "auto":
      raise errors.UserError(f"config.xla.cpu_dot_library={library!r} needs the XLA option "
                             f"{_FUSION_TYPE_OPTION}, which this jaxlib ({jax.__version__}) "
                             "lacks; use 'auto'")
    return {}
  return {_FUSION_TYPE_OPTION: _YNN_FUSION_TYPES[library]}


@functools.cache
def _option_known() -> bool:
  """Whether this jaxlib's XLA:CPU accepts the library option (it is experimental).

  The probe compiles on one CPU device under its own mesh, so that a caller's mesh (several
  devices, or several processes) does not clash with the probe's argument."""
  cpu = jax.devices("cpu")[0]
  one = jax.device_put(np.float32(1), cpu)
  try:
    with jax.set_mesh(Mesh(np.array([cpu]), ("probe",))):
      jax.jit(lambda x: x + 1).lower(one).compile(
          {_FUSION_TYPE_OPTION: _YNN_FUSION_TYPES["ynn"]})
  except jax.errors.JaxRuntimeError:
    return False
  return True
