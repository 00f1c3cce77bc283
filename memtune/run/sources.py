"""The batch sources ``fit`` trains and validates on, as the plan says: in memory or
streaming, bucketed or not, this worker's share under a multi-worker strategy, a held-out
split or ``--validation-data``, or the user's tf.data pipeline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from memtune.core.constants import BLOCK_ROWS
from memtune.core.errors import MemtuneError
from memtune.core.options import Options
from memtune.core.plan import Plan
from memtune.data.arrays import ArrayBatches, array_sources
from memtune.data.batch_sources import BatchSource, EvenBatches, InMemoryBatches, StreamingBatches
from memtune.data.blocks import Block
from memtune.data.bucketed import Bucketing, bucketed_in_memory, bucketed_streaming
from memtune.data.decoded import decode_all, decode_to_cache
from memtune.data.footprint import Footprint
from memtune.data.images import folder_of
from memtune.data.layout import Layout, layout_for, load_in_memory, row_range
from memtune.data.scan import DataInfo
from memtune.data.shares import blocks_of, split_blocks, worker_blocks
from memtune.data.tfdata import DatasetBatches, dataset_source
from memtune.run.distribute import Topology
from memtune.run.feed import KerasFeed


@dataclass(frozen=True)
class Sources:
    """What ``fit`` reads: the training source and ``model.fit``'s validation keywords."""

    train: BatchSource
    validation: dict[str, Any]


@dataclass(frozen=True)
class Order:
    """How training's batches are drawn: reshuffled per epoch, seeded."""

    shuffle: bool = True
    seed: int | None = None


def sources(
    plan: Plan,
    options: Options,
    info: DataInfo,
    fp: Footprint,
    *,
    val_layout: Layout | DatasetBatches | ArrayBatches | None,
    feed: KerasFeed,
    order: Order,
    topology: Topology,
) -> Sources:
    """The sources for this plan. Under a strategy the training source's batch is this
    process's share of the global batch (every local replica's); a multi-worker source
    holds this worker's share of the data only."""
    batch = plan.batch_size * topology.local_replicas
    split = options.validation_split if val_layout is None else None
    if info.source.kind == "dataset":  # decoded once: every epoch trains from arrays
        info = _decoded_once(info, fp, plan, batch)
    if info.source.kind == "arrays":
        train, held = _arrays(info, fp, batch, split, order, topology)
        return _with_validation(train, held, plan, val_layout, feed, (batch, BLOCK_ROWS))
    if info.source.kind == "dataset":
        if split:  # the folder could not be decoded once: its rows have no last ones to hold out
            raise MemtuneError(
                f"--validation-split: {info.source.label} streams undecoded (memtune's cache "
                "has no disk room for its decoded images); give --validation-data FOLDER"
            )
        if topology.active:
            raise MemtuneError("--strategy with a tf.data pipeline as DATA is not supported yet")
        stream = dataset_source(info, fp, options, plan.batch_size)
        return Sources(stream, _validation(plan, val_layout, feed, plan.batch_size, BLOCK_ROWS))
    layout = layout_for(info, fp, options)
    bucketing = bucketing_of(plan, fp)
    block_rows = max(batch, BLOCK_ROWS, *(bucketing.sizes if bucketing else ()))
    if topology.workers > 1:
        return Sources(_worker_share(plan, info, layout, batch, block_rows, order, topology), {})
    blocks = blocks_of(info, block_rows)
    if plan.mode == "in-memory":
        train, held = _in_memory(layout, blocks, batch, bucketing, split, order)
    else:
        train, held = _streaming(layout, blocks, batch, bucketing, split, order)
    return _with_validation(train, held, plan, val_layout, feed, (batch, block_rows))


def _decoded_once(info: DataInfo, fp: Footprint, plan: Plan, batch: int) -> DataInfo:
    """A pipeline decoded into memory when the plan holds it there; an image folder that
    streams decoded into memtune's cache and memory-mapped, where the disk has room. Else
    the pipeline as it is, read a batch at a time every epoch."""
    if plan.mode == "in-memory":
        return decode_all(info, fp)
    if folder_of(info) is not None:  # an image folder, not the caller's pipeline
        return decode_to_cache(info, fp, batch) or info
    return info


def _with_validation(
    train: BatchSource,
    held: BatchSource | None,
    plan: Plan,
    val_layout: Layout | DatasetBatches | ArrayBatches | None,
    feed: KerasFeed,
    sizes: tuple[int, int],
) -> Sources:
    """The training source with the held-out split, or ``--validation-data``, beside it;
    ``sizes``: the batch and the block rows a validation stream is read in."""
    if held is not None:
        return Sources(train, {"validation_data": feed.stream(held)})
    return Sources(train, _validation(plan, val_layout, feed, *sizes))


