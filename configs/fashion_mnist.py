"""The embedded image default: Fashion-MNIST from the Debian package, 28×28×1, C = 256.

  python -m prime_jax.main --config=configs/fashion_mnist.py:ell=2 --workdir=runs/fmnist
Arguments: ell, objective, carry_over, baseline (''|mdm), levels, steps.
"""

from prime_jax import config


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=2, objective="valid", carry_over=True, baseline="",
                                    levels=256, steps=600))
  c = config.base_config()
  c.data.name = "fashion_mnist_local"
  c.data.image_levels = args.levels
  c.model.update(type="unet", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(7,),
                 head_dim=32, dropout=0.0, emb_features=16)
  c.diffusion.update(schedule="polynomial", schedule_power=3.0)
  c.optim.update(lr=1e-3, warmup_steps=50, b2=0.95, lr_schedule="cosine", ema_decay=0.99)
  c.train.update(batch_size=32, num_steps=args.steps, log_every=25, eval_every=200,
                 eval_batches=4, checkpoint_every=200)
  c.eval.update(batch_size=32, num_batches=8, num_time_samples=2)
  c.sample.update(num_samples=16, batch_size=16, steps=64)
  config.apply_variant(c, args)
  return c
