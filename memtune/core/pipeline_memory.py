"""What the data pipeline holds beside training at a batch: the padded dataset in memory, or
the stream's cache of padded blocks and the row groups it decodes."""

from __future__ import annotations

import math
from typing import Literal

from memtune.core.constants import (
    BLOCK_ROWS,
    DECODE_FACTOR,
    INDEX_BYTES_PER_SAMPLE,
    STREAM_QUEUE_BATCHES,
    WORKERS,
)

Mode = Literal["in-memory", "streaming"]


def pipeline_bytes(
    mode: Mode,
    batch: int,
    *,
    num_samples: int,
    per_sample_bytes: int,
    with_queue: bool,
    whole_blocks: tuple[int, int, int] = (0, 0, 0),
    blocks: bool = True,
) -> int:
    """Host memory the data pipeline holds beside training at this batch.

    In-memory: the padded dataset and its shuffle index. Streaming: the cache of padded
    blocks (never more than the dataset): the blocks of the batches the builders are
    building, each batch's rows plus a block running on at its end, and the block read ahead
    (blocks no batch still to come reads are dropped; counted at the cache's capacity, a
    40,044-row stream was predicted 8.9 % over its fit). Parquet row groups are read whole:
    each batch builder and the read-ahead may be decoding one (at ``DECODE_FACTOR`` times its
    size, however small the group: an 8,192-row stream ran 8-16 % over a plan without it),
    and with row groups larger than a batch the cache holds as many of them as a batch spans
    plus three (``StreamingBatches.capacity``). A trial trains on rows handed to it, not
    through this reader, so the whole term is added to measured plans too; a measured
    curve leaves out the batch of rows a trial holds (:func:`memtune.estimate.runner._in_fit`),
    and a stream holds one such batch beside its cache, the one handed over while the next
    is built (with it, streaming-mlp-8k was predicted within 1.5 % of fit). ``with_queue``
    adds the prefetched batches, which a measured trial already includes and the analytic
    prior does not. ``blocks``: False for a stream that reads rows where they lie (memory-
    mapped arrays, a tf.data pipeline or an image folder): no cache of padded blocks, and
    a measured trial already holds what such a stream adds — each of its steps gathers a
    fresh copy of its rows, as the stream's builders do, and that copy is the batch handed
    over — so nothing is added to it (adding the hand-over, a .npy stream was predicted
    4-10 % over its fit; the analytic prior adds the builders' batches and the queue).
    """
    dataset = num_samples * per_sample_bytes
    queue = STREAM_QUEUE_BATCHES * batch * per_sample_bytes if with_queue else 0
    if mode == "in-memory":
        return dataset + num_samples * INDEX_BYTES_PER_SAMPLE + queue
    if not blocks:  # a trial's steps gather as fit's builders do: measured, nothing more
        builders = min(dataset, WORKERS * batch * per_sample_bytes) if with_queue else 0
        return builders + queue
    handed = 0 if with_queue else batch * per_sample_bytes
    smallest, largest, decoded = whole_blocks
    block = largest or max(BLOCK_ROWS, batch)  # a row group, or a block of CSV rows
    cache = (WORKERS * batch + (WORKERS + 1) * block) * per_sample_bytes
    if largest > max(BLOCK_ROWS, batch):
        held = (math.ceil(batch / max(smallest, 1)) + 3) * largest * per_sample_bytes
        cache = max(cache, held)
    decoding = (WORKERS + 1) * DECODE_FACTOR * decoded
    return min(dataset, cache) + decoding + queue + handed
