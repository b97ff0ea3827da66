"""OpenWebText, MDLM-small shape (12 layers, D 768, 12 heads, L 1024), GPT-2 BPE, batch 512.

  python -m prime_jax.main --config=configs/openwebtext.py:ell=4 --workdir=gs://bucket/owt_l4
Arguments: ell (1, 2, 3, 4, 6, 8), objective, carry_over, baseline (''|mdm|ar), accum
(gradient-accumulation steps: on one 80 GB accelerator accum=4 trains the batch of 512 as
4 micro-batches of 128 × 1024 tokens).
The blocks are neither rematerialised nor scanned. Compiled for an H100 (bash
benchmarks/gpu_compile.sh), the ℓ = 2 step needs 13.7 GiB at 32 × 1024 and 45.1 GiB at
128 × 1024, and its roofline (benchmarks/gpu_roofline.py) is 52.5 ms at 32 × 1024. Scanned, the
backward pass copies each layer's saved activations out of the stacked buffers: 14.9 GiB and
72.0 ms. With model.remat=True (the blocks keep their matmul outputs and compute the rest
again) 9.0 GiB and 57.9 ms; both, as this config had them before, 9.5 GiB and 64.4 ms.
Prepare the data first: python -m prime_jax.data.prepare openwebtext --out=DIR.
"""

from prime_jax import config


def get_config(arg=None):
  args = config.parse_arg(arg, dict(ell=2, objective="valid", carry_over=True, baseline="",
                                    data_dir="data/openwebtext", accum=1))
  c = config.base_config()
  c.data.update(name="openwebtext", seq_len=1024, tokenizer="gpt2", data_dir=args.data_dir)
  c.model.update(d_model=768, num_layers=12, num_heads=12, dropout=0.1, dtype="bfloat16",
                 fused_head_chunk=4096, remat=False, remat_policy="dots", scan_layers=False)
  c.optim.update(lr=3e-4, warmup_steps=2500, lr_schedule="constant", ema_decay=0.9999,
                 weight_decay=0.0, grad_clip=1.0,
                 grad_accum_steps=args.accum)
  c.train.update(batch_size=512, num_steps=1_000_000, log_every=100, eval_every=10_000,
                 eval_batches=64, checkpoint_every=5000, keep_last=3, keep_every=100_000)
  c.eval.update(batch_size=64, num_batches=0, num_time_samples=1)
  c.sample.update(num_samples=64, batch_size=64, steps=512, digit_source="joint", top_p=0.95)
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  config.apply_variant(c, args)
  return c
