"""Shared pieces of the backbone tests: tiny sizes, fast keys, inputs and compiled init/apply."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prime_jax.models import PARAM_AXES
from prime_jax.subtokens import PrimeCode

TINY_TEXT = dict(d_model=24, num_layers=2, num_heads=2, cond_dim=16)
TINY_IMAGE = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), head_dim=8,
                  norm_groups=8)


def key(seed: int):
  """PRNG key of the 'rbg' kind: same statistics here, much faster to compile on CPU."""
  return jax.random.key(seed, impl="rbg")


def random_subtokens(rng, code: PrimeCode, shape, mask_rate=0.3):
  """Random valid tokens encoded to sub-tokens, with a fraction of digits set to the mask value."""
  k1, k2 = jax.random.split(rng)
  y = code.encode(jax.random.randint(k1, shape, 0, code.vocab_size))
  masked = jax.random.bernoulli(k2, mask_rate, y.shape)
  return jnp.where(masked, code.mask_value, y).astype(jnp.int32)


def perturb(params, seed: int, scale=0.2):
  """Adds noise to every parameter (drawn with numpy: no compilation), leaving zero init."""
  rs = np.random.RandomState(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x) + scale * rs.standard_normal(x.shape), x.dtype), params)


def is_box(x):
  return isinstance(x, nn.LogicallyPartitioned)


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
  return jax.jit(model.apply, static_argnames=("train",))


@functools.lru_cache(maxsize=None)
def jitted_init(model):
  return jax.jit(functools.partial(model.init, train=False))


def init(model, y, t=None, seed=0):
  """model.init, compiled once per model and input shapes (tests share equal models)."""
  return jitted_init(model)(key(seed), y, t)



def check_boxed(variables):
  """Every parameter is logically boxed, with one distinct known name per array axis."""
  leaves = jax.tree.leaves(variables["params"], is_leaf=is_box)
  assert leaves
  for leaf in leaves:
    assert is_box(leaf), f"unboxed parameter of shape {getattr(leaf, 'shape', None)}"
    names = leaf.names
    assert len(names) == leaf.value.ndim
    assert all(name in PARAM_AXES for name in names), names
    assert len(set(names)) == len(names), names
