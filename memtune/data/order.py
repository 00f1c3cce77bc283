"""An epoch's order over blocks of rows: batch i of epoch e as (block, rows) pieces, a
seeded bijection onto every row (blocks permuted, rows permuted inside each: a bounded
shuffle), independent of the batch size so a run can change it mid-epoch."""

from __future__ import annotations

import math

import numpy as np

from memtune.core.errors import MemtuneError


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
