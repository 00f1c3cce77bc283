"""Batch sources: what training reads — ``len`` batches per epoch, any batch by index,
every sample exactly once per epoch, reshuffled per epoch.

* In memory: batches gathered from the padded arrays.
* Streaming: batch i is computed from an epoch's order (:mod:`memtune.data.order`), so any
  worker can build any batch; a small cache of padded blocks keeps memory flat however large
  the data grows.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from memtune.core.errors import MemtuneError
from memtune.data.blocks import Block
from memtune.data.layout import Arrays, Cut, Layout, gather_rows, row_range, take
from memtune.data.order import EpochOrder
from memtune.data.shares import even_bounds


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
            return take(inputs, rows, cut), take(targets, rows)
        return (
            {
                k: np.concatenate([gather_rows(p[0][k], r, k, cut) for p, r in parts])
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
        return take(self.inputs, rows), take(self.targets, rows)

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
