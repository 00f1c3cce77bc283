"""Blocks: the units a pipeline reads — a run of rows of one shard, addressable directly.

A CSV block is a byte range (found by one binary pass over the file), a Parquet block a row
group, an in-memory block a slice. Reading block k never re-reads blocks before it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pandas as pd

from memtune.core.constants import BLOCK_ROWS
from memtune.core.errors import MemtuneError
from memtune.data.sources import Shard, Source, one_line, shard_columns


@dataclass(frozen=True)
class Block:
    """``rows`` rows of ``shard`` starting at data row ``start`` (0-based)."""

    shard: Shard
    start: int
    rows: int
    header: tuple[str, ...]
    byte_range: tuple[int, int] | None = None  # CSV: [begin, end) in the file
    row_group: int | None = None  # Parquet


def _csv_blocks(
    shard: Shard, header: tuple[str, ...], block_rows: int, expected: int
) -> list[Block]:
    assert shard.path is not None
    blocks: list[Block] = []
    with open(shard.path, "rb") as f:
        f.readline()  # the header
        begin = f.tell()
        rows = start = 0
        while True:
            line = f.readline()
            if not line:
                break
            if line.strip():
                rows += 1
            if rows == block_rows:
                end = f.tell()
                blocks.append(Block(shard, start, rows, header, (begin, end)))
                begin, start, rows = end, start + rows, 0
        if rows:
            blocks.append(Block(shard, start, rows, header, (begin, f.tell())))
    if sum(b.rows for b in blocks) != expected:
        # Quoted line breaks inside cells: lines are not rows, so read the shard whole.
        return [Block(shard, 0, expected, header)]
    return blocks


def _parquet_blocks(shard: Shard, header: tuple[str, ...]) -> list[Block]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(shard.path).metadata
    blocks, start = [], 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if n:
            blocks.append(Block(shard, start, n, header, row_group=i))
        start += n
    return blocks


def make_blocks(
    source: Source, shard_rows: tuple[int, ...], block_rows: int = BLOCK_ROWS
) -> list[Block]:
    """Every non-empty shard cut into blocks of at most about ``block_rows`` rows, in order."""
    blocks: list[Block] = []
    for shard, rows in zip(source.shards, shard_rows, strict=True):
        if rows == 0:
            continue
        header = tuple(shard_columns(shard))
        if shard.kind == "csv":
            if rows <= block_rows:
                blocks.append(Block(shard, 0, rows, header))
            else:
                blocks.extend(_csv_blocks(shard, header, block_rows, rows))
        elif shard.kind == "parquet":
            blocks.extend(_parquet_blocks(shard, header))
        else:
            blocks.extend(
                Block(shard, s, min(block_rows, rows - s), header)
                for s in range(0, rows, block_rows)
            )
    return blocks


def read_block(block: Block, columns: list[str]) -> Any:
    """A block's rows of ``columns``: a DataFrame, or an Arrow table for Parquet."""
    shard = block.shard
    if shard.kind == "frame":
        assert shard.frame is not None
        return shard.frame.iloc[block.start : block.start + block.rows][columns]
    assert shard.path is not None
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(shard.path)
            if block.row_group is None:
                return file.read(columns=columns)
            return file.read_row_group(block.row_group, columns=columns)
        except FileNotFoundError:
            raise MemtuneError(
                f"{shard.path}: could not be read during training (No such file or directory);"
                " did the file change?"
            ) from None
        except (OSError, ValueError) as exc:
            raise MemtuneError(f"{shard.path}: not a readable Parquet file ({exc})") from None
    try:
        if block.byte_range is None:
            frame = pd.read_csv(shard.path, usecols=columns)
        else:
            begin, end = block.byte_range
            with open(shard.path, "rb") as f:
                f.seek(begin)
                raw = f.read(end - begin)
            frame = pd.read_csv(
                io.BytesIO(raw), header=None, names=list(block.header), usecols=columns
            )
    except OSError as exc:  # gone, or unreadable, since the scan read it
        raise MemtuneError(
            f"{shard.path}: could not be read during training ({exc.strerror or one_line(exc)});"
            " did the file change?"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise MemtuneError(f"{shard.path}: not a readable CSV file ({one_line(exc)})") from None
    if len(frame) != block.rows:
        raise MemtuneError(
            f"{shard.path}: expected {block.rows} rows from row {block.start + 1}, "
            f"read {len(frame)}; did the file change during training?"
        )
    return frame


@dataclass(frozen=True)
class WholeBlocks:
    """Parquet row groups, which a stream reads whole however small the batch: the fewest
    and most rows of one, and the most bytes decoding one takes (uncompressed, as Arrow
    holds it before padding). All zero when no shard is Parquet."""

    smallest_rows: int = 0
    largest_rows: int = 0
    largest_decoded_bytes: int = 0


def whole_blocks(source: Source) -> WholeBlocks:
    import pyarrow.parquet as pq

    rows: list[int] = []
    decoded = 0
    for shard in source.shards:
        if shard.kind != "parquet" or shard.path is None:
            continue
        try:
            meta = pq.ParquetFile(shard.path).metadata
        except (OSError, ValueError):
            continue  # the scan has already named an unreadable file
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            if group.num_rows:
                rows.append(group.num_rows)
                decoded = max(decoded, int(group.total_byte_size))
    return WholeBlocks(min(rows), max(rows), decoded) if rows else WholeBlocks()
