"""Real rows for a trial: what a few training steps must see to measure what ``fit`` will.

Synthetic batches misjudge in both directions (all-zero token ids make Embedding gradients
and Conv1D work unlike the user's data), so a trial trains on the user's own rows, padded by
the same :class:`~memtune.data.layout.Layout` as ``fit``, the longest sequence of every
sequence column included (the worst row is measured, not hoped for).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memtune.core.constants import BLOCK_ROWS
from memtune.data.blocks import Block
from memtune.data.bucketed import first_rows
from memtune.data.layout import Arrays, Layout, _release_arrow_memory, bucket_columns
from memtune.data.shares import blocks_of


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


def short_rows(layout: Layout, batch_size: int, feed: str, length: int) -> tuple[Arrays, Arrays]:
    """``batch_size`` real rows no longer than ``length`` in input ``feed`` (repeated if
    fewer), the longest of them included, with ``feed`` cut to ``length``: what a batch of
    the bucket at ``length`` holds."""
    spec = next(f for f in layout.footprint.inputs if f.name == feed)
    (column,) = spec.columns
    found = layout.info.column(column).lengths
    assert found is not None
    lengths = np.minimum(found.astype(np.int64), spec.shape[0])
    fits = np.flatnonzero(lengths <= length)
    if fits.size == 0:
        fits = np.array([int(np.argmin(lengths))])
    longest = fits[int(np.argmax(lengths[fits]))]
    wanted = np.resize(fits[:batch_size], batch_size)
    wanted[0] = longest
    blocks = blocks_of(layout.info, BLOCK_ROWS)
    inputs, targets = layout.empty(batch_size)
    for block, first in zip(blocks, first_rows(layout.info, blocks), strict=True):
        mine = np.flatnonzero((wanted >= first) & (wanted < first + block.rows))
        if mine.size == 0:
            continue
        part = layout.block(block)
        for s, d in zip(part, (inputs, targets), strict=True):
            for name, values in s.items():
                d[name][mine] = values[wanted[mine] - first]
    _release_arrow_memory()
    inputs[feed] = np.ascontiguousarray(inputs[feed][:, bucket_columns(layout.padding, length)])
    return inputs, targets


def write_trial_rows(
    layout: Layout, batch_size: int, path: Path, *, bucket: tuple[str, int] | None = None
) -> Path:
    """:func:`trial_rows` saved as ``.npz`` (``in:NAME`` / ``out:NAME``) for a trial child;
    ``bucket`` (input, length): :func:`short_rows` instead."""
    if bucket is None:
        inputs, targets = trial_rows(layout, batch_size)
    else:
        inputs, targets = short_rows(layout, batch_size, *bucket)
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
