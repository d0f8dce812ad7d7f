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


def _batches(source, transform, **kw):
  args = dict(batch_size=4, seed=3, num_epochs=2, worker_count=0, window_batches=2)
  loader = make_loader(source, transform, **dict(args, **kw))
  out = list(loader)
  return out, loader.decoded


def test_row_shards_join_into_the_one_process_batches(records, transform):
  """shard_by="rows": each of 2 processes decodes only its half of every global batch, and the halves joined in
  process order are the one-process batches, field for field (filler rows and bad records alike)."""
  import numpy as np
  from geojax.data.batch import concat_examples
  whole, decoded_whole = _batches(records, transform, shard_index=0, shard_count=1)
  shares = [_batches(records, transform, shard_index=i, shard_count=2, shard_by="rows") for i in range(2)]
  assert [len(s[0]) for s in shares] == [len(whole)] * 2
  for k, batch in enumerate(whole):
    joined = concat_examples([shares[0][0][k], shares[1][0][k]])
    assert sorted(joined) == sorted(batch)
    for name in batch:
      np.testing.assert_array_equal(joined[name], batch[name], err_msg=f"batch {k} {name}")
  assert decoded_whole == 2 * (N - 3)
  # each process decoded its own rows (a share of only fillers decodes the batch's first example once)
  assert all(s[1] <= decoded_whole // 2 + len(whole) for s in shares), [s[1] for s in shares]
  assert sum(s[1] for s in shares) >= decoded_whole


def test_row_shards_mask_an_image_that_fails_after_its_header(records, transform):
  """A record whose header reads but whose pixels do not is a masked row (its shard cannot skip it alone)."""
  import numpy as np
  recs = list(records)
  good = recs[0]["image"]
  recs[0] = dict(recs[0], image=good[:len(good) // 2])
  shares = [_batches(recs, transform, num_epochs=1, shard_index=i, shard_count=2, shard_by="rows")[0]
            for i in range(2)]
  masked = [(b["id"][j], b["example_mask"][j]) for s in shares for b in s for j in range(len(b["id"]))
            if b["id"][j] == "r0"]
  assert masked and all(m == 0 for _, m in masked)
  with pytest.raises(ValueError, match="does not split"):
    make_loader(records, transform, batch_size=3, shard_index=0, shard_count=2, shard_by="rows")
  assert np.isfinite(shares[0][0]["pixel_values"]).all()
