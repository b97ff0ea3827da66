"""ImageNet 32×32 (tfds imagenet_resized/32x32) with the CIFAR-10 U-Net, ℓ = 2, 1024 steps.

  python -m prime_jax.main --config=configs/imagenet32.py --workdir=DIR
"""

from prime_jax import config


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=2, objective="cross_entropy", carry_over=True,
                                    baseline=""))
  c = config.paper_image_config(args, "imagenet32")
  c.sample.steps = 1024
  return c
