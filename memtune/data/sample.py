"""Real rows for a trial: what a few training steps must see to measure what ``fit`` will.

Synthetic batches misjudge in both directions (all-zero token ids make Embedding gradients
and Conv1D work unlike the user's data), so a trial trains on the user's own rows, padded by
the same :class:`~memtune.data.pipeline.Layout` as ``fit``, the longest sequence of every
sequence column included (the worst row is measured, not hoped for).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memtune.constants import BLOCK_ROWS
from memtune.data.blocks import Block
from memtune.data.pipeline import Arrays, Layout, _release_arrow_memory, blocks_of


def trial_rows(layout: Layout, batch_size: int) -> tuple[Arrays, Arrays]:
    """``batch_size`` real rows: the data's first rows (repeated if it has fewer), then each
    sequence column's longest row written over the first rows."""
    blocks = blocks_of(layout.info, max(BLOCK_ROWS, batch_size))
    inputs, targets = layout.empty(batch_size)
    at = 0
    while at < batch_size:
        for block in blocks:
            part = layout.block(block)
            n = min(block.rows, batch_size - at)
            _copy(part, (inputs, targets), 0, at, n)
            at += n
            if at >= batch_size:
                break
    row = 0
    for feed in layout.footprint.inputs:
        if not feed.sequence or row >= batch_size:
            continue
        (column,) = feed.columns
        shard, index = layout.info.column(column).longest_at
        holder = _block_holding(blocks, layout, shard, index)
        if holder is not None:
            _copy(layout.block(holder), (inputs, targets), index - holder.start, row, 1)
            row += 1
    _release_arrow_memory()
    return inputs, targets


def write_trial_rows(layout: Layout, batch_size: int, path: Path) -> Path:
    """:func:`trial_rows` saved as ``.npz`` (``in:NAME`` / ``out:NAME``) for a trial child."""
    inputs, targets = trial_rows(layout, batch_size)
    arrays = {f"in:{k}": v for k, v in inputs.items()} | {f"out:{k}": v for k, v in targets.items()}
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path


def _copy(src: tuple[Arrays, Arrays], dst: tuple[Arrays, Arrays], lo: int, at: int, n: int) -> None:
    for s, d in zip(src, dst, strict=True):
        for name, values in s.items():
            d[name][at : at + n] = values[lo : lo + n]


def _block_holding(blocks: list[Block], layout: Layout, shard: int, row: int) -> Block | None:
    wanted = layout.info.source.shards[shard]
    for block in blocks:
        if block.shard is wanted and block.start <= row < block.start + block.rows:
            return block
    return None
