"""Grain loader: determinism, sharding, exact resume, worker processes, bad-record accounting."""
import pytest

from geojax.data.batching import ExampleTransform
from geojax.data.pipeline import make_loader
from geojax.data.records import ArrayRecordSource, write_records
from geojax.data.tokenizer import load_tokenizer
from tests.data.fakes import fake_records

N = 30


@pytest.fixture(scope="module")
def records():
  recs = fake_records(N)
  recs[4]["image"] = b"garbage"
  recs[11]["lat"] = float("nan")
  recs[17]["lon"] = 999.0
  return recs


@pytest.fixture(scope="module")
def transform():
  return ExampleTransform(load_tokenizer("tiny"), prompt="coords", mode="rl", min_pixels=56 * 56,
                          max_pixels=112 * 112)


def _signature(batch):
  return (tuple(batch["image_grid_thw"][0]), batch["input_ids"].shape, tuple(batch["id"]),
          tuple(batch["example_mask"]))


def _run(source, transform, k=None, state=None, **kw):
  args = dict(batch_size=4, seed=3, num_epochs=2, worker_count=0, shard_index=0, shard_count=1, window_batches=2)
  args.update(kw)
  loader = make_loader(source, transform, **args)
  if state is not None:
    loader.set_state(state)
  out, saved = [], None
  for batch in loader:
    out.append(_signature(batch))
    if k is not None and len(out) == k:
      saved = loader.get_state()
      break
  loader.close()
  return out, saved


def test_deterministic_complete_and_bucketed(records, transform):
  first, _ = _run(records, transform)
  assert first == _run(records, transform)[0]
  assert first != _run(records, transform, seed=4)[0]
  ids = [i for sig in first for i, m in zip(sig[2], sig[3]) if m]
  good = {f"r{i}" for i in range(N)} - {"r4", "r11", "r17"}
  assert sorted(ids) == sorted(list(good) * 2)  # every good record once per epoch, nothing else
  for sig in first:  # one grid per batch
    assert sig[1][0] == 4
  assert ids[:len(good)] != ids[len(good):]  # reshuffled in epoch 2


def test_exact_resume(records, transform):
  full, _ = _run(records, transform)
  for k in (1, 3, 7):
    head, state = _run(records, transform, k=k)
    tail, _ = _run(records, transform, state=state)
    assert head + tail == full


def test_sharding_is_disjoint(records, transform):
  ids = []
  for shard in range(3):
    out, _ = _run(records, transform, num_epochs=1, shard_index=shard, shard_count=3)
    ids.append({i for sig in out for i, m in zip(sig[2], sig[3]) if m})
  assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and len(set.union(*ids)) == N - 3


def test_batches_and_resume_do_not_depend_on_worker_count(tmp_path, records, transform, caplog):
  """Workers run the transform, this process buckets: the batches and the saved state are the same for any
  worker_count, so a run may resume with another; bad records are reported once per epoch, not per worker."""
  write_records(str(tmp_path), "train", records, num_shards=2)
  source = ArrayRecordSource(str(tmp_path), "train")
  full, _ = _run(source, transform, worker_count=0)
  caplog.clear()
  with caplog.at_level("WARNING"):
    assert _run(source, transform, worker_count=2)[0] == full
  reports = [r.getMessage() for r in caplog.records if "bad records" in r.getMessage()]
  assert len(reports) == 2 and all("skipped 3 bad records" in m for m in reports)
  for k, before, after in ((2, 2, 0), (5, 1, 3), (7, 0, 1)):
    head, state = _run(source, transform, worker_count=before, k=k)
    tail, _ = _run(source, transform, worker_count=after, state=state)
    assert head + tail == full, (k, before, after)
  ids = [i for sig in full for i, m in zip(sig[2], sig[3]) if m]
  assert len(ids) == 2 * (N - 3) and len(set(ids)) == N - 3


def test_states_of_the_older_layout(records, transform):
  """An in-process state saved when it held Grain's own iterator state restores; a worker one fails clearly."""
  full, _ = _run(records, transform)
  head, state = _run(records, transform, k=3)
  legacy = dict(state, window_start={"next_index": state.pop("position")})
  assert head + _run(records, transform, state=legacy)[0] == full
  with pytest.raises(ValueError, match="older geojax whose worker processes"):
    _run(records, transform, state=dict(legacy, window_start={"workers_state": {}, "last_worker_index": 0}))


def test_bad_records_are_reported_once_per_epoch(records, transform, caplog):
  with caplog.at_level("WARNING"):
    _run(records, transform)
  reports = [r.getMessage() for r in caplog.records if "bad records" in r.getMessage()]
  assert len(reports) == 2 and all("skipped 3 bad records" in m for m in reports)
  assert "unreadable image" in reports[0] and "NaN" in reports[0] and "out of range" in reports[0]


def test_bad_record_counts_survive_a_resume(records, transform, caplog):
  """The epoch report after a resume counts the bad records read before the interruption too."""
  full, _ = _run(records, transform)
  for k in range(1, len(full)):
    caplog.clear()
    with caplog.at_level("WARNING"):
      _run(records, transform, k=k)
      before = [r.getMessage() for r in caplog.records if "bad records" in r.getMessage()]
      _, state = _run(records, transform, k=k)
      caplog.clear()
      _run(records, transform, state=state)
    after = [r.getMessage() for r in caplog.records if "bad records" in r.getMessage()]
    # The uninterrupted run reports each of the 2 epochs once: whatever was not reported before, is after.
    assert len(before) + len(after) == 2 and all("skipped 3 bad records" in m for m in before + after), (k, after)


def test_all_bad_source_fails_clearly(transform):
  bad = [dict(r, image=b"x") for r in fake_records(5)]
  with pytest.raises(ValueError, match="no usable record"):
    _run(bad, transform)


def test_default_shard_is_this_jax_process(records, transform):
  full, _ = _run(records, transform, num_epochs=1)
  assert _run(records, transform, num_epochs=1, shard_index=None, shard_count=None)[0] == full