def _validation(
    plan: Plan,
    val_layout: Layout | DatasetBatches | ArrayBatches | None,
    feed: KerasFeed,
    batch: int,
    block_rows: int,
) -> dict[str, Any]:
    """``model.fit``'s keywords for ``--validation-data``, fed as planned."""
    if val_layout is None:
        return {}
    if isinstance(val_layout, DatasetBatches):  # a pipeline, rebatched and padded as planned
        return {"validation_data": val_layout.as_dataset(feed.pair)}
    if isinstance(val_layout, ArrayBatches):
        return {"validation_data": feed.stream(val_layout)}
    return {"validation_data": feed.stream(_validation_data(plan, val_layout, batch, block_rows))}


def _arrays(
    info: DataInfo,
    fp: Footprint,
    batch: int,
    split: float | None,
    order: Order,
    topology: Topology,
) -> tuple[BatchSource, BatchSource | None]:
    """N-D arrays batched where they are; a split holds out the last rows."""
    if topology.workers > 1:
        raise MemtuneError("--strategy multiworker with in-memory arrays is not supported yet")
    training = int(info.num_samples * (1 - split)) if split else info.num_samples
    return array_sources(info, fp, batch, training=training, shuffle=order.shuffle, seed=order.seed)


def bucketing_of(plan: Plan, fp: Footprint) -> Bucketing | None:
    """The plan's length buckets as the pipeline takes them (None: not bucketed)."""
    if not plan.buckets:
        return None
    feed = next(f for f in fp.inputs if f.flexible)
    return Bucketing(
        feed.name,
        feed.columns[0],
        tuple(b.length for b in plan.buckets),
        tuple(b.batch_size for b in plan.buckets),
    )


def _worker_share(
    plan: Plan,
    info: DataInfo,
    layout: Layout,
    batch: int,
    block_rows: int,
    order: Order,
    topology: Topology,
) -> BatchSource:
    """This worker's share, cut into as many steps as the largest share takes."""
    workers, index = topology.workers, topology.worker_index
    blocks = worker_blocks(info, workers, index, block_rows)
    shares = [
        sum(b.rows for b in worker_blocks(info, workers, k, block_rows)) for k in range(workers)
    ]
    steps = max(math.ceil(n / batch) for n in shares)
    mine = (
        InMemoryBatches(
            *load_in_memory(layout, blocks), batch, shuffle=order.shuffle, seed=order.seed
        )
        if plan.mode == "in-memory"
        else StreamingBatches(layout, blocks, batch, shuffle=order.shuffle, seed=order.seed)
    )
    return EvenBatches(mine, steps)


def _in_memory(
    layout: Layout,
    blocks: list[Block],
    batch: int,
    bucketing: Bucketing | None,
    split: float | None,
    order: Order,
) -> tuple[BatchSource, BatchSource | None]:
    """The padded rows in memory; a validation split holds out the last rows, as Keras's
    ``validation_split`` takes them."""
    inputs, targets = load_in_memory(layout, blocks)
    n = cut = layout.info.num_samples
    if split:
        cut = int(n * (1 - split))
    train_in, train_out = row_range(inputs, 0, cut), row_range(targets, 0, cut)
    train: BatchSource = (
        bucketed_in_memory(
            layout,
            blocks,
            train_in,
            train_out,
            bucketing,
            shuffle=order.shuffle,
            seed=order.seed,
            weighted=True,
        )
        if bucketing is not None
        else InMemoryBatches(train_in, train_out, batch, shuffle=order.shuffle, seed=order.seed)
    )
    held = (
        InMemoryBatches(row_range(inputs, cut), row_range(targets, cut), batch) if split else None
    )
    return train, held


def _streaming(
    layout: Layout,
    blocks: list[Block],
    batch: int,
    bucketing: Bucketing | None,
    split: float | None,
    order: Order,
) -> tuple[BatchSource, BatchSource | None]:
    """Blocks read lazily; a validation split holds out whole trailing shards."""
    held_blocks: list[Block] = []
    if split:
        blocks, held_blocks = split_blocks(blocks, split)
    train: BatchSource = (
        bucketed_streaming(
            layout, blocks, bucketing, shuffle=order.shuffle, seed=order.seed, weighted=True
        )
        if bucketing is not None
        else StreamingBatches(layout, blocks, batch, shuffle=order.shuffle, seed=order.seed)
    )
    held = StreamingBatches(layout, held_blocks, batch) if held_blocks else None
    return train, held


def _validation_data(plan: Plan, val_layout: Layout, batch: int, block_rows: int) -> BatchSource:
    """``--validation-data``, fed and padded exactly like the training data."""
    val_blocks = blocks_of(val_layout.info, block_rows)
    if plan.mode == "in-memory":
        return InMemoryBatches(*load_in_memory(val_layout, val_blocks), batch)
    return StreamingBatches(val_layout, val_blocks, batch)
