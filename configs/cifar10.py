"""CIFAR-10 with the paper's ADM U-Net, ℓ = 2, 512 sampling steps.

  python -m prime_jax.main --config=configs/cifar10.py:ell=2 --workdir=DIR
Arguments: ell, objective (default: the paper's unweighted cross_entropy), carry_over, baseline.
"""

from prime_jax import config


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=2, objective="cross_entropy", carry_over=True,
                                    baseline=""))
  return config.paper_image_config(args, "cifar10")
