"""N-D arrays the caller holds — images (N, H, W, C), audio (N, T, F), video (N, T, H, W,
C) — as memtune's data.

They are trained where they are: each batch is gathered from the caller's arrays (cast per
batch where the feed's type differs), reshuffled per epoch, never copied whole. The caller's
process, where ``fit`` trains, holds them, so the plan counts them as its in-memory dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memtune.core.errors import MemtuneError
from memtune.data.batch_sources import InMemoryBatches
from memtune.data.footprint import Footprint
from memtune.data.layout import Arrays
from memtune.data.python import is_pair
from memtune.data.scan import ColumnInfo, DataInfo
from memtune.data.sources import Shard, Source

# Element types a feed keeps as given; wider ones are fed at 32 bits, as Keras computes.
KEPT = ("uint8", "int8", "int16", "uint16", "float16", "float32", "int32")
LABEL = "<arrays>"
_CHECK_ROWS = 4096  # rows checked for NaN at a time: a bounded temporary


@dataclass(frozen=True)
class CallerArrays:
    """Columns named after the model's inputs and targets, each the caller's own array."""

    columns: dict[str, np.ndarray]


def has_nd(data: Any) -> bool:
    """Whether ``(x, y[, w])`` or a dict of arrays holds an array of more than two axes."""
    if is_pair(data):
        parts: list[Any] = []
        for part in data:
            parts.extend(part.values() if isinstance(part, Mapping) else [part])
    elif isinstance(data, Mapping):
        parts = list(data.values())
    else:
        return False
    return any(isinstance(p, np.ndarray) and p.ndim > 2 for p in parts)


def feed_type(dtype: np.dtype[Any]) -> str:
    """The element type a batch is fed as: kept if Keras takes it, else 32-bit."""
    if dtype.kind == "b":
        return "uint8"
    if dtype.name in KEPT:
        return dtype.name
    return "float32" if dtype.kind == "f" else "int32"


def arrays_info(columns: dict[str, np.ndarray], *, allow_nonfinite: bool) -> DataInfo:
    """What the scan learns of a file, read off the arrays' shapes (no pass over them but
    the check for NaN / inf in float arrays)."""
    rows = {name: a.shape[0] for name, a in columns.items()}
    if len(set(rows.values())) > 1:
        raise MemtuneError(f"(x, y): arrays differ in rows ({rows})")
    infos: dict[str, ColumnInfo] = {}
    for name, array in columns.items():
        if not allow_nonfinite:
            _check_finite(name, array)
        is_int = array.dtype.kind in "biu"
        if array.ndim == 1:
            infos[name] = ColumnInfo(name, False, is_int, 1)
        else:
            shape = tuple(int(d) for d in array.shape[1:])
            infos[name] = ColumnInfo(
                name, False, is_int, 1, shape=shape, item=feed_type(array.dtype)
            )
    total = next(iter(rows.values()))
    if total == 0:
        raise MemtuneError("(x, y): the arrays hold no rows")
    source = Source(LABEL, "arrays", (Shard(LABEL, "arrays", arrays=columns),))
    note = (
        "the caller's arrays are trained where they are: each batch is gathered from them, "
        "none is copied whole"
    )
    return DataInfo(source, infos, total, (total,), [note])


def _check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        return
    for lo in range(0, array.shape[0], _CHECK_ROWS):
        part = array[lo : lo + _CHECK_ROWS].reshape(min(_CHECK_ROWS, array.shape[0] - lo), -1)
        bad = ~np.isfinite(part).all(axis=1)
        if bad.any():
            row = lo + int(np.argmax(bad))
            raise MemtuneError(
                f"(x, y): {name!r} row {row} holds NaN or inf (allow_nonfinite=True trains on "
                "them anyway)"
            )


def held_bytes(info: DataInfo) -> int:
    """What the caller's arrays take, per row (at least what a fed row takes)."""
    columns = info.source.shards[0].arrays
    return sum(int(a.nbytes) for a in columns.values()) // max(1, info.num_samples)


