"""What a column's values are, gathered in the scan and judged against the feed they go to
before any training: non-finite values (NaN, inf) and integers a 32-bit feed cannot hold fail
here in one line naming the column, shard and row — inside training they fail as
TensorFlow's stack text, or train a model of NaN weights with exit 0."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from memtune.core.errors import MemtuneError
from memtune.data.cells import Ragged

INT32 = (-(2**31), 2**31 - 1)

Where = tuple[int, int]  # (shard index, data row in the shard, 1 the first after a header)


@dataclass(frozen=True)
class ValueStats:
    """A column's smallest and largest finite value (and where), and its non-finite ones."""

    low: float = float("inf")
    high: float = float("-inf")
    low_at: Where = (0, 0)
    high_at: Where = (0, 0)
    nonfinite: int = 0
    nonfinite_at: Where = (0, 0)

    def add(self, values: np.ndarray | Ragged, shard: int, first_row: int) -> ValueStats:
        """These stats with one chunk's values (rows from ``first_row``, 0-based) added."""
        flat = values.values if isinstance(values, Ragged) else values
        if flat.size == 0 or flat.dtype.kind not in "iufb":
            return self

        def row_of(index: int) -> Where:
            row = index
            if isinstance(values, Ragged):
                row = int(np.searchsorted(values.offsets, index, side="right")) - 1
            return (shard, first_row + row + 1)

        out = self
        if flat.dtype.kind == "f":
            bad = ~np.isfinite(flat)
            count = int(np.count_nonzero(bad))
            if count:
                at = out.nonfinite_at if out.nonfinite else row_of(int(np.argmax(bad)))
                out = replace(out, nonfinite=out.nonfinite + count, nonfinite_at=at)
                flat = np.where(bad, np.nan, flat)
            if np.all(np.isnan(flat)):
                return out
            low_i, high_i = int(np.nanargmin(flat)), int(np.nanargmax(flat))
        else:
            low_i, high_i = int(np.argmin(flat)), int(np.argmax(flat))
        if float(flat[low_i]) < out.low:
            out = replace(out, low=float(flat[low_i]), low_at=row_of(low_i))
        if float(flat[high_i]) > out.high:
            out = replace(out, high=float(flat[high_i]), high_at=row_of(high_i))
        return out


def check_values(
    stats: dict[str, ValueStats],
    feeds: Sequence[tuple[str, str, str]],
    labels: list[str],
    *,
    allow_nonfinite: bool,
) -> None:
    """Refuse values the feeds cannot take. ``feeds``: (column, dtype, role) per column fed;
    ``labels``: the shards' names by index."""
    for column, dtype, role in feeds:
        s = stats.get(column)
        if s is None:
            continue
        if s.nonfinite and (dtype.startswith("int") or not allow_nonfinite):
            shard, row = s.nonfinite_at
            more = "; --allow-nonfinite trains on them anyway" if dtype.startswith("float") else ""
            raise MemtuneError(
                f"{labels[shard]}, row {row}: column {column!r} holds NaN or inf "
                f"({s.nonfinite:,} such values in the data, fed to a {dtype} {role}){more}"
            )
        if dtype == "int32" and (s.low < INT32[0] or s.high > INT32[1]):
            value, (shard, row) = (s.high, s.high_at) if s.high > INT32[1] else (s.low, s.low_at)
            raise MemtuneError(
                f"{labels[shard]}, row {row}: column {column!r} holds {value:.0f}, past what "
                f"an int32 {role} holds ({INT32[0]:,} to {INT32[1]:,})"
            )


def check_ids(
    stats: dict[str, ValueStats],
    feeds: Sequence[tuple[str, str]],
    vocabularies: dict[str, tuple[str, int]],
    labels: list[str],
) -> None:
    """Refuse ids an Embedding cannot look up. ``feeds``: (model input, column) pairs;
    ``vocabularies``: model input -> (Embedding layer, input_dim)."""
    for name, column in feeds:
        s, vocabulary = stats.get(column), vocabularies.get(name)
        if s is None or vocabulary is None or s.high < s.low:
            continue
        layer, size = vocabulary
        if s.high >= size or s.low < 0:
            value, (shard, row) = (s.high, s.high_at) if s.high >= size else (s.low, s.low_at)
            raise MemtuneError(
                f"{labels[shard]}, row {row}: column {column!r} holds id {value:.0f}, past the "
                f"vocabulary of Embedding layer {layer!r} (input_dim {size}): ids must be in "
                f"[0, {size})"
            )
