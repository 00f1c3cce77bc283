"""Cutting data into shares: blocks of a dataset, a worker's share under MultiWorkerMirrored,
whole trailing shards held out for validation, batches of equal size."""

from __future__ import annotations

import numpy as np

from memtune.core.constants import BLOCK_ROWS
from memtune.core.errors import MemtuneError
from memtune.data.blocks import Block, make_blocks
from memtune.data.scan import DataInfo


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
