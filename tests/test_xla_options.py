"""The CPU matmul library a config asks for: the 'auto' rule, validation, and the compiled step."""

from __future__ import annotations

import re

import jax
import ml_collections
import numpy as np
import pytest

import tiny
from prime_jax import config as config_lib, experiment, sharding, xla_options

OPTION = "xla_cpu_experimental_ynn_fusion_type"


def _text_config(d_model: int, num_layers: int) -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.model.update(d_model=d_model, num_layers=num_layers)
  return c


def test_auto_takes_the_library_of_the_larger_matmuls():
  # Blocks: 4 layers x 12 x 256^2 = 3,145,728 weights a token passes; head: 256 x C.
  assert xla_options.cpu_dot_library(_text_config(256, 4), 256) == "eigen"
  assert xla_options.cpu_dot_library(_text_config(256, 4), 12288) == "eigen"  # equal: blocks
  assert xla_options.cpu_dot_library(_text_config(256, 4), 12289) == "ynn"
  assert xla_options.cpu_dot_library(_text_config(256, 4), 50257) == "ynn"
  unet = config_lib.base_config()
  unet.model.type = "unet"
  assert xla_options.cpu_dot_library(unet, 256) == "ynn"


def test_an_explicit_choice_wins_and_old_configs_read_as_auto():
  c = _text_config(256, 4)
  c.xla.cpu_dot_library = "ynn"
  assert xla_options.cpu_dot_library(c, 256) == "ynn"
  c.xla.cpu_dot_library = "eigen"
  assert xla_options.cpu_dot_library(c, 50257) == "eigen"
  saved = _text_config(256, 4)
  del saved["xla"]  # a config.json written before the option existed
  assert xla_options.cpu_dot_library(saved, 256) == "eigen"


def test_options_only_on_cpu():
  c = _text_config(256, 4)
  assert xla_options.compiler_options(c, 256, "gpu") == {}
  assert xla_options.compiler_options(c, 256, "tpu") == {}
  assert xla_options.compiler_options(c, 256, "cpu") == {OPTION: "LIBRARY_FUSION_TYPE_REDUCE"}
  assert xla_options.compiler_options(c, 50257, "cpu") == {
      OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def test_options_resolve_under_a_mesh_of_several_devices():
  # The probe of the option once compiled on device 0 under the caller's mesh, which a mesh
  # of several devices refused ("incompatible devices").
  xla_options._option_known.cache_clear()
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    assert xla_options.compiler_options(_text_config(256, 4), 256, "cpu") == {
        OPTION: "LIBRARY_FUSION_TYPE_REDUCE"}


def test_an_unknown_library_is_refused_by_name():
  c = tiny.config(xla__cpu_dot_library="mkl")
  with pytest.raises(config_lib.ConfigError, match=r"xla\.cpu_dot_library='mkl'.*'eigen'"):
    config_lib.validate(c, 1)


def _ynn_dots(compiled_text: str) -> int:
  """How many YNNPACK fusions of the compiled module are products, not reductions (which may
  take in a dot under either choice)."""
  bodies = dict(re.findall(r"\n%(\S+) \([^\n]*\{\n(.*?)\n\}", compiled_text, re.S))
  called = re.findall(r"calls=%([\w.\-]+), [^\n]*__ynn_fusion", compiled_text)
  return sum(" dot(" in bodies[name] and " reduce(" not in bodies[name] for name in called)


@pytest.mark.parametrize("library", ["eigen", "ynn"])
def test_the_train_step_compiles_its_dots_with_the_library(library):
  run = experiment.build(tiny.config(xla__cpu_dot_library=library), jax.devices()[:1])
  state = experiment.init_state(run, 0)
  tokens = np.zeros((8, 32), np.int32)
  with sharding.activate(run.mesh, run.rules):
    text = experiment.make_train_step(run).__wrapped__.lower(state, tokens).compile().as_text()
  if library == "eigen":
    assert _ynn_dots(text) == 0 and " dot(" in text
  else:
    assert _ynn_dots(text) > 0
