"""Sequence cells: lists as pandas writes them (``[1.0, 2.5]``) or space-separated numbers.

A column of cells becomes a :class:`Ragged` — all values flat plus one length per row —
so padding is one vectorised copy and no per-row arrays are ever made.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memtune.errors import MemtuneError

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
    A fast path parses the whole column in one C call; any doubt falls back to the exact
    per-cell path, which also finds the faulty cell for the error message.
    """
    texts: list[str] = []
    for i, cell in enumerate(cells):
        try:
            texts.append(_inner(cell))
        except ValueError as exc:
            raise MemtuneError(
                f"{where}, row {first_row + i + 1}: cannot parse list cell {cell!r}: {exc}"
            ) from None
    joined = " ".join(texts)
    is_int = _NON_INT.search(joined) is None
    lengths = np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(joined, sep=" ") if joined.strip() else np.zeros(0)
        except (ValueError, DeprecationWarning):
            values = None
    if values is None or values.shape[0] != int(lengths.sum()):
        values = _exact(texts, cells, where=where, first_row=first_row)
    return Ragged(values, lengths, is_int)


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
