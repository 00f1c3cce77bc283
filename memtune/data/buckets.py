"""Length buckets: boundaries cut from the length histogram, and each epoch's bucketed batches.

A batch holds rows of one bucket only and is padded to that bucket's boundary, so short rows
stop paying for the longest. Rows are taken in windows of whole blocks (in memory: one
window of every row): each epoch permutes the windows and the rows inside each, cuts every
bucket's rows of a window into batches of its size (the last one of each bucket partial)
and shuffles the window's batches. Every sample is in exactly one batch per epoch, every
epoch has as many batches, and a batch never reaches outside its window, so streaming holds
a window of blocks however rare a bucket is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memtune.core.errors import MemtuneError

CANDIDATES = 256  # boundary candidates the search considers (quantiles of the lengths)


def clipped(lengths: np.ndarray, pad_length: int) -> np.ndarray:
    """Lengths as the padding sees them: truncated to ``pad_length``, and at least 1."""
    return np.clip(lengths.astype(np.int64), 1, pad_length)


def choose_boundaries(lengths: np.ndarray, pad_length: int, count: int) -> list[int]:
    """Up to ``count`` bucket lengths, ascending, that minimise the padded tokens of the
    rows (each padded to the first boundary at or above its length); the last boundary is
    the longest row (as truncated to ``pad_length``)."""
    if count < 1:
        raise MemtuneError(f"--buckets {count}: must be a positive integer or off")
    seen = clipped(lengths, pad_length)
    if seen.size == 0:
        return [pad_length]
    distinct = np.unique(seen)
    if distinct.size > CANDIDATES:  # quantiles keep the search small and the tail covered
        levels = np.quantile(seen, np.linspace(0, 1, CANDIDATES), method="higher")
        distinct = np.unique(np.append(levels.astype(np.int64), distinct[-1]))
    counts = np.bincount(np.searchsorted(distinct, seen), minlength=distinct.size)
    before = np.concatenate([[0], np.cumsum(counts)])  # rows below candidate j: before[j]
    m, k = distinct.size, min(count, distinct.size)
    # cost[j]: fewest tokens for the rows up to candidate j, j being the last boundary so far
    cost = distinct * before[1:].astype(np.float64)
    parents: list[np.ndarray] = []
    for _ in range(1, k):
        nxt, parent = np.full(m, np.inf), np.zeros(m, np.int64)
        for j in range(1, m):  # the newest bucket covers candidates i..j, i >= 1
            options = cost[:j] + distinct[j] * (before[j + 1] - before[1 : j + 1])
            i = int(np.argmin(options))
            nxt[j], parent[j] = options[i], i + 1
        cost = nxt
        parents.append(parent)
    bounds, j = [int(distinct[m - 1])], m - 1
    for parent in reversed(parents):
        j = int(parent[j]) - 1
        bounds.append(int(distinct[j]))
    return sorted(bounds)


@dataclass(frozen=True)
class LengthBuckets:
    """The buckets chosen for one input: which, where the boundaries are, how many rows."""

    feed: str
    column: str
    pad_length: int
    boundaries: tuple[int, ...]
    samples: tuple[int, ...]
    real_tokens: int

    @classmethod
    def cut(
        cls,
        feed: str,
        column: str,
        lengths: np.ndarray,
        pad_length: int,
        count: int,
        *,
        training: int | None = None,
    ) -> LengthBuckets:
        """Boundaries from every row's length; samples counted over the first
        ``training`` rows (the rest are held out for validation)."""
        bounds = choose_boundaries(lengths, pad_length, count)
        lengths = lengths[:training]
        ids = bucket_ids(lengths, pad_length, bounds)
        samples = np.bincount(ids, minlength=len(bounds))
        real = int(clipped(lengths, pad_length).sum())
        return cls(feed, column, pad_length, tuple(bounds), tuple(int(n) for n in samples), real)


def bucket_ids(lengths: np.ndarray, pad_length: int, boundaries: list[int]) -> np.ndarray:
    """Each row's bucket: the first boundary at or above its (truncated) length."""
    return np.searchsorted(np.asarray(boundaries), clipped(lengths, pad_length)).astype(np.int8)


@dataclass(frozen=True)
class BucketBatch:
    """One batch: its bucket and its rows as (block, rows in block) pieces."""

    bucket: int
    pieces: list[tuple[int, np.ndarray]]
    next_block: int | None  # the first block of the next window (read-ahead)

    @property
    def rows(self) -> int:
        return sum(len(r) for _, r in self.pieces)


