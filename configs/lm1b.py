"""LM1B with bert-base-uncased WordPiece, context 128, sentences padded (MDLM's set-up).

  python -m prime_jax.main --config=configs/lm1b.py:ell=2 --workdir=DIR
"""

from prime_jax import config


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=2, objective="valid", carry_over=True, baseline="",
                                    data_dir=""))
  c = config.base_config()
  c.data.update(name="lm1b", seq_len=128, tokenizer="bert-base-uncased", wrap=False,
                data_dir=args.data_dir or None)
  c.model.update(d_model=768, num_layers=12, num_heads=12, dropout=0.1, dtype="bfloat16")
  c.optim.update(lr=3e-4, warmup_steps=2500, ema_decay=0.9999)
  c.train.update(batch_size=512, num_steps=1_000_000, log_every=100, eval_every=10_000,
                 checkpoint_every=5000, keep_last=3, keep_every=100_000)
  c.eval.update(batch_size=256, num_batches=0)
  c.sample.update(num_samples=64, batch_size=64, steps=128, digit_source="joint")
  config.apply_variant(c, args)
  return c
