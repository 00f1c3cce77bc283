"""One streaming pass over a dataset: rows, columns, which hold sequences and how long."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from memtune.core.errors import MemtuneError
from memtune.data.cells import Ragged
from memtune.data.length_link import LengthLink
from memtune.data.sources import (
    Source,
    chunk_columns,
    column_values,
    is_sequence_column,
    open_source,
    read_chunks,
    shard_columns,
)
from memtune.data.values import ValueStats


@dataclass(frozen=True)
class ColumnInfo:
    """What one column holds across all shards."""

    name: str
    sequence: bool
    is_int: bool
    max_len: int  # longest sequence; 1 for scalars
    longest_at: tuple[int, int] = (0, 0)  # (shard, row in shard) of the longest sequence
    # Every row's sequence length, in shard and row order (sequence columns only): what
    # length buckets are cut from. 1-4 B a row.
    lengths: np.ndarray | None = field(default=None, compare=False, repr=False)
    # A fixed N-D sample (an image, a spectrogram): its shape, and its element type kept as
    # given where a feed can take it (uint8 images stay 1 B a value until the model casts)
    shape: tuple[int, ...] = ()
    item: str | None = None

    @property
    def dtype(self) -> str:
        if self.item is not None:
            return self.item
        return "int32" if self.is_int else "float32"

    @property
    def tensor(self) -> bool:
        return bool(self.shape)


@dataclass(frozen=True)
class DataInfo:
    """The shape of a dataset without its contents."""

    source: Source
    columns: dict[str, ColumnInfo]
    num_samples: int
    shard_rows: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, ValueStats] = field(default_factory=dict, compare=False, repr=False)
    # (sequence column, scalar column) → how the scalar depends on the sequence's length
    links: dict[tuple[str, str], LengthLink] = field(
        default_factory=dict, compare=False, repr=False
    )

    def column(self, name: str) -> ColumnInfo:
        return self.columns[name]

    def length_dependence(self, sequence: str, scalar: str) -> float:
        """The share of ``scalar``'s variation that ``sequence``'s length explains (0-1)."""
        link = self.links.get((sequence, scalar))
        return link.explained() if link is not None else 0.0


def scan(data: object) -> DataInfo:
    """Read every shard once, in chunks, to learn rows, column kinds and longest sequences."""
    source = open_source(data)
    header: list[str] | None = None
    infos: dict[str, ColumnInfo] = {}
    shard_rows: list[int] = []
    warnings: list[str] = []
    # Per column, each chunk's lengths (a scalar chunk: its row count, each row 1 long).
    lengths: dict[str, list[np.ndarray | int]] = {}
    stats: dict[str, ValueStats] = {}
    links: dict[tuple[str, str], LengthLink] = {}
    for index, shard in enumerate(source.shards):
        names = shard_columns(shard)
        if not names:
            warnings.append(f"{shard.label}: empty shard skipped")
            shard_rows.append(0)
            continue
        if header is None:
            header = names
        else:
            missing = [c for c in header if c not in names]
            if missing:
                raise MemtuneError(
                    f"shard {shard.label} has no column {missing[0]!r} (the first shard has it)"
                )
        rows = 0
        for first_row, chunk in read_chunks(shard, header):
            n = len(chunk) if hasattr(chunk, "iloc") else chunk.num_rows
            rows += n
            if n == 0:
                continue  # a header alone says nothing of the columns' kinds
            seen: dict[str, np.ndarray | Ragged] = {}
            for name in chunk_columns(chunk):
                info = infos.get(name)
                sequence = is_sequence_column(chunk, name) or (info is not None and info.sequence)
                values = column_values(
                    chunk, name, where=shard.label, first_row=first_row, sequence=sequence
                )
                infos[name] = _merge(info, name, values, (index, first_row))
                stats[name] = stats.get(name, ValueStats()).add(values, index, first_row)
                lengths.setdefault(name, []).append(
                    _compact(values.lengths) if isinstance(values, Ragged) else len(values)
                )
                seen[name] = values
            _link(links, seen)
        if rows == 0:
            warnings.append(f"{shard.label}: empty shard skipped")
        shard_rows.append(rows)
    if header is None or sum(shard_rows) == 0:
        raise MemtuneError(f"data {source.label!r} holds no rows")
    # A column first seen as scalars and later as lists is a sequence column everywhere.
    columns = {
        name: replace(infos[name], lengths=_joined(lengths[name]))
        if infos[name].sequence
        else infos[name]
        for name in header
    }
    return DataInfo(source, columns, sum(shard_rows), tuple(shard_rows), warnings, stats, links)


def _link(links: dict[tuple[str, str], LengthLink], chunk: dict[str, np.ndarray | Ragged]) -> None:
    """One chunk's rows added to every (sequence column, numeric scalar column) link."""
    for name, values in chunk.items():
        if not isinstance(values, Ragged):
            continue
        for other, scalar in chunk.items():
            if isinstance(scalar, np.ndarray) and scalar.ndim == 1 and scalar.dtype.kind in "iufb":
                links.setdefault((name, other), LengthLink()).add(values.lengths, scalar)


def _compact(lengths: np.ndarray) -> np.ndarray:
    """Lengths in the smallest unsigned type that holds them (1-4 B a row)."""
    top = int(lengths.max()) if lengths.size else 0
    kind = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    return lengths.astype(kind)


def _joined(parts: list[np.ndarray | int]) -> np.ndarray:
    arrays = [p if isinstance(p, np.ndarray) else np.ones(p, np.uint8) for p in parts]
    return _compact(np.concatenate(arrays)) if arrays else np.zeros(0, np.uint8)


def _merge(
    info: ColumnInfo | None, name: str, values: np.ndarray | Ragged, at: tuple[int, int]
) -> ColumnInfo:
    """``info`` updated with one chunk's ``values``, whose first row is ``at``."""
    if isinstance(values, Ragged):
        row = int(values.lengths.argmax()) if len(values) else 0
        longest = int(values.lengths[row]) if len(values) else 0
        new = ColumnInfo(name, True, values.is_int, longest, (at[0], at[1] + row))
    else:
        is_int = values.dtype.kind in "iub"
        new = ColumnInfo(name, False, is_int, 1, at)
    if info is None:
        return new
    keep = new if new.max_len > info.max_len else info
    return replace(
        new,
        sequence=info.sequence or new.sequence,
        is_int=info.is_int and new.is_int,
        max_len=keep.max_len,
        longest_at=keep.longest_at,
    )
