"""How rows become arrays: the feeds and padding sides (:class:`Layout`), padding blocks
straight into preallocated arrays (in memory: the padded dataset plus one block, never a
second copy), and the row gathers every batch source shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memtune.core.errors import MemtuneError
from memtune.core.options import Options
from memtune.data.blocks import Block, read_block
from memtune.data.cells import Ragged
from memtune.data.footprint import Feed, Footprint
from memtune.data.padding import Side, pad
from memtune.data.scan import DataInfo
from memtune.data.sources import column_values

Arrays = dict[str, np.ndarray]


Cut = tuple[str, slice] | None  # one array's columns to keep (a length bucket's), or all


@dataclass(frozen=True)
class Layout:
    """How rows become arrays: the feeds, and the padding sides."""

    footprint: Footprint
    info: DataInfo
    padding: Side = "pre"
    truncating: Side = "pre"

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for feed in self.footprint.feeds:
            seen.update(dict.fromkeys(feed.columns))
        return list(seen)

    def empty(self, n: int) -> tuple[Arrays, Arrays]:
        def make(feeds: tuple[Feed, ...]) -> Arrays:
            return {f.name: np.zeros((n, *f.shape), dtype=f.dtype) for f in feeds}

        return make(self.footprint.inputs), make(self.footprint.targets)

    def fill(self, block: Block, out: tuple[Arrays, Arrays], at: int) -> None:
        """Read ``block`` and write its padded rows into ``out`` from row ``at``."""
        chunk = read_block(block, self.columns)
        n = block.rows
        for feed in self.footprint.feeds:
            target = (out[0] if feed.role == "input" else out[1])[feed.name][at : at + n]
            if feed.sequence:
                (column,) = feed.columns
                ragged = column_values(
                    chunk, column, where=block.shard.label, first_row=block.start, sequence=True
                )
                assert isinstance(ragged, Ragged)
                view = target.reshape(n, feed.length)
                pad(
                    ragged,
                    feed.length,
                    padding=self.padding,
                    truncating=self.truncating,
                    out=view,
                )
            else:
                for j, column in enumerate(feed.columns):
                    values = column_values(
                        chunk,
                        column,
                        where=block.shard.label,
                        first_row=block.start,
                        sequence=False,
                    )
                    assert isinstance(values, np.ndarray)
                    _check_numbers(values, block, column, feed)
                    if target.ndim == 1:
                        target[...] = values
                    else:
                        target[:, j] = values

    def block(self, block: Block) -> tuple[Arrays, Arrays]:
        out = self.empty(block.rows)
        self.fill(block, out, 0)
        return out


def _check_numbers(values: np.ndarray, block: Block, column: str, feed: Feed) -> None:
    if feed.dtype == "int32" and values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            row = block.start + int(bad[0]) + 1
            raise MemtuneError(f"{block.shard.label}, row {row}: column {column!r} is empty")


def load_in_memory(layout: Layout, blocks: list[Block]) -> tuple[Arrays, Arrays]:
    """All rows of ``blocks`` padded into one contiguous array per feed."""
    n = sum(b.rows for b in blocks)
    out = layout.empty(n)
    at = 0
    for block in blocks:
        layout.fill(block, out, at)
        at += block.rows
    _release_arrow_memory()
    return out


def _release_arrow_memory() -> None:
    """Hand Arrow's cached buffers back to the system: training should not sit on them."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def row_range(arrays: Arrays, lo: int, hi: int | None = None) -> Arrays:
    return {k: v[lo:hi] for k, v in arrays.items()}


def bucket_columns(padding: Side, length: int) -> slice:
    """The columns of a full-length padded row that hold every token of a row no longer
    than ``length``: the last ones with ``pre`` padding, the first with ``post``."""
    return slice(-length, None) if padding == "pre" else slice(0, length)


def take(arrays: Arrays, rows: np.ndarray, cut: Cut = None) -> Arrays:
    """Rows of every array: a view for an ascending run (unshuffled), else a copy; ``cut``
    keeps only some columns of one array (copying just those)."""
    n = rows.shape[0]
    if n and int(rows[-1]) - int(rows[0]) + 1 == n and np.all(np.diff(rows) == 1):
        run = slice(int(rows[0]), int(rows[0]) + n)
        return {k: v[run, cut[1]] if cut and k == cut[0] else v[run] for k, v in arrays.items()}
    return {k: gather_rows(v, rows, k, cut) for k, v in arrays.items()}


def gather_rows(values: np.ndarray, rows: np.ndarray, name: str, cut: Cut) -> np.ndarray:
    return values[rows, cut[1]] if cut and name == cut[0] else values[rows]


Pieces = list[tuple[int, np.ndarray]]


def layout_for(info: DataInfo, fp: Footprint, options: Options) -> Layout:
    """How ``options`` pad ``info``'s rows into ``fp``'s feeds."""
    return Layout(fp, info, options.padding, options.truncating)  # type: ignore[arg-type]
