"""One epoch of numpy batches in either mode, bucketed or not: what ``memtune.batches``
gives and ``fit`` trains on."""

from __future__ import annotations

from collections.abc import Iterator

from memtune.core.constants import BLOCK_ROWS
from memtune.core.errors import MemtuneError
from memtune.data.batch_sources import InMemoryBatches, StreamingBatches
from memtune.data.bucketed import Bucketing, bucketed_in_memory, bucketed_streaming
from memtune.data.layout import Arrays, Layout, load_in_memory
from memtune.data.shares import blocks_of


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
