"""A small CNN for 28×28 greyscale images, whose penultimate features give a Fréchet distance.

Trained by `prime_jax.quality.fashion_mnist.train_classifier` on Fashion-MNIST; it plays the part
that Inception plays in FID, with no download needed.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class ImageClassifier(nn.Module):
  """Two conv + pool stages, a `features`-wide ReLU layer (the feature layer) and a linear head."""

  features: int = 128
  num_classes: int = 10
  channels: tuple[int, ...] = (32, 64)

  @nn.compact
  def __call__(self, images: jax.Array, return_features: bool = False) -> jax.Array:
    """uint8 or float images (N, H, W, C) in [0, 255] -> logits (N, classes) or features."""
    x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    for ch in self.channels:
      x = nn.relu(nn.Conv(ch, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    h = nn.relu(nn.Dense(self.features)(x))
    if return_features:
      return h
    return nn.Dense(self.num_classes)(h)
