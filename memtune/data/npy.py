"""Numbered ``.npy`` shards, a folder per column — ``DATA/image/0.npy``, ``DATA/image/1.npy``,
…, ``DATA/label/0.npy``, … — memory-mapped and read a batch at a time.

Mapped pages are the kernel's to drop and read again (page cache, not the budget's
measure), so a dataset larger than the budget trains: only each batch's rows are copied.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from memtune.core.errors import MemtuneError
from memtune.data.arrays import arrays_info
from memtune.data.scan import DataInfo
from memtune.data.sources import Shard, Source, shard_order


class MappedRows:
    """Rows of several memory-mapped arrays as one: slices stay lazy, gathers copy only the
    rows asked for. What :class:`~memtune.data.arrays.ArrayBatches` reads an array with."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [p.shape[0] for p in parts])
        first = parts[0]
        self.shape: tuple[int, ...] = (int(self.starts[-1]), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)
        self.nbytes = 0  # file pages: none of it is held beside training

    def __len__(self) -> int:
        return self.shape[0]

    def reshape(self, rows: int, *shape: int) -> MappedRows:
        return MappedRows([p.reshape(p.shape[0], *shape) for p in self.parts])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            lo, hi, step = index.indices(self.shape[0])
            if step == 1:
                return self._window(lo, max(lo, hi))
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty((rows.shape[0], *self.shape[1:]), self.dtype)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for p in np.unique(part):
            mine = part == p
            out[mine] = self.parts[p][rows[mine] - self.starts[p]]
        return out

    def _window(self, lo: int, hi: int) -> MappedRows:
        parts = []
        for p, part in enumerate(self.parts):
            a, b = max(lo - self.starts[p], 0), min(hi - self.starts[p], part.shape[0])
            if a < b:
                parts.append(part[a:b])
        return MappedRows(parts or [self.parts[0][:0]])

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=False)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        joined = np.concatenate(self.parts) if len(self.parts) > 1 else np.asarray(self.parts[0])
        return joined if dtype is None else joined.astype(dtype)


def is_npy_folder(data: Any) -> bool:
    """A folder of column folders holding ``.npy`` files."""
    if not isinstance(data, str | os.PathLike) or not Path(data).is_dir():
        return False
    return any(_shards(d) for d in _columns(Path(data)))


def _columns(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _shards(folder: Path) -> list[Path]:
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".npy"]
    return shard_order([p for p in found if not p.name.startswith(".")])


def read_npy(path: Path, *, allow_nonfinite: bool) -> DataInfo:
    """Every column's shards mapped and checked to line up, row for row."""
    columns: dict[str, np.ndarray] = {}
    names: list[str] | None = None
    rows: list[int] = []
    for folder in _columns(path):
        shards = _shards(folder)
        if not shards:
            raise MemtuneError(f"{folder}: column folder holds no .npy shards")
        if names is None:
            names = [s.name for s in shards]
        elif [s.name for s in shards] != names:
            other = sorted(set(names) ^ {s.name for s in shards})[0]
            raise MemtuneError(f"{folder}: its shards are not the other columns' ({other})")
        parts = [_mapped(s) for s in shards]
        if not rows:
            rows = [p.shape[0] for p in parts]
        for file, part, n in zip(shards, parts, rows, strict=True):
            if part.shape[0] != n:
                raise MemtuneError(f"{file}: {part.shape[0]:,} rows, where the shard of that "
                                   f"number in the other columns has {n:,}")  # fmt: skip
            if part.shape[1:] != parts[0].shape[1:] or part.dtype != parts[0].dtype:
                raise MemtuneError(
                    f"{file}: samples of shape {part.shape[1:]} ({part.dtype}), where "
                    f"{shards[0].name} holds {parts[0].shape[1:]} ({parts[0].dtype})"
                )
        columns[folder.name] = MappedRows(parts)  # type: ignore[assignment]
    info = arrays_info(columns, allow_nonfinite=allow_nonfinite)
    source = Source(str(path), "arrays", (Shard(str(path), "arrays", path=path, arrays=columns),))
    note = f"{path}: {len(rows)} .npy shard(s) a column, memory-mapped and read a batch at a time"
    return DataInfo(source, info.columns, sum(rows), (sum(rows),), [note])


def _mapped(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MemtuneError(f"{path}: not a readable .npy file ({exc})") from None
    if array.ndim == 0 or array.dtype.kind not in "biuf":
        raise MemtuneError(
            f"{path}: holds {array.dtype} of shape {array.shape}, not rows of numbers"
        )
    return array
