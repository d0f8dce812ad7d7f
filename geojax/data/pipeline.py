"""Grain input pipeline: deterministic shuffling, per-process sharding, worker processes, bucketed static batches,
bad-record accounting, and iterator state that resumes exactly.

  loader = make_loader(source, ExampleTransform(tok, prompt="geo_r", mode="sft"), batch_size=64, seed=0)
  batch = next(loader); state = loader.get_state()      # JSON-able dict, saved with checkpoints
  loader2 = make_loader(...same args...); loader2.set_state(state)  # continues with the batch after `batch`

Order of operations: source -> this process's shard (jax.process_index() :: jax.process_count()) -> global
shuffle (reshuffled every epoch, by seed) -> repeat(num_epochs) -> per-example transform (in worker processes,
if any) -> bucketing into batches (in this process) -> the trainer.

With shard_by="rows" no records are sharded: every process buckets the whole stream as one process would, from
features read without decoding pixels (`ExampleTransform.describe`: the grid comes from the image header), and
decodes the images of its own rows of each global batch only, so that the processes' batches, joined in process
order, are exactly the one-process batches (`jax.make_array_from_process_local_data` builds the global arrays).

Worker processes return the examples in stream order, so the batches, and the saved state, are the same for
any worker_count: a run may resume with a different one. Bucketing reads a window of `window_batches *
batch_size` examples, groups them by (image grid, padded length) in order of first appearance and emits full
batches; a bucket's last, partial batch is filled with copies of its first row marked `example_mask == 0`
(nothing is dropped). The iterator state is the stream position at the start of the current window plus the
number of batches already emitted from it, so a restore reopens the stream there and skips exactly those batches.

Bad records (unreadable or truncated images, missing files, NaN or out-of-range coordinates, empty captions,
over-long prompts) are skipped, counted by reason, and reported once per epoch with an absl warning. If a source
yields no usable record at all, iteration fails with an error naming the reasons.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
from absl import flags, logging

from geojax.data.batching import BadRecord

# Give up when this many records in a row are bad before any good one was seen.
MAX_LEADING_BAD = 1000


def ensure_absl_flags_parsed() -> None:
  """Grain reads its settings from absl flags; in worker processes (and under pytest) nobody parsed them."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _init_worker(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  ensure_absl_flags_parsed()


@dataclasses.dataclass(frozen=True)
class _Bad:
  reason: str
  epoch: int


class _SafeTransform:
  """(index, record) -> features tagged with their epoch, or _Bad(reason). Never raises for data problems."""

  def __init__(self, transform: Callable[[Any], dict], epoch_len: int):
    self.transform = transform
    self.epoch_len = max(epoch_len, 1)

  def __call__(self, index: int, record: Any) -> Any:
    epoch = index // self.epoch_len
    try:
      if isinstance(record, _Bad):
        return dataclasses.replace(record, epoch=epoch)
      features = self.transform(record)
    except BadRecord as e:
      return _Bad(str(e), epoch)
    except Exception as e:  # anything else a corrupt record can trigger: skip it, but name the error
      return _Bad(f"{type(e).__name__}: {str(e)[:80]}", epoch)
    features["_epoch"] = epoch
    return features


