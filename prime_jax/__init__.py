"""prime_jax: Prime (partial masking) for masked discrete diffusion, in JAX/Flax."""

from prime_jax.subtokens import PrimeCode, smallest_base

__version__ = "0.1.0"
