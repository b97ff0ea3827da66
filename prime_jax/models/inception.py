"""The Inception-v3 network that FID is defined with, in Flax Linen (NHWC), for its pool3 features.

This is the network of pytorch-fid's `InceptionV3` with the TensorFlow FID weights
(pt_inception-2015-12-05-6726825d.pth): torchvision's Inception-v3 with the FID variants of its
blocks, whose 3×3 average pools ignore padding and whose last block max-pools. Images in [0, 1]
are resized to 299×299 (bilinear, half-pixel centres, no antialiasing) and scaled to [-1, 1];
the output is the 2048-d average of the last feature map. `variables_from_torch` maps the
PyTorch state dict onto the Flax variables.

Shape suffixes are XLA's convolution letters: B batch, H and W height and width, C channels, and
a kernel's HWIO (height, width, input and output channels).
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURES = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3
# Entries of the FID weights file that the pool3 features do not use.
UNUSED_KEYS = {"fc.weight": (1008, FEATURES), "fc.bias": (1008,)}
_HIGHEST = jax.lax.Precision.HIGHEST


def conv2d(x_BHWC: jax.Array, kernel_HWIO: jax.Array, stride: int = 1,
           padding: tuple[int, int] = (0, 0)) -> jax.Array:
  """A bias-free cross-correlation with symmetric zero padding (ph, pw), as torch's Conv2d.

  Forward-only, XLA:CPU's convolution is as fast here as the U-Net's im2col matmul (about 0.09 s
  per 299×299 image on two cores either way) and compiles three times faster, so it is used on
  every backend, in full float32 precision.
  """
  ph, pw = padding
  return jax.lax.conv_general_dilated(x_BHWC, kernel_HWIO, (stride, stride),
                                      ((ph, ph), (pw, pw)), precision=_HIGHEST,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nn.Module):
  """`conv2d` with a 'kernel' parameter (kh, kw, in, out)."""

  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.kernel, x_BHWC.shape[-1], self.features), jnp.float32)
    return conv2d(x_BHWC, kernel, self.stride, self.padding)


class BasicConv2d(nn.Module):
  """Conv (no bias), BatchNorm with its running statistics (eps 0.001), ReLU."""

  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    x = Conv(self.features, pair(self.kernel), self.stride, pair(self.padding),
             name="conv")(x_BHWC)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x_BHWC: jax.Array) -> jax.Array:
  """3×3, stride 1, padding 1, averaging over the in-image pixels only (TensorFlow's pool)."""
  return nn.avg_pool(x_BHWC, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3(x_BHWC: jax.Array, stride: int = 2, padding: int = 0) -> jax.Array:
  return nn.max_pool(x_BHWC, (3, 3), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)))


class InceptionA(nn.Module):
  """Mixed_5b..5d: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1 (pool_features)."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = BasicConv2d
    b1 = conv(64, 1, name="branch1x1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(conv(48, 1, name="branch5x5_1")(x))
    b3 = conv(64, 1, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a, halving the grid: 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2."""


  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = BasicConv2d
    b3 = conv(384, 3, stride=2, name="branch3x3")(x)
    bd = conv(64, 1, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: 1×1 | factorised 7×7 | twice-factorised 7×7 | avg-pool→1×1."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = BasicConv2d
    c7 = self.channels_7x7
    row = dict(kernel=(1, 7), padding=(0, 3))
    col = dict(kernel=(7, 1), padding=(3, 0))
    b1 = conv(192, 1, name="branch1x1")(x)
    b7 = conv(c7, 1, name="branch7x7_1")(x)
    b7 = conv(c7, **row, name="branch7x7_2")(b7)
    b7 = conv(192, **col, name="branch7x7_3")(b7)
    bd = conv(c7, 1, name="branch7x7dbl_1")(x)
    bd = conv(c7, **col, name="branch7x7dbl_2")(bd)
    bd = conv(c7, **row, name="branch7x7dbl_3")(bd)
    bd = conv(c7, **col, name="branch7x7dbl_4")(bd)
    bd = conv(192, **row, name="branch7x7dbl_5")(bd)
    bp = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a, halving the grid: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2."""


  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = BasicConv2d
    b3 = conv(320, 3, stride=2, name="branch3x3_2")(conv(192, 1, name="branch3x3_1")(x))
    b7 = conv(192, 1, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c: 1×1 | 1×1→(1×3, 3×1) | 1×1→3×3→(1×3, 3×1) | pool→1×1.

  The pool is the padding-free 3×3 average in Mixed_7b and a 3×3 max (padding 1) in Mixed_7c,
  as in the TensorFlow graph the FID weights come from.
  """

  pool: str = "avg"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = BasicConv2d
    row = dict(kernel=(1, 3), padding=(0, 1))
    col = dict(kernel=(3, 1), padding=(1, 0))
    b1 = conv(320, 1, name="branch1x1")(x)
    b3 = conv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, **row, name="branch3x3_2a")(b3),
                          conv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, 1, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, **row, name="branch3x3dbl_3a")(bd),
                          conv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, stride=1, padding=1)
    bp = conv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of torch's bilinear resize with align_corners=False.

  Output pixel i samples the input at (i + ½)·in/out − ½ (clamped at 0) between its two
  neighbours; there is no antialiasing when shrinking, as in pytorch-fid.
  """
  src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  weights = np.zeros((size_out, size_in), np.float64)
  np.add.at(weights, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(size_out), hi), frac)
  return weights.astype(np.float32)


def resize_bilinear(x_BHWC: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Bilinear resize of the two spatial axes to size × size, as `bilinear_matrix` defines it."""
  rows = jnp.asarray(bilinear_matrix(x_BHWC.shape[1], size))
  cols = jnp.asarray(bilinear_matrix(x_BHWC.shape[2], size))
  x = jnp.einsum("oh,bhwc->bowc", rows, x_BHWC, precision=_HIGHEST)
  return jnp.einsum("pw,bowc->bopc", cols, x, precision=_HIGHEST)


