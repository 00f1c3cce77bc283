"""In-memory and streaming pipelines: every sample exactly once per epoch, padded on the way.

* In-memory: one pass over the blocks, each padded straight into preallocated arrays —
  the padded dataset plus one block, never a second copy.
* Streaming: batch i is computed from an epoch's order (blocks permuted, rows permuted
  inside each block: a bounded shuffle), so any worker can build any batch; a small cache of
  padded blocks keeps memory flat however large the data grows.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from memtune.constants import BLOCK_ROWS
from memtune.data.blocks import Block, make_blocks, read_block
from memtune.data.buckets import BucketOrder, bucket_ids
from memtune.data.cells import Ragged
from memtune.data.padding import Side, pad
from memtune.data.scan import DataInfo
from memtune.data.sources import column_values
from memtune.errors import MemtuneError
from memtune.footprint import Feed, Footprint

Arrays = dict[str, np.ndarray]
Cut = tuple[str, slice] | None  # one array's columns to keep (a length bucket's), or all


@dataclass(frozen=True)
class Layout:
    """How rows become arrays: the feeds, and the padding sides."""

    footprint: Footprint
    info: DataInfo
    padding: Side = "pre"
    truncating: Side = "pre"

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for feed in self.footprint.feeds:
            seen.update(dict.fromkeys(feed.columns))
        return list(seen)

    def empty(self, n: int) -> tuple[Arrays, Arrays]:
        def make(feeds: tuple[Feed, ...]) -> Arrays:
            return {f.name: np.zeros((n, *f.shape), dtype=f.dtype) for f in feeds}

        return make(self.footprint.inputs), make(self.footprint.targets)

    def fill(self, block: Block, out: tuple[Arrays, Arrays], at: int) -> None:
        """Read ``block`` and write its padded rows into ``out`` from row ``at``."""
        chunk = read_block(block, self.columns)
        n = block.rows
        for feed in self.footprint.feeds:
            target = (out[0] if feed.role == "input" else out[1])[feed.name][at : at + n]
            if feed.sequence:
                (column,) = feed.columns
                ragged = column_values(
                    chunk, column, where=block.shard.label, first_row=block.start, sequence=True
                )
                assert isinstance(ragged, Ragged)
                view = target.reshape(n, feed.shape[0])
                pad(
                    ragged,
                    feed.shape[0],
                    padding=self.padding,
                    truncating=self.truncating,
                    out=view,
                )
            else:
                for j, column in enumerate(feed.columns):
                    values = column_values(
                        chunk,
                        column,
                        where=block.shard.label,
                        first_row=block.start,
                        sequence=False,
                    )
                    assert isinstance(values, np.ndarray)
                    _check_numbers(values, block, column, feed)
                    if target.ndim == 1:
                        target[...] = values
                    else:
                        target[:, j] = values

    def block(self, block: Block) -> tuple[Arrays, Arrays]:
        out = self.empty(block.rows)
        self.fill(block, out, 0)
        return out


def _check_numbers(values: np.ndarray, block: Block, column: str, feed: Feed) -> None:
    if feed.dtype == "int32" and values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            row = block.start + int(bad[0]) + 1
            raise MemtuneError(f"{block.shard.label}, row {row}: column {column!r} is empty")


def load_in_memory(layout: Layout, blocks: list[Block]) -> tuple[Arrays, Arrays]:
    """All rows of ``blocks`` padded into one contiguous array per feed."""
    n = sum(b.rows for b in blocks)
    out = layout.empty(n)
    at = 0
    for block in blocks:
        layout.fill(block, out, at)
        at += block.rows
    _release_arrow_memory()
    return out


def _release_arrow_memory() -> None:
    """Hand Arrow's cached buffers back to the system: training should not sit on them."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class EpochOrder:
    """Batch i of epoch e → (block, rows) pieces; a bijection onto all rows, seeded."""

    def __init__(self, block_rows: list[int], batch_size: int, *, shuffle: bool, seed: int | None):
        if batch_size < 1:
            raise MemtuneError(f"batch size {batch_size}: must be positive")
        self.block_rows = np.asarray(block_rows, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = 0 if seed is None else seed
        self.total = int(self.block_rows.sum())
        self._rows_cache: tuple[tuple[int, int], np.ndarray] | None = None
        self.start = 0  # positions of this epoch already trained (after a batch change)
        self.resume: tuple[int, int] | None = None  # (epoch, start) to continue from
        self.set_epoch(0)

    def __len__(self) -> int:
        return math.ceil((self.total - self.start) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.start = self.resume[1] if self.resume and self.resume[0] == epoch else 0
        self.epoch = epoch
        count = len(self.block_rows)
        if self.shuffle:
            self.block_order = np.random.default_rng([self.seed, epoch]).permutation(count)
        else:
            self.block_order = np.arange(count)
        self.ends = np.cumsum(self.block_rows[self.block_order])
        self.block_end = np.empty(count, dtype=np.int64)  # where each block ends this epoch
        self.block_end[self.block_order] = self.ends

    def rows_of(self, block: int) -> np.ndarray:
        """Block ``block``'s rows in this epoch's order (the bounded in-block shuffle)."""
        n = int(self.block_rows[block])
        if not self.shuffle:
            return np.arange(n)
        key = (self.epoch, block)
        cached = self._rows_cache
        if cached is None or cached[0] != key:
            cached = (key, np.random.default_rng([self.seed, self.epoch, block]).permutation(n))
            self._rows_cache = cached  # one block at a time: batches read blocks in order
        return cached[1]

    def block_after(self, i: int) -> int | None:
        """The block the epoch reads after batch i's last one (for read-ahead)."""
        hi = min(self.start + (i + 1) * self.batch_size, self.total) - 1
        k = int(np.searchsorted(self.ends, hi, side="right")) + 1
        return int(self.block_order[k]) if k < len(self.block_order) else None

    def batch(self, i: int) -> list[tuple[int, np.ndarray]]:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        lo = self.start + i * self.batch_size
        return self.pieces(lo, min(lo + self.batch_size, self.total))

    def pieces(self, lo: int, hi: int) -> list[tuple[int, np.ndarray]]:
        """Positions ``lo:hi`` of this epoch's order as (block, rows) pieces."""
        pieces = []
        k = int(np.searchsorted(self.ends, lo, side="right"))
        while lo < hi:
            block = int(self.block_order[k])
            begin = int(self.ends[k] - self.block_rows[block])
            end = min(hi, int(self.ends[k]))
            pieces.append((block, self.rows_of(block)[lo - begin : end - begin]))
            lo = end
            k += 1
        return pieces


class BatchSource(Protocol):
    """What training reads: ``len`` batches per epoch, any batch by index, reshuffled per epoch."""

    num_samples: int
    failure: MemtuneError | None

    @property
    def batch_size(self) -> int: ...

    @property
    def position(self) -> int: ...

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[Arrays, Arrays]: ...

    def set_epoch(self, epoch: int) -> None: ...


class StreamingBatches:
    """Random-access batches read lazily from shards; thread-safe, memory bounded."""

    def __init__(
        self,
        layout: Layout,
        blocks: list[Block],
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        cache_blocks: int | None = None,
    ) -> None:
        self.layout = layout
        self.blocks = blocks
        self.order = EpochOrder([b.rows for b in blocks], batch_size, shuffle=shuffle, seed=seed)
        smallest = min((b.rows for b in blocks), default=1)
        # A batch's span, one block read ahead, and one more for a worker on the next batch.
        self.capacity = cache_blocks or (math.ceil(batch_size / max(smallest, 1)) + 3)
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memtune-read-ahead")
        self._cache: OrderedDict[int, tuple[Arrays, Arrays]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Event] = {}
        self._building: dict[int, int] = {}  # batches being gathered now: id -> first position
        self._floor = 0  # the epoch's blocks ending by this position are read for good
        self.failure: MemtuneError | None = None  # set by a worker that met bad data
        self.num_samples = self.order.total

    def __len__(self) -> int:
        return len(self.order)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)
        self._floor = self.order.start

    @property
    def batch_size(self) -> int:
        return self.order.batch_size

    @property
    def position(self) -> int:
        """Where in this epoch's order batch 0 starts."""
        return self.order.start

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None:
        """Smaller batches from position ``start`` of ``epoch`` on: no sample skipped or
        repeated, because the epoch's order does not depend on the batch size."""
        self.order.batch_size = batch_size
        self.order.resume = (epoch, start)
        self.set_epoch(epoch)

    def _padded(self, index: int) -> tuple[Arrays, Arrays]:
        while True:
            with self._lock:
                if index in self._cache:
                    self._cache.move_to_end(index)
                    return self._cache[index]
                waiting = self._loading.get(index)
                if waiting is None:
                    event = self._loading[index] = threading.Event()
                    break
            waiting.wait()
        try:
            value = self.layout.block(self.blocks[index])
            with self._lock:
                # A read-ahead can finish after its block was read for good (the check in
                # _quiet_load ran before): then it is not cached, or it would linger.
                if self.order.block_end[index] > self._floor:
                    self._cache[index] = value
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._loading[index]
            event.set()

    def _read_ahead(self, index: int) -> None:
        with self._lock:
            if index in self._cache or index in self._loading:
                return
        self._ahead.submit(self._quiet_load, index)

    def _quiet_load(self, index: int) -> None:
        if self.order.block_end[index] <= self._floor:
            return  # read for good while this waited its turn
        # A failure here is met again, and reported, by the batch that needs this block.
        with contextlib.suppress(MemtuneError):
            self._padded(index)

    def __getitem__(self, i: int) -> tuple[Arrays, Arrays]:
        pieces = self.order.batch(i)
        following = self.order.block_after(i)
        if following is not None:
            self._read_ahead(following)
        lo = self.order.start + i * self.order.batch_size
        key = id(pieces)
        with self._lock:
            self._building[key] = lo
        try:
            return self._gather(pieces)
        finally:
            with self._lock:
                del self._building[key]
                self._drop_before(min(self._building.values(), default=lo + self.batch_size))

    def _drop_before(self, position: int) -> None:
        """Drop cached blocks that end by ``position`` of this epoch's order: batches are
        built in order, so no batch still to come needs them. The cache then holds the
        blocks of the batches being built and the one read ahead, not up to its capacity
        (a 40,423-row stream of 8,192-row groups filled all 27 of it; it now holds 150 MiB
        less beside training)."""
        self._floor = max(self._floor, position)
        ends = self.order.block_end
        for block in [b for b in self._cache if ends[b] <= self._floor]:
            del self._cache[block]

    def span(self, lo: int, hi: int) -> tuple[Arrays, Arrays]:
        """Positions ``lo:hi`` of this epoch's order, as one batch."""
        return self._gather(self.order.pieces(lo, hi))

    def _gather(
        self, pieces: list[tuple[int, np.ndarray]], cut: Cut = None
    ) -> tuple[Arrays, Arrays]:
        """The rows of ``pieces`` as one batch; ``cut``: one input's columns only."""
        parts = [(self._padded(block), rows) for block, rows in pieces]
        if len(parts) == 1:
            (inputs, targets), rows = parts[0]
            return _take(inputs, rows, cut), _take(targets, rows)
        return (
            {
                k: np.concatenate([_rows(p[0][k], r, k, cut) for p, r in parts])
                for k in parts[0][0][0]
            },
            {k: np.concatenate([p[1][k][r] for p, r in parts]) for k in parts[0][0][1]},
        )

    def __iter__(self) -> Iterator[tuple[Arrays, Arrays]]:
        for i in range(len(self)):
            yield self[i]


class InMemoryBatches:
    """Random-access batches over padded arrays already in memory; reshuffled per epoch."""

    def __init__(
        self,
        inputs: Arrays,
        targets: Arrays,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = 0 if seed is None else seed
        self.num_samples = next(iter(inputs.values())).shape[0] if inputs else 0
        self.failure: MemtuneError | None = None
        self.position = 0
        self.resume: tuple[int, int] | None = None
        self.set_epoch(0)

    def __len__(self) -> int:
        return math.ceil((self.num_samples - self.position) / self.batch_size)

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None:
        """Smaller batches from position ``start`` of ``epoch`` on (see StreamingBatches)."""
        self.batch_size = batch_size
        self.resume = (epoch, start)
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.position = self.resume[1] if self.resume and self.resume[0] == epoch else 0
        self.order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            if self.shuffle
            else None
        )

    def __getitem__(self, i: int) -> tuple[Arrays, Arrays]:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        lo = self.position + i * self.batch_size
        return self.span(lo, min(lo + self.batch_size, self.num_samples))

    def span(self, lo: int, hi: int) -> tuple[Arrays, Arrays]:
        """Positions ``lo:hi`` of this epoch's order, as one batch."""
        if self.order is None:
            return row_range(self.inputs, lo, hi), row_range(self.targets, lo, hi)
        rows = np.sort(self.order[lo:hi])  # sorted: a friendlier gather, same set of rows
        return _take(self.inputs, rows), _take(self.targets, rows)

    def __iter__(self) -> Iterator[tuple[Arrays, Arrays]]:
        for i in range(len(self)):
            yield self[i]


class EvenBatches:
    """Exactly ``steps`` batches over a source's epoch, their sizes as equal as they can be.

    Every MultiWorkerMirroredStrategy worker must take the same number of steps, and the
    workers' shares of the data differ by a few rows: each worker cuts its own share into
    the steps of the largest share, so no sample is dropped or repeated and no batch is
    larger than the plan's.
    """

    def __init__(self, source: StreamingBatches | InMemoryBatches, steps: int) -> None:
        n = source.num_samples
        if n < steps:
            raise MemtuneError(
                f"this worker's share holds {n} samples, fewer than the {steps} steps every "
                "worker takes; use fewer workers or a larger batch"
            )
        self.source = source
        self.steps = steps
        self.num_samples = n
        self.failure: MemtuneError | None = None
        self._bounds = even_bounds(n, steps)

    @property
    def batch_size(self) -> int:
        return self.source.batch_size

    @property
    def position(self) -> int:
        return 0

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None:
        raise MemtuneError("a multi-worker run cannot change its batch on one worker alone")

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[Arrays, Arrays]:
        if not 0 <= i < self.steps:
            raise IndexError(f"batch {i} of {self.steps}")
        return self.source.span(self._bounds[i], self._bounds[i + 1])


def even_bounds(n: int, steps: int) -> list[int]:
    """Positions cutting ``n`` samples into ``steps`` batches whose sizes differ by at most 1."""
    return [i * n // steps for i in range(steps + 1)]


def worker_blocks(info: DataInfo, workers: int, index: int, block_rows: int) -> list[Block]:
    """Worker ``index``'s share of the data: whole shards when there are enough of them,
    else runs of rows; shares are contiguous, disjoint, cover every row, and balanced."""
    blocks = blocks_of(info, block_rows)
    if workers == 1:
        return blocks
    n = info.num_samples
    if n < workers:
        raise MemtuneError(f"{n} samples cannot be shared between {workers} workers")
    units: list[list[Block]] = []
    for block in blocks:
        if units and units[-1][0].shard is block.shard:
            units[-1].append(block)
        else:
            units.append([block])
    if len(units) < workers:  # fewer shards than workers: split rows
        units = [[b] for b in blocks_of(info, max(1, n // workers))]
    cuts = balanced_cuts([sum(b.rows for b in unit) for unit in units], workers)
    return [b for unit in units[cuts[index] : cuts[index + 1]] for b in unit]


def balanced_cuts(sizes: list[int], parts: int) -> list[int]:
    """Cut ``sizes`` (in order) into ``parts`` non-empty runs of nearly equal sums; returns
    the ``parts + 1`` boundaries."""
    if len(sizes) < parts:
        raise ValueError(f"{len(sizes)} units cannot make {parts} parts")
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    cuts = [0]
    for j in range(1, parts):
        goal = total * j / parts
        k = int(np.argmin(np.abs(ends - goal))) + 1  # cut after the unit nearest the goal
        k = max(k, cuts[-1] + 1)  # every part non-empty ...
        k = min(k, len(sizes) - (parts - j))  # ... and room left for the parts after it
        cuts.append(k)
    cuts.append(len(sizes))
    return cuts


def row_range(arrays: Arrays, lo: int, hi: int | None = None) -> Arrays:
    return {k: v[lo:hi] for k, v in arrays.items()}


def bucket_columns(padding: Side, length: int) -> slice:
    """The columns of a full-length padded row that hold every token of a row no longer
    than ``length``: the last ones with ``pre`` padding, the first with ``post``."""
    return slice(-length, None) if padding == "pre" else slice(0, length)


def _take(arrays: Arrays, rows: np.ndarray, cut: Cut = None) -> Arrays:
    """Rows of every array: a view for an ascending run (unshuffled), else a copy; ``cut``
    keeps only some columns of one array (copying just those)."""
    n = rows.shape[0]
    if n and int(rows[-1]) - int(rows[0]) + 1 == n and np.all(np.diff(rows) == 1):
        run = slice(int(rows[0]), int(rows[0]) + n)
        return {k: v[run, cut[1]] if cut and k == cut[0] else v[run] for k, v in arrays.items()}
    return {k: _rows(v, rows, k, cut) for k, v in arrays.items()}


def _rows(values: np.ndarray, rows: np.ndarray, name: str, cut: Cut) -> np.ndarray:
    return values[rows, cut[1]] if cut and name == cut[0] else values[rows]


Pieces = list[tuple[int, np.ndarray]]


@dataclass(frozen=True)
class Bucketing:
    """Length buckets of one input: its name, boundaries, and each bucket's batch."""

    feed: str
    column: str
    lengths: tuple[int, ...]
    sizes: tuple[int, ...]


class BucketedBatches:
    """Batches of one length bucket each, cut to that bucket's length (``data.buckets``).

    Rows are held padded to the full length — the in-memory arrays, or the streaming block
    cache — and a batch copies only the bucket's last (``pre`` padding) or first (``post``)
    columns of the bucketed input, which hold every token of a row no longer than that.
    """

    def __init__(
        self,
        gather: Callable[[Pieces, Cut], tuple[Arrays, Arrays]],
        order: BucketOrder,
        bucketing: Bucketing,
        padding: Side,
        read_ahead: Callable[[int], None] | None = None,
    ) -> None:
        self.gather, self.order, self.bucketing = gather, order, bucketing
        self.padding = padding
        self.read_ahead = read_ahead
        self.num_samples = order.total
        self.failure: MemtuneError | None = None

    @property
    def batch_size(self) -> int:
        return self.order.batch_size

    @property
    def sizes(self) -> list[int]:
        return list(self.order.sizes)

    @property
    def position(self) -> int:
        return self.order.start

    def __len__(self) -> int:
        return len(self.order)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def bucket_of(self, i: int) -> int:
        return self.order.bucket_of(i)

    def step_bucket(self, i: int) -> tuple[int, int]:
        """Batch ``i`` of this epoch's listing: its bucket's length and its rows."""
        if not 0 <= i < len(self):
            return 0, 0
        batch = self.order.batches[i]
        return self.bucketing.lengths[batch.bucket], batch.rows

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None:
        """Every bucket's batch scaled with the longest's (a resumed run at a smaller batch)."""
        if start:
            raise MemtuneError("a bucketed run resizes one bucket at a time (shrink)")
        self.order.epoch = epoch
        self.order.scale(batch_size)

    def shrink(self, bucket: int, size: int, *, epoch: int, done_batches: int) -> int:
        """Bucket ``bucket``'s batch becomes ``size`` after ``done_batches`` trained batches
        of ``epoch``; returns the samples of the epoch already trained."""
        return self.order.shrink(bucket, size, epoch=epoch, done_batches=done_batches)

    def __getitem__(self, i: int) -> tuple[Arrays, Arrays]:
        pieces = self.order.batch(i)
        following = self.order.block_after(i)
        if following is not None and self.read_ahead is not None:
            self.read_ahead(following)
        length = self.bucketing.lengths[self.order.bucket_of(i)]
        return self.gather(pieces, (self.bucketing.feed, bucket_columns(self.padding, length)))

    def __iter__(self) -> Iterator[tuple[Arrays, Arrays]]:
        for i in range(len(self)):
            yield self[i]


def row_buckets(layout: Layout, blocks: list[Block], bucketing: Bucketing) -> np.ndarray:
    """The bucket of every row of ``blocks``, in order, from the scan's lengths."""
    info = layout.info
    lengths = info.column(bucketing.column).lengths
    if lengths is None:
        raise MemtuneError(f"column {bucketing.column!r} holds no sequences to bucket")
    pad_length = next(f.shape[0] for f in layout.footprint.inputs if f.name == bucketing.feed)
    firsts = first_rows(info, blocks)
    parts = [lengths[first : first + b.rows] for first, b in zip(firsts, blocks, strict=True)]
    joined = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    ids = bucket_ids(joined, pad_length, list(bucketing.lengths))
    beyond = np.flatnonzero(ids >= len(bucketing.lengths))
    if beyond.size:
        raise MemtuneError(
            f"column {bucketing.column!r}: a row {int(joined[beyond[0]])} long is past the "
            f"longest bucket ({bucketing.lengths[-1]})"
        )
    return ids


def first_rows(info: DataInfo, blocks: list[Block]) -> list[int]:
    """Each block's first row as a row of the whole data (shards in order)."""
    offsets = np.concatenate([[0], np.cumsum(info.shard_rows)[:-1]])
    index = {id(shard): k for k, shard in enumerate(info.source.shards)}
    return [int(offsets[index[id(b.shard)]]) + b.start for b in blocks]


def bucketed_in_memory(
    layout: Layout,
    blocks: list[Block],
    inputs: Arrays,
    targets: Arrays,
    bucketing: Bucketing,
    *,
    shuffle: bool = False,
    seed: int | None = None,
) -> BucketedBatches:
    """Bucketed batches over the rows of ``blocks`` already padded in memory (``inputs``,
    ``targets``: their rows in order, possibly only the first of them)."""
    n = next(iter(inputs.values())).shape[0]
    ids = row_buckets(layout, blocks, bucketing)[:n]
    order = BucketOrder([n], ids, list(bucketing.sizes), shuffle=shuffle, seed=seed)

    def gather(pieces: Pieces, cut: Cut) -> tuple[Arrays, Arrays]:
        ((_, rows),) = pieces
        return _take(inputs, rows, cut), _take(targets, rows)

    return BucketedBatches(gather, order, bucketing, layout.padding)


def bucketed_streaming(
    layout: Layout,
    blocks: list[Block],
    bucketing: Bucketing,
    *,
    shuffle: bool = False,
    seed: int | None = None,
) -> BucketedBatches:
    """Bucketed batches read lazily: each window of two blocks' rows (the largest bucket
    batch is at most a block) is batched by bucket; the cache holds a window, the blocks
    read ahead and one spare."""
    block_rows = max((b.rows for b in blocks), default=1)
    smallest = min((b.rows for b in blocks), default=1)
    window = 2 * block_rows
    ids = row_buckets(layout, blocks, bucketing)
    order = BucketOrder(
        [b.rows for b in blocks],
        ids,
        list(bucketing.sizes),
        shuffle=shuffle,
        seed=seed,
        window_rows=window,
    )
    source = StreamingBatches(
        layout, blocks, 1, cache_blocks=math.ceil(window / max(smallest, 1)) + 3
    )
    return BucketedBatches(
        source._gather, order, bucketing, layout.padding, read_ahead=source._read_ahead
    )


def split_blocks(blocks: list[Block], fraction: float) -> tuple[list[Block], list[Block]]:
    """Hold out whole trailing shards holding at least ``fraction`` of the rows."""
    shards: list[list[Block]] = []
    for block in blocks:
        if shards and shards[-1][0].shard is block.shard:
            shards[-1].append(block)
        else:
            shards.append([block])
    if len(shards) < 2:
        raise MemtuneError(
            "--validation-split in streaming mode holds out whole shards, and the data has only "
            "one; use --validation-data, or in-memory mode"
        )
    total = sum(b.rows for b in blocks)
    held: list[list[Block]] = []
    while sum(b.rows for s in held for b in s) < fraction * total and len(shards) > 1:
        held.insert(0, shards.pop())
    return [b for s in shards for b in s], [b for s in held for b in s]


def blocks_of(info: DataInfo, block_rows: int = BLOCK_ROWS) -> list[Block]:
    return make_blocks(info.source, info.shard_rows, block_rows)


def batches(
    layout: Layout,
    batch_size: int,
    *,
    mode: str = "streaming",
    shuffle: bool = False,
    seed: int | None = None,
    bucketing: Bucketing | None = None,
) -> Iterator[tuple[Arrays, Arrays]]:
    """One epoch of ``(inputs, targets)`` numpy batches, dicts keyed by name; with
    ``bucketing``, each batch one bucket's rows at that bucket's batch and length."""
    largest = max(bucketing.sizes) if bucketing else batch_size
    blocks = blocks_of(layout.info, max(BLOCK_ROWS, largest))
    if mode not in ("streaming", "in-memory"):
        raise MemtuneError(f"mode {mode!r}: expected in-memory or streaming")
    if mode == "streaming":
        if bucketing is not None:
            yield from bucketed_streaming(layout, blocks, bucketing, shuffle=shuffle, seed=seed)
            return
        yield from StreamingBatches(layout, blocks, batch_size, shuffle=shuffle, seed=seed)
        return
    inputs, targets = load_in_memory(layout, blocks)
    if bucketing is not None:
        yield from bucketed_in_memory(
            layout, blocks, inputs, targets, bucketing, shuffle=shuffle, seed=seed
        )
        return
    yield from InMemoryBatches(inputs, targets, batch_size, shuffle=shuffle, seed=seed)