def _fed(info: DataInfo, fp: Footprint) -> tuple[Arrays, Arrays]:
    """The caller's arrays keyed by feed, at the feed's shape (a view where numpy can)."""
    columns = info.source.shards[0].arrays

    def view(feed: Any) -> np.ndarray:
        array = columns[feed.columns[0]]
        return array.reshape(array.shape[0], *feed.shape)

    return {f.name: view(f) for f in fp.inputs}, {f.name: view(f) for f in fp.targets}


class ArrayBatches(InMemoryBatches):
    """:class:`InMemoryBatches` over the caller's arrays, each batch cast to its feed's type."""

    def __init__(self, inputs: Arrays, targets: Arrays, fp: Footprint, batch_size: int, **kw: Any):
        super().__init__(inputs, targets, batch_size, **kw)
        self.types = {f.name: f.dtype for f in fp.feeds}

    def span(self, lo: int, hi: int) -> tuple[Arrays, Arrays]:
        inputs, targets = super().span(lo, hi)
        return self._cast(inputs), self._cast(targets)

    def _cast(self, arrays: Arrays) -> Arrays:
        return {k: v.astype(self.types[k], copy=False) for k, v in arrays.items()}


def array_sources(
    info: DataInfo,
    fp: Footprint,
    batch_size: int,
    *,
    training: int,
    shuffle: bool,
    seed: int | None,
) -> tuple[ArrayBatches, ArrayBatches | None]:
    """Training batches over the first ``training`` rows; the rest (a validation split's
    last rows) as validation batches, or None."""
    inputs, targets = _fed(info, fp)

    def rows(arrays: Arrays, part: slice) -> Arrays:
        return {k: v[part] for k, v in arrays.items()}

    train = ArrayBatches(
        rows(inputs, slice(0, training)),
        rows(targets, slice(0, training)),
        fp,
        batch_size,
        shuffle=shuffle,
        seed=seed,
    )
    if training >= info.num_samples:
        return train, None
    rest = slice(training, None)
    return train, ArrayBatches(rows(inputs, rest), rows(targets, rest), fp, batch_size)


def write_array_rows(info: DataInfo, fp: Footprint, batch_size: int, path: Path) -> Path:
    """A trial's batch of the caller's rows (the first ones, repeated if fewer), saved as
    :func:`memtune.data.sample.write_trial_rows` saves them."""
    inputs, targets = _fed(info, fp)
    index = np.arange(batch_size) % info.num_samples
    types = {f.name: f.dtype for f in fp.feeds}
    saved = {f"in:{k}": v[index].astype(types[k]) for k, v in inputs.items()}
    saved |= {f"out:{k}": v[index].astype(types[k]) for k, v in targets.items()}
    with open(path, "wb") as f:
        np.savez(f, **saved)  # type: ignore[arg-type]
    return path


def validation_info(data: Any, fp: Footprint, *, allow_nonfinite: bool) -> DataInfo:
    """``validation_data`` of N-D arrays, named as the training feeds are."""
    from memtune.data.python import as_array, name_pair

    inputs, targets = [f.name for f in fp.inputs], [f.name for f in fp.targets]
    if is_pair(data):
        columns, _ = name_pair(data, inputs, targets, targets, nd=True)
    else:
        columns = {str(k): as_array(v, f"validation_data[{k!r}]", True) for k, v in data.items()}
    return arrays_info(columns, allow_nonfinite=allow_nonfinite)


def validation_source(info: DataInfo, fp: Footprint, batch_size: int) -> ArrayBatches:
    """Validation batches over arrays, checked to hold what the training feeds hold."""
    for feed in fp.feeds:
        column = feed.columns[0]
        if column not in info.columns:
            raise MemtuneError(f"validation_data has no array for {column!r}")
        size = int(np.prod(info.columns[column].shape, dtype=np.int64))
        if size != int(np.prod(feed.shape, dtype=np.int64)):
            raise MemtuneError(
                f"validation_data {column!r} holds samples of shape "
                f"{info.columns[column].shape or '()'}, not the training data's {feed.shape}"
            )
    source, _ = array_sources(
        info, fp, batch_size, training=info.num_samples, shuffle=False, seed=None
    )
    return source