class InceptionV3(nn.Module):
  """Images (B, H, W, 3) in [0, 1] -> pool3 features (B, 2048).

  `resize_input` resizes to 299×299 first and `normalize_input` maps [0, 1] to [-1, 1], as
  pytorch-fid does by default.
  """

  resize_input: bool = True
  normalize_input: bool = True

  @nn.compact
  def __call__(self, images_BHWC: jax.Array) -> jax.Array:
    x = images_BHWC.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x)
    if self.normalize_input:
      x = 2.0 * x - 1.0
    conv = BasicConv2d
    x = conv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x)
    x = conv(80, 1, name="Conv2d_3b_1x1")(x)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


# --- PyTorch state dict -> Flax variables. -------------------------------------------------------

_LEAVES = {("params", "conv", "kernel"): "conv.weight", ("params", "bn", "scale"): "bn.weight",
           ("params", "bn", "bias"): "bn.bias", ("batch_stats", "bn", "mean"): "bn.running_mean",
           ("batch_stats", "bn", "var"): "bn.running_var"}


@functools.lru_cache(maxsize=1)
def variable_shapes() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """torch name -> (Flax variable path, torch shape) for every variable the features use."""
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    keys = tuple(p.key for p in path)
    module, local = keys[1:-2], (keys[0],) + keys[-2:]
    shape = tuple(leaf.shape)
    if local[1:] == ("conv", "kernel"):
      shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW.
    out[".".join(module) + "." + _LEAVES[local]] = (keys, shape)
  return out


def expected_torch_keys() -> tuple[list[str], list[str]]:
  """(required, optional) state-dict names: optional ones (the classifier, BatchNorm step
  counters) may be present and are ignored."""
  required = sorted(variable_shapes())
  optional = sorted(UNUSED_KEYS) + sorted(k[:-len("running_mean")] + "num_batches_tracked"
                                          for k in required if k.endswith(".bn.running_mean"))
  return required, optional


def _listing(names: Sequence[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def variables_from_torch(state: Mapping[str, np.ndarray], source: str = "the state dict") -> dict:
  """{'params', 'batch_stats'} for `InceptionV3` from pytorch-fid's FID Inception state dict.

  Conv weights go from OIHW to HWIO. Missing, unexpected or mis-shaped entries raise one
  ValueError that lists them; `source` (e.g. the file name) is named in it.
  """
  shapes = variable_shapes()
  required, optional = expected_torch_keys()
  missing = [k for k in required if k not in state]
  unexpected = sorted(k for k in state if k not in shapes and k not in optional)
  misshaped = [f"{k} {tuple(np.shape(state[k]))} (expected {shapes[k][1]})"
               for k in required if k in state and tuple(np.shape(state[k])) != shapes[k][1]]
  misshaped += [f"{k} {tuple(np.shape(state[k]))} (expected {s})" for k, s in UNUSED_KEYS.items()
                if k in state and tuple(np.shape(state[k])) != s]
  if missing or unexpected or misshaped:
    problems = [f"{what}: {_listing(names)}" for what, names in (
        ("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if names]
    raise ValueError(
        f"{source} is not the FID Inception state dict (pytorch-fid's "
        f"pt_inception-2015-12-05-6726825d.pth, torchvision names such as "
        f"Conv2d_1a_3x3.conv.weight and Mixed_5b.branch1x1.bn.running_mean): "
        + "; ".join(problems))
  variables: dict = {}
  for name, (path, _) in shapes.items():
    value = np.asarray(state[name], np.float32)
    if path[-1] == "kernel":
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return variables
