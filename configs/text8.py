"""text8 (27 characters), sequence 256, MD4's transformer size.

  python -m prime_jax.main --config=configs/text8.py:ell=3 --workdir=DIR
Prepare the data first: python -m prime_jax.data.prepare text8 --input=text8.zip --out=DIR.
"""

from prime_jax import config


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=3, objective="valid", carry_over=True, baseline="",
                                    data_dir="data/text8"))
  c = config.base_config()
  c.data.update(name="text8", seq_len=256, tokenizer="chars", data_dir=args.data_dir)
  c.model.update(d_model=768, num_layers=12, num_heads=12, dropout=0.1, dtype="bfloat16")
  c.optim.update(lr=3e-4, warmup_steps=2000, ema_decay=0.9999, weight_decay=0.03)
  c.train.update(batch_size=512, num_steps=1_000_000, log_every=100, eval_every=10_000,
                 checkpoint_every=5000, keep_last=3, keep_every=100_000)
  c.eval.update(batch_size=256, num_batches=0)
  c.sample.update(num_samples=64, batch_size=64, steps=256)
  config.apply_variant(c, args)
  return c
