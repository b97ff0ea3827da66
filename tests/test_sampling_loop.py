"""The sampling loop's outputs: the invalid-code policies and sharded batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prime_jax import sampling
from prime_jax.subtokens import PrimeCode
from sampling_helpers import LINEAR, hashed_denoiser, run_sample


def test_invalid_codes_counted_and_handled_by_policy():
  """C=5, ℓ=2 (b=3): codes 12 and 2x decode to >= 5. Without carry-over, digits revealed at
  different steps from separate joint draws form such codes; each policy sees the same walk."""
  code, shape = PrimeCode(5, 2), (64, 16)
  uniform = lambda y, t: jnp.zeros(y.shape[:-1] + (5,))
  out = {}
  for policy in sampling.INVALID_POLICIES:
    config = sampling.SamplerConfig(num_steps=16, carry_over=False, invalid_policy=policy)
    out[policy] = run_sample(jax.random.key(4), uniform, code, shape, config)
  keep = np.asarray(out["keep"].tokens)
  invalid = keep >= 5
  assert invalid.sum() > 20
  for policy in sampling.INVALID_POLICIES:
    np.testing.assert_array_equal(out[policy].num_invalid, invalid.sum(1))
  np.testing.assert_array_equal(code.decode(np.asarray(out["keep"].digits)), keep)
  np.testing.assert_array_equal(out["clip"].tokens, np.minimum(keep, 4))
  res = np.asarray(out["resample"].tokens)
  assert res.max() < 5
  np.testing.assert_array_equal(res[~invalid], keep[~invalid])
  # A code 12 keeps its valid leading digit 1: it is re-drawn among 10 = 3 and 11 = 4.
  assert np.isin(res[keep == 5], [3, 4]).all() and (keep == 5).any()
  np.testing.assert_array_equal(out["resample"].digits, code.encode(res))
  # With carry-over the joint sampler never forms an invalid code.
  config = sampling.SamplerConfig(num_steps=16, carry_over=True, invalid_policy="keep")
  assert int(run_sample(jax.random.key(4), uniform, code, shape, config).num_invalid.sum()) == 0


def test_sharded_batch_gives_the_same_samples():
  """Over 8 devices the samples equal the unsharded ones, for a full draw at every position
  (short sequences) and for draws gathered among each device's own revealed positions."""
  devices = np.array(jax.devices()[:8])
  mesh = Mesh(devices, ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  code = PrimeCode(10, 2)
  fn = hashed_denoiser(10)
  for seq_len, slots in ((6, 0), (32, 2)):
    shape = (8, seq_len)
    config = sampling.SamplerConfig(num_steps=seq_len, top_p=0.9)
    assert sampling.draw_slot_count(LINEAR, config, seq_len, 2, batch=1) == slots
    plain = run_sample(jax.random.key(9), fn, code, shape, config)
    sharded = run_sample(jax.random.key(9), fn, code, shape, config, batch_sharding=sharding)
    np.testing.assert_array_equal(plain.tokens, sharded.tokens)
    assert sharded.tokens.sharding.is_equivalent_to(sharding, 2)
  with pytest.raises(ValueError, match="batch of 12 samples must be a multiple of the 8 shards"):
    run_sample(jax.random.key(9), fn, code, (12, 6), config, batch_sharding=sharding)
