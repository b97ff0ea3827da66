"""The authors' released OpenWebText checkpoints (MDLM-Prime), scored and sampled here.

  python3 -m prime_jax.convert official --checkpoint=checkpoint.ckpt --workdir=runs/official_l2
  python3 -m prime_jax.main --config=configs/official_owt.py:ell=2 --workdir=runs/official_l2 \
      --mode=eval
Arguments: ell (1, 2, 3, 4, 6, 8), carry_over (True for the results_prime_l*_co_owt files),
data_dir. The network is the authors' DiT (12 blocks, D 768, 12 heads, cond 128, sequence 1024,
no time input: the adaLN vector is their time MLP at σ = 0); GPT-2 BPE, documents joined by EOS
and framed BOS ... EOS, the last 100k documents held out (MDLM's split; prepare it with
python3 -m prime_jax.data.prepare openwebtext --out=DIR). Evaluation reports the valid bound
beside the joint objective they were trained with, and echoes the authors' corrected perplexity
for the ℓ (the May 2026 erratum) as eval.reference_perplexity.
"""

from prime_jax import config

# The erratum's OpenWebText perplexities of the released checkpoints (ℓ -> perplexity).
CORRECTED_PERPLEXITY = {2: 36.55, 3: 41.20, 4: 44.08, 6: 47.68, 8: 48.85}


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=2, carry_over=False, data_dir="data/openwebtext"))
  c = config.base_config()
  c.data.update(name="openwebtext", seq_len=1024, tokenizer="gpt2", data_dir=args.data_dir)
  c.model.update(type="transformer", ell=args.ell, d_model=768, num_layers=12, num_heads=12,
                 mlp_ratio=4, cond_dim=128, dropout=0.1, dtype="float32",
                 time_conditioning=False, zero_time_conditioning=True)
  c.diffusion.update(objective="joint", carry_over=args.carry_over, schedule="loglinear",
                     schedule_eps=1e-3)
  c.optim.update(lr=3e-4, warmup_steps=2500, lr_schedule="constant", ema_decay=0.9999,
                 weight_decay=0.0, grad_clip=1.0)
  c.train.update(batch_size=512, num_steps=1_000_000, log_every=100, eval_every=10_000,
                 eval_batches=64, checkpoint_every=5000, keep_last=3, keep_every=100_000)
  c.eval.update(batch_size=64, num_batches=0, num_time_samples=1,
                reference_perplexity=CORRECTED_PERPLEXITY.get(args.ell, 0.0))
  c.sample.update(num_samples=64, batch_size=64, steps=512, digit_source="joint", top_p=0.95)
  return c
