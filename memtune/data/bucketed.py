"""Bucketed batch sources: each batch one length bucket's rows, cut to that bucket's length,
in memory or streamed (the buckets and their order: :mod:`memtune.data.buckets`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from memtune.core.errors import MemtuneError
from memtune.data.batch_sources import StreamingBatches
from memtune.data.blocks import Block
from memtune.data.buckets import BucketOrder, bucket_ids
from memtune.data.layout import Arrays, Cut, Layout, Pieces, bucket_columns, take
from memtune.data.padding import Side
from memtune.data.scan import DataInfo


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

    ``weighted``: training batches also give per-row loss weights (:meth:`row_weights`).
    """

    def __init__(
        self,
        gather: Callable[[Pieces, Cut], tuple[Arrays, Arrays]],
        order: BucketOrder,
        bucketing: Bucketing,
        padding: Side,
        read_ahead: Callable[[int], None] | None = None,
        *,
        weighted: bool = False,
    ) -> None:
        self.gather, self.order, self.bucketing = gather, order, bucketing
        self.padding = padding
        self.read_ahead = read_ahead
        self.weighted = weighted
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

    def row_weights(self, i: int) -> np.ndarray:
        """Batch ``i``'s per-row loss weights, n / the planned longest bucket's batch (n: the
        batch's rows). Keras divides a batch's loss by its rows, so a row of a bucket batch
        of 1,920 would weigh an eighth of one in a batch of 240; weighted, every row weighs
        1 / that batch, as without buckets."""
        rows = self.order.batches[i].rows
        return np.full(rows, rows / self.bucketing.sizes[-1], np.float32)

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
    weighted: bool = False,
) -> BucketedBatches:
    """Bucketed batches over the rows of ``blocks`` already padded in memory (``inputs``,
    ``targets``: their rows in order, possibly only the first of them)."""
    n = next(iter(inputs.values())).shape[0]
    ids = row_buckets(layout, blocks, bucketing)[:n]
    order = BucketOrder([n], ids, list(bucketing.sizes), shuffle=shuffle, seed=seed)

    def gather(pieces: Pieces, cut: Cut) -> tuple[Arrays, Arrays]:
        ((_, rows),) = pieces
        return take(inputs, rows, cut), take(targets, rows)

    return BucketedBatches(gather, order, bucketing, layout.padding, weighted=weighted)


def bucketed_streaming(
    layout: Layout,
    blocks: list[Block],
    bucketing: Bucketing,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    weighted: bool = False,
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
        source._gather,
        order,
        bucketing,
        layout.padding,
        read_ahead=source._read_ahead,
        weighted=weighted,
    )
