"""The authors' released CIFAR-10 checkpoints (image/cifar10/results_*), sampled here.

  python3 -m prime_jax.convert official --checkpoint=checkpoint-4249.pth --workdir=runs/c10_l2
  python3 -m prime_jax.main --config=configs/official_cifar10.py:ell=2 --workdir=runs/c10_l2 \
      --mode=sample
Arguments: ell (1 for results_mdm_cifar10, 2, 3, 4, 8), carry_over (default: the README's).
The network is their guided-diffusion U-Net (channels 96, multipliers [3, 4, 4], 5 residual
blocks, attention at 16×16 with 64-wide heads, no input convolution, resampling without
convolutions, a constant scale-shift FiLM, the 96-wide pixel embedding fed to the first block).
Sampling uses their README's best 512-step settings for the ℓ (temperature τ(s) = a·s^p + c,
time warp, carry-over); their corrector takes three numbers and is left off.
"""

import ml_collections

from prime_jax import config

# ℓ -> (temperature (a, p, c), time warp (a, p, c), carry-over), from the authors' README.
SAMPLING = {
    1: ((-0.15, 1.0, 1.0), (1.0, 0.0, 0.0), True),
    2: ((-0.2, 2.0, 1.0), (1.0, 1.7, 0.0), True),
    3: ((-0.1, 3.5, 1.0), (1.0, 1.1, 0.0), False),
    4: ((-0.2, 3.0, 1.0), (1.0, 0.0, 0.0), False),
    8: ((-0.15, 3.0, 1.0), (1.0, 0.0, 0.0), True),
}


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=2, carry_over=None))
  temperature, warp, carry_over = SAMPLING.get(args.ell, SAMPLING[2])
  if args.carry_over is not None:
    carry_over = bool(args.carry_over)
  variant = ml_collections.ConfigDict(dict(ell=args.ell, objective="cross_entropy",
                                           carry_over=carry_over, baseline=""))
  c = config.paper_image_config(variant, "cifar10")
  c.model.update(emb_features=96, input_conv=False, resample_conv=False, dtype="float32",
                 time_conditioning=False)
  c.sample.update(temperature_schedule=temperature,
                  time_warp=warp if warp[1] > 0 else ())
  return c
