"""Converters of other implementations' checkpoints into prime_jax workdirs.

`python3 -m prime_jax.convert official --checkpoint=FILE --workdir=DIR [--weights=ema|raw]
[--config=configs/official_owt.py:ell=2]` reads one of the authors' released checkpoints (text
`.ckpt` or image `.pth`, without torch) and writes a workdir for --mode=eval and --mode=sample.
"""
