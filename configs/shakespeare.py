"""The embedded text default: Shakespeare's plays as UTF-8 bytes (C = 256), sized for 2 CPU cores.

  python -m prime_jax.main --config=configs/shakespeare.py:ell=2 --workdir=runs/shakespeare
Arguments: ell, objective (valid|joint), carry_over, baseline (''|mdm|ar), steps.
"""

from prime_jax import config


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=2, objective="valid", carry_over=True, baseline="",
                                    steps=600))
  c = config.base_config()
  c.data.name = "shakespeare_bytes"
  c.data.seq_len = 128
  c.model.update(d_model=128, num_layers=4, num_heads=4, dropout=0.0)
  c.optim.update(lr=1e-3, warmup_steps=50, lr_schedule="cosine", weight_decay=0.01,
                 ema_decay=0.99)
  c.train.update(batch_size=32, num_steps=args.steps, log_every=25, eval_every=200,
                 eval_batches=4, checkpoint_every=200, sample_every=300)
  c.eval.update(batch_size=32, num_batches=16, num_time_samples=4)
  c.sample.update(num_samples=8, batch_size=8, steps=128)
  config.apply_variant(c, args)
  return c
