"""Sequence cells: lists as pandas writes them (``[1.0, 2.5]``) or space-separated numbers.

A column of cells becomes a :class:`Ragged` — all values flat plus one length per row —
so padding is one vectorised copy and no per-row arrays are ever made.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memtune.core.errors import MemtuneError

_NON_INT = re.compile(r"[.eEnN]")  # a decimal point, an exponent, nan or inf


@dataclass(frozen=True)
class Ragged:
    """Variable-length rows: ``values`` concatenated, ``lengths[i]`` items in row i."""

    values: np.ndarray
    lengths: np.ndarray
    is_int: bool

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def take(self, rows: np.ndarray) -> Ragged:
        """The given rows, in that order."""
        offsets = self.offsets
        lengths = self.lengths[rows]
        starts = offsets[:-1][rows]
        index = np.repeat(starts - _exclusive_cumsum(lengths), lengths) + np.arange(
            int(lengths.sum())
        )
        return Ragged(self.values[index], lengths, self.is_int)

    @staticmethod
    def concat(parts: Sequence[Ragged]) -> Ragged:
        if not parts:
            return Ragged(np.zeros(0), np.zeros(0, dtype=np.int64), True)
        return Ragged(
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.lengths for p in parts]),
            all(p.is_int for p in parts),
        )


def _exclusive_cumsum(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros_like(lengths)
    if lengths.shape[0] > 1:
        np.cumsum(lengths[:-1], out=out[1:])
    return out


def _inner(cell: object) -> str:
    """The text between the brackets, commas as spaces; '' for a missing cell."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return ""
    if not isinstance(cell, str):
        return str(cell)
    text = cell.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError("an opening '[' without a closing ']'")
        text = text[1:-1]
    elif text.endswith("]"):
        raise ValueError("a closing ']' without an opening '['")
    return text.replace(",", " ")


def parse_cells(cells: Sequence[object], *, where: str, first_row: int = 0) -> Ragged:
    """Parse one column of sequence cells. ``where`` names the file and column for errors.

    Rows are numbered as a person counts data rows: the first row after the header is 1.
    The whole column is parsed at once with Arrow's string kernels; anything unusual
    (unbalanced brackets, a token that is not a number, another spacing) falls back to the
    exact per-cell path, which also names the faulty cell.
    """
    fast = _parse_arrow(cells)
    if fast is not None:
        return fast
    return _parse_slow(cells, where=where, first_row=first_row)


def _parse_arrow(cells: Sequence[object]) -> Ragged | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pa.array(cells, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    present = len(arr) - arr.null_count
    opens = pc.sum(pc.cast(pc.starts_with(arr, "["), pa.int64())).as_py() or 0
    if opens:
        closes = pc.sum(pc.cast(pc.ends_with(arr, "]"), pa.int64())).as_py() or 0
        if opens != present or closes != present:
            return None  # some cells bracketed, some not: let the exact path judge
        inner = pc.utf8_trim_whitespace(pc.utf8_trim(arr, "[]"))
    else:
        inner = pc.utf8_trim_whitespace(arr)
    inner = pc.if_else(pc.equal(inner, ""), pa.scalar(None, pa.string()), inner)
    lists = pc.split_pattern(inner, ", ") if opens else pc.utf8_split_whitespace(inner)
    flat = pc.list_flatten(lists)
    try:
        values = pc.cast(flat, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    is_int = not pc.any(pc.match_substring_regex(arr, "[.eEnN]")).as_py()
    return Ragged(values.to_numpy(zero_copy_only=False), lengths, is_int)


def _missing(cell: object) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell))


def _parse_slow(cells: Sequence[object], *, where: str, first_row: int) -> Ragged:
    """Cell by cell: exact, and it names the row of the first cell it cannot read."""
    texts: list[str] = []
    for i, cell in enumerate(cells):
        try:
            texts.append(_inner(cell))
        except ValueError as exc:
            raise MemtuneError(
                f"{where}, row {first_row + i + 1}: cannot parse list cell {cell!r}: {exc}"
            ) from None
    lengths = np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))
    values = _exact(texts, cells, where=where, first_row=first_row)
    return Ragged(values, lengths, _NON_INT.search(" ".join(texts)) is None)


def _exact(texts: list[str], cells: Sequence[object], *, where: str, first_row: int) -> np.ndarray:
    out: list[float] = []
    for i, text in enumerate(texts):
        for tok in text.split():
            try:
                out.append(float(tok))
            except ValueError:
                raise MemtuneError(
                    f"{where}, row {first_row + i + 1}: list cell {cells[i]!r} holds "
                    f"{tok!r}, which is not a number"
                ) from None
    return np.array(out, dtype=np.float64)


def scalars_as_ragged(values: np.ndarray) -> Ragged:
    """A numeric column read as length-1 sequences (a shard whose every list had one item)."""
    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values)
    is_int = bool(np.all(np.equal(np.mod(values[present], 1), 0)))
    return Ragged(values[present], present.astype(np.int64), is_int)