class BucketOrder:
    """Batch i of epoch e → one bucket's rows; a bijection onto all rows, seeded.

    ``block_rows``: rows per block in storage order; ``buckets``: every row's bucket in the
    same order; ``sizes``: each bucket's batch. ``window_rows``: the least rows of whole
    consecutive blocks batched together (None: all of them).
    """

    def __init__(
        self,
        block_rows: list[int],
        buckets: np.ndarray,
        sizes: list[int],
        *,
        shuffle: bool,
        seed: int | None,
        window_rows: int | None = None,
    ) -> None:
        if any(s < 1 for s in sizes):
            raise MemtuneError(f"bucket batch sizes {sizes}: must be positive")
        self.block_rows = np.asarray(block_rows, dtype=np.int64)
        self.begins = np.concatenate([[0], np.cumsum(self.block_rows)[:-1]]).astype(np.int64)
        self.total = int(self.block_rows.sum())
        if buckets.shape[0] != self.total:
            raise MemtuneError(f"{buckets.shape[0]} row lengths for {self.total} rows")
        self.buckets = buckets
        self.sizes = list(sizes)
        self.shuffle = shuffle
        self.seed = 0 if seed is None else seed
        # Windows: runs of whole blocks in storage order holding at least ``window_rows``
        # (the epoch permutes the windows, and the rows inside each): the same windows every
        # epoch, so every epoch has the same number of batches.
        self.windows: list[list[int]] = [[]]
        held = 0
        for block, rows in enumerate(block_rows):
            if window_rows is not None and held >= window_rows:
                self.windows.append([])
                held = 0
            self.windows[-1].append(block)
            held += rows
        self.done: np.ndarray | None = None  # rows this epoch already trained (resumed)
        self.resume_epoch: int | None = None
        self.epoch = 0
        self.batches: list[BucketBatch] = []
        self.set_epoch(0)

    @property
    def batch_size(self) -> int:
        """The longest bucket's batch: the plan's ``batch_size``."""
        return self.sizes[-1]

    @property
    def start(self) -> int:
        """Rows of this epoch trained before a resize (0 for a whole epoch)."""
        resumed = self.done is not None and self.resume_epoch == self.epoch
        return int(self.done.sum()) if resumed and self.done is not None else 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.windows)) if self.shuffle else range(len(self.windows))
        skip = self.done if self.resume_epoch == epoch else None
        batches: list[BucketBatch] = []  # built aside, then swapped in whole
        for position, w in enumerate(order):
            blocks = self.windows[w]
            following = self.windows[order[position + 1]][0] if position + 1 < len(order) else None
            rows = np.concatenate(
                [int(self.begins[b]) + np.arange(int(self.block_rows[b])) for b in blocks]
            )
            if self.shuffle:
                rows = rows[rng.permutation(rows.shape[0])]
            if skip is not None:
                rows = rows[~skip[rows]]
            made = []
            for k, size in enumerate(self.sizes):
                mine = rows[self.buckets[rows] == k]
                for lo in range(0, mine.shape[0], size):
                    made.append(BucketBatch(k, self._pieces(mine[lo : lo + size]), following))
            if self.shuffle:
                made = [made[i] for i in rng.permutation(len(made))]
            batches.extend(made)
        self.batches = batches

    def _pieces(self, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Global rows as (block, sorted rows in block) pieces, blocks ascending."""
        rows = np.sort(rows)
        blocks = np.searchsorted(self.begins, rows, side="right") - 1
        cuts = np.flatnonzero(np.diff(blocks)) + 1
        return [
            (int(blocks[part[0]]), rows[part] - self.begins[blocks[part[0]]])
            for part in np.split(np.arange(rows.shape[0]), cuts)
            if part.size
        ]

    def batch(self, i: int) -> list[tuple[int, np.ndarray]]:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        return self.batches[i].pieces

    def bucket_of(self, i: int) -> int:
        return self.batches[i].bucket

    def block_after(self, i: int) -> int | None:
        return self.batches[i].next_block

    def shrink(self, bucket: int, size: int, *, epoch: int, done_batches: int) -> int:
        """``bucket``'s batch becomes ``size`` from batch ``done_batches`` of ``epoch`` on;
        the rows of the batches before it stay trained. Returns the rows trained."""
        trained = np.zeros(self.total, dtype=bool) if self.done is None else self.done
        if self.resume_epoch != epoch:
            trained = np.zeros(self.total, dtype=bool)
        for batch in self.batches[:done_batches]:
            for block, rows in batch.pieces:
                trained[self.begins[block] + rows] = True
        self.sizes[bucket] = size
        self.done, self.resume_epoch = trained, epoch
        self.set_epoch(epoch)
        return int(trained.sum())

    def scale(self, batch_size: int) -> None:
        """Every bucket's batch scaled so the longest bucket's becomes ``batch_size``."""
        ratio = batch_size / self.sizes[-1]
        self.sizes = [max(1, math.floor(s * ratio)) for s in self.sizes]
        self.sizes[-1] = batch_size
        self.set_epoch(self.epoch)