class _SafeSource:
  """Wraps a random-access source so that records failing to load (missing file...) become _Bad."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Any:
    try:
      return self.source[index]
    except BadRecord as e:
      return _Bad(str(e), 0)
    except (OSError, ValueError, KeyError) as e:
      return _Bad(f"unreadable record ({type(e).__name__})", 0)


class _ExampleStream:
  """The per-example stream (a Grain MapDataset of examples or _Bad) opened at any global position, read in order
  by a thread or by worker processes."""

  def __init__(self, dataset: grain.MapDataset, read_options: grain.ReadOptions, worker_count: int,
               worker_buffer: int):
    self.dataset, self.read_options = dataset, read_options
    self.worker_count, self.worker_buffer = worker_count, worker_buffer

  def open(self, position: int) -> Iterator[Any]:
    dataset = self.dataset[position:] if position else self.dataset
    stream = dataset.to_iter_dataset(self.read_options)
    if self.worker_count > 0:
      stream = stream.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
          num_workers=self.worker_count, per_worker_buffer_size=self.worker_buffer), worker_init_fn=_init_worker)
    return iter(stream)


class _BucketBatcher:
  """Groups the stream's examples by `key_fn` into static-shape batches made by `collate_fn(features, batch_size)`;
  counts and reports bad records; its state is a stream position (see the module docstring)."""

  def __init__(self, stream: _ExampleStream, batch_size: int, key_fn: Callable[[Mapping], Any],
               collate_fn: Callable[[Sequence[Mapping], int], dict], window_batches: int = 8, name: str = "data"):
    self._stream, self.batch_size, self.key_fn, self.collate_fn = stream, batch_size, key_fn, collate_fn
    self.window = max(1, window_batches) * batch_size
    self.name = name
    self._examples = None  # opened on first read (a restore reopens it elsewhere; workers start once)
    self._position = 0  # examples read from the stream so far
    self._window_start = 0
    self._pending: collections.deque = collections.deque()
    self._emitted = 0
    self._skip = 0
    self._exhausted = False
    self._good = 0
    self._leading_bad = 0
    self._epoch = 0
    self._bad_counts: collections.Counter = collections.Counter()
    self._bad_reported_epoch = -1
    # The epoch and bad-record counts when the current window began: saved with the state, because a restore
    # re-reads (and recounts) the window, so the epoch's report after a resume equals an uninterrupted run's.
    self._window_epoch = 0
    self._window_bad: dict[str, int] = {}

  def _report_bad(self, epoch: int) -> None:
    """Ends `epoch`'s bad-record count, warning once per epoch (a restored run may re-read an epoch's end)."""
    if epoch > self._bad_reported_epoch:
      if self._bad_counts:
        total = sum(self._bad_counts.values())
        reasons = ", ".join(f"{r}: {n}" for r, n in self._bad_counts.most_common())
        logging.warning("%s: skipped %d bad records in epoch %d (%s)", self.name, total, epoch, reasons)
      self._bad_reported_epoch = epoch
    self._bad_counts.clear()

  def _enter_epoch(self, epoch: int) -> None:
    """Moves the count to `epoch`, ending the current one. (A state saved before counts were kept recorded a later
    epoch than its window starts in; re-reading that window steps back without ending anything.)"""
    if epoch > self._epoch:
      self._report_bad(self._epoch)
    self._epoch = epoch

  def _count_bad(self, bad: _Bad) -> None:
    if bad.epoch != self._epoch:
      self._enter_epoch(bad.epoch)
    self._bad_counts[bad.reason] += 1
    if self._good == 0:
      self._leading_bad += 1
      if self._leading_bad >= MAX_LEADING_BAD:
        self._fail()

  def _fail(self) -> None:
    reasons = ", ".join(f"{r}: {n}" for r, n in self._bad_counts.most_common(5))
    raise ValueError(f"{self.name}: no usable record among the first {self._leading_bad} read; every one was "
                     f"bad ({reasons}). Check the dataset paths and format.")

  def _fill(self) -> None:
    """Reads the next window and queues its batches (as lists of features)."""
    self._window_start = self._position
    self._window_epoch, self._window_bad = self._epoch, dict(self._bad_counts)
    self._emitted = 0
    groups: dict[Any, list] = {}
    order: list[tuple[int, Any, list]] = []
    for _ in range(self.window):
      if self._examples is None:
        self._examples = self._stream.open(self._position)
      try:
        element = next(self._examples)
      except StopIteration:
        self._exhausted = True
        break
      self._position += 1
      if isinstance(element, _Bad):
        self._count_bad(element)
        continue
      if element.get("_epoch", self._epoch) != self._epoch:
        self._enter_epoch(element["_epoch"])
      self._good += 1
      key = self.key_fn(element)
      group = groups.get(key)
      if group is None or len(group) == self.batch_size:
        group = groups[key] = []
        order.append((len(order), key, group))
      group.append(element)
    if self._exhausted and self._good == 0 and self._leading_bad:
      self._fail()
    self._pending = collections.deque(group for _, _, group in order)

  def __next__(self) -> dict:
    while True:
      if not self._pending:
        if self._exhausted:
          self._report_bad(self._epoch)
          raise StopIteration
        self._fill()
        continue
      group = self._pending.popleft()
      self._emitted += 1
      if self._skip:
        self._skip -= 1
        continue
      return self.collate_fn(group, self.batch_size)

  def __iter__(self) -> "_BucketBatcher":
    return self

  def get_state(self) -> dict:
    return {"position": self._window_start, "emitted": self._emitted, "epoch": self._window_epoch,
            "bad_counts": dict(self._window_bad), "reported_epoch": self._bad_reported_epoch}

  def set_state(self, state: dict) -> None:
    position = _stream_position(state)
    self.close()
    self._position = self._window_start = position
    self._pending = collections.deque()
    self._exhausted = False
    self._skip = int(state["emitted"])
    self._emitted = 0
    self._epoch = self._window_epoch = int(state.get("epoch", 0))
    self._bad_counts = collections.Counter(state.get("bad_counts", {}))
    self._window_bad = dict(self._bad_counts)
    self._bad_reported_epoch = int(state.get("reported_epoch", self._epoch - 1))
    self._good = max(self._good, 1)  # a restored run has seen good records before

  def close(self) -> None:
    close = getattr(self._examples, "close", None)
    if close is not None:
      close()
    self._examples = None


def _stream_position(state: Mapping[str, Any]) -> int:
  """The stream position of a saved state. States saved before bucketing moved out of the workers hold the
  upstream Grain state instead: an in-process one ({"next_index": n}) is that position; one from worker
  processes (each bucketing its own slice) has no equivalent."""
  if "position" in state:
    return int(state["position"])
  window_start = state.get("window_start")
  if isinstance(window_start, Mapping) and set(window_start) == {"next_index"}:
    return int(window_start["next_index"])
  raise ValueError("this data state was saved by an older geojax whose worker processes batched their own slices "
                   f"of the data; it cannot be resumed exactly (state keys: {sorted(state)}). Restart the stage, or "
                   "resume it with that version.")


class _RowShare:
  """The collate_fn of shard_by="rows": every process buckets the same global batches of `describe`d examples
  (no pixels yet); this one decodes the images of its own rows only (rows index*n .. index*n+n-1 of the batch,
  fillers included) and collates them. A row whose image fails to decode becomes a filler (zero patches,
  example_mask 0) on every process count alike."""

  def __init__(self, transform, collate_fn: Callable, index: int, count: int, threads: int, name: str):
    self.transform, self.collate_fn, self.index, self.count, self.name = transform, collate_fn, index, count, name
    self.threads = max(1, threads)
    self.decoded = 0  # images this process decoded

  def _decode(self, features: Mapping) -> tuple[dict, bool]:
    try:
      return self.transform.decode(features), True
    except Exception as e:  # the record passed `describe`, but its pixels are corrupt
      logging.warning("%s: record %r has an unreadable image (%s); its row is masked", self.name,
                      features.get("id"), str(e)[:80])
      return self.transform.blank(features), False

  def __call__(self, group: Sequence[Mapping], batch_size: int) -> dict:
    n = batch_size // self.count
    start = self.index * n
    rows = (list(group) + [group[0]] * (batch_size - len(group)))[start:start + n]
    real = [start + i < len(group) for i in range(n)]
    unique = list({id(f): f for f in rows}.values())  # fillers repeat the batch's first example: decoded once
    if self.threads > 1 and len(unique) > 1:
      with concurrent.futures.ThreadPoolExecutor(min(self.threads, len(unique))) as pool:
        done = list(pool.map(self._decode, unique))
    else:
      done = [self._decode(f) for f in unique]
    self.decoded += len(unique)
    by_id = {id(f): d for f, d in zip(unique, done)}
    return self.collate_fn([by_id[id(f)][0] for f in rows], n,
                           real=[r and by_id[id(f)][1] for f, r in zip(rows, real)])


class Loader:
  """Iterator of batches with `get_state()` / `set_state()` for checkpoints (state is a JSON-able dict)."""

  def __init__(self, batches: _BucketBatcher, num_batches_hint: int | None = None, row_shards: int = 1):
    self._batches = batches
    self.num_batches_hint = num_batches_hint
    self.row_shards = row_shards  # processes whose batches join into one global batch (shard_by="rows"), else 1

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    return next(self._batches)

  @property
  def decoded(self) -> int:
    """Records this process has decoded (image and all) since the loader was made: with shard_by="rows" about
    1 / process count of those read."""
    return getattr(self._batches.collate_fn, "decoded", self._batches._good)

  def get_state(self) -> dict:
    return self._batches.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._batches.set_state(dict(state))

  def close(self) -> None:
    self._batches.close()


def _default_shard() -> tuple[int, int]:
  import jax
  return jax.process_index(), jax.process_count()


def rows_per_process(batch_size: int, enabled: bool = True) -> dict:
  """make_loader arguments that split each global batch's rows over the JAX processes (shard_by="rows") when
  `enabled` and they divide evenly; otherwise every process loads the whole batch (shard 0 of 1)."""
  import jax
  if enabled and batch_size % jax.process_count() == 0:
    return {"shard_by": "rows"}
  return {"shard_index": 0, "shard_count": 1}


def make_loader(records_source, transform: Callable[[Any], dict], batch_size: int, seed: int = 0,
                shuffle: bool = True, num_epochs: int | None = 1, worker_count: int = 0,
                shard_index: int | None = None, shard_count: int | None = None, *,
                key_fn: Callable[[Mapping], Any] | None = None,
                collate_fn: Callable[[Sequence[Mapping], int], dict] | None = None,
                window_batches: int = 8, read_threads: int = 1, prefetch: int = 2, name: str = "data",
                shard_by: str = "records") -> Loader:
  """A deterministic, resumable iterator of batches over a random-access source of records.

  Args:
    records_source: anything with __len__ and __getitem__ returning a record dict (e.g. ArrayRecordSource,
      a list, the sources in geojax.data.sources).
    transform: record -> features; an ExampleTransform (its bucket_key / collate are used by default).
    batch_size: examples per batch: per process with shard_by="records", of the global batch with "rows".
    seed: shuffle seed; the same seed gives the same batches.
    shuffle: globally shuffle (differently in every epoch).
    num_epochs: passes over the data; None repeats forever.
    worker_count: Grain worker processes for decoding / preprocessing (0: in this process).
    shard_index, shard_count: this process's shard; default jax.process_index() / jax.process_count().
    shard_by: "records": each process reads its own records (every shard_count-th) and batches them itself;
      "rows": every process reads the same global batches as one process would, but decodes and returns only its
      rows of each (rows shard_index * n .. of n = batch_size / shard_count): the processes' batches, joined in
      process order, are the one-process batches. Needs a transform with `describe` / `decode` / `blank`
      (ExampleTransform); its images are decoded in this process (`worker_count` threads).
    window_batches: bucketing window, in batches (larger: fewer filler rows, more memory).
    read_threads, prefetch: threads and buffered elements per reader.
  """
  ensure_absl_flags_parsed()
  if shard_index is None or shard_count is None:
    shard_index, shard_count = _default_shard()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  if shard_by not in ("records", "rows"):
    raise ValueError(f"shard_by must be 'records' or 'rows', got {shard_by!r}")
  by_rows = shard_by == "rows" and shard_count > 1
  if by_rows and batch_size % shard_count:
    raise ValueError(f"{name}: a global batch of {batch_size} rows does not split over {shard_count} processes")
  n_total = len(records_source)
  if n_total == 0:
    raise ValueError(f"{name}: the source is empty")
  ds = grain.MapDataset.source(_SafeSource(records_source))
  if shard_count > 1 and not by_rows:
    ds = ds[shard_index::shard_count]
  epoch_len = len(ds)
  if epoch_len == 0:
    raise ValueError(f"{name}: shard {shard_index} of {shard_count} is empty ({n_total} records)")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.map_with_index(_SafeTransform(transform.describe if by_rows else transform, epoch_len))
  # Workers buffer about `prefetch` batches between them.
  worker_buffer = max(prefetch, -(-prefetch * batch_size // max(worker_count, 1)))
  stream = _ExampleStream(ds, grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch),
                          worker_count, worker_buffer)
  collate_fn = collate_fn or getattr(transform, "collate")
  if by_rows:
    collate_fn = _RowShare(transform, collate_fn, shard_index, shard_count, worker_count, name)
  batches = _BucketBatcher(stream, batch_size, key_fn or getattr(transform, "bucket_key"), collate_fn,
                           window_batches, name)
  hint = None if num_epochs is None else -(-epoch_len * num_epochs // batch_size)
  return Loader(batches, hint, shard_count if by_rows else 1)
