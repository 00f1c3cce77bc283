"""Where samples come from: a CSV or Parquet file, a folder of shards, or Python objects.

Shards are ordered by the number in their names when every name holds one (``2.csv``
before ``10.csv``), otherwise by name. Everything is read in chunks; nothing here loads a
whole dataset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from memtune.core.errors import MemtuneError
from memtune.data.cells import Ragged, parse_cells, scalars_as_ragged

Kind = Literal["csv", "parquet", "frame", "dataset", "arrays"]
Column = np.ndarray | Ragged
_SUFFIXES: dict[str, Kind] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_NUMBER = re.compile(r"\d+")
CHUNK_ROWS = 65_536
# A chunk is also bounded by its cells and its text, so a wide or sparse file is read in
# pieces its parse can hold: 20,000 rows of 2,001 mostly empty columns (42 MB) peaked
# 356 MiB over the reader's own in one 65,536-row chunk, 94 MiB in chunks of 4 Mi cells.
CHUNK_CELLS = 1 << 22
CHUNK_TEXT_BYTES = 16 << 20
_SAMPLE_BYTES = 1 << 20  # how much of a CSV's start its row width is read from


@dataclass(frozen=True)
class Shard:
    """One file of a dataset (or the whole in-memory table)."""

    label: str
    kind: Kind
    path: Path | None = None
    frame: pd.DataFrame | None = None
    dataset: Any = None  # a tf.data.Dataset / PyDataset (memtune.data.tfdata reads it)
    batched: bool = False  # whether that pipeline yields batches or single samples
    arrays: Any = None  # the caller's N-D arrays by column (memtune.data.arrays)
    build: Any = None  # makes ``dataset`` when it is first read (an image folder's pipeline)


@dataclass(frozen=True)
class Source:
    """A dataset as the user named it, with its shards in reading order."""

    label: str
    kind: Kind
    shards: tuple[Shard, ...]


def shard_dataset(shard: Shard) -> Any:
    """A pipeline shard's dataset: as given, or built now (an image folder's)."""
    return shard.build() if shard.build is not None else shard.dataset


def shard_order(paths: Sequence[Path]) -> list[Path]:
    """Numeric order when every stem holds a number (first number, then name), else names."""
    numbers = [_NUMBER.search(p.stem) for p in paths]
    if paths and all(numbers):
        return [
            p
            for _, _, p in sorted(
                (int(m.group()), p.name, p)  # type: ignore[union-attr]
                for m, p in zip(numbers, paths, strict=True)
            )
        ]
    return sorted(paths, key=lambda p: p.name)


def open_source(data: Any) -> Source:
    """Resolve DATA (path, DataFrame or dict of arrays) to a :class:`Source`."""
    from memtune.data.python import check_kind

    check_kind(data)
    if isinstance(data, pd.DataFrame):
        return Source("<DataFrame>", "frame", (Shard("<DataFrame>", "frame", frame=data),))
    if isinstance(data, Mapping):
        return Source("<dict>", "frame", (Shard("<dict>", "frame", frame=_dict_frame(data)),))
    path = Path(data)
    if not path.exists():
        raise MemtuneError(f"data {str(path)!r} does not exist")
    if path.is_file():
        kind = _SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise MemtuneError(f"data {str(path)!r}: expected a .csv or .parquet file")
        return Source(str(path), kind, (Shard(path.name, kind, path=path),))
    files = [
        p
        for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _SUFFIXES
    ]
    if not files:
        raise MemtuneError(f"data folder {str(path)!r} holds no .csv or .parquet shards")
    kinds = {_SUFFIXES[p.suffix.lower()] for p in files}
    if len(kinds) > 1:
        csv = next(p.name for p in files if _SUFFIXES[p.suffix.lower()] == "csv")
        pq = next(p.name for p in files if _SUFFIXES[p.suffix.lower()] == "parquet")
        raise MemtuneError(
            f"data folder {str(path)!r} mixes CSV and Parquet shards ({csv}, {pq}); use one kind"
        )
    kind = kinds.pop()
    shards = tuple(Shard(p.name, kind, path=p) for p in shard_order(files))
    return Source(str(path), kind, shards)


def _dict_frame(data: Mapping[str, Any]) -> pd.DataFrame:
    """A dict of arrays as a DataFrame; 2-D arrays and lists of lists become list cells."""
    columns: dict[str, Any] = {}
    for name, value in data.items():
        arr = value if isinstance(value, np.ndarray) else None
        if arr is not None and arr.ndim == 2:
            columns[str(name)] = list(arr)
        elif arr is not None and arr.ndim > 2:
            raise MemtuneError(
                f"data key {name!r} has shape {arr.shape}; memtune reads one number or one "
                "sequence per sample (at most 2-D arrays)"
            )
        else:
            columns[str(name)] = list(value) if not isinstance(value, np.ndarray) else value
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise MemtuneError(f"data dict: columns differ in length ({lengths})")
    return pd.DataFrame(columns)


def rows_per_chunk(shard: Shard, columns: int) -> int:
    """Rows a chunk of ``shard`` may hold: at most :data:`CHUNK_ROWS`, :data:`CHUNK_CELLS`
    cells and (CSV) :data:`CHUNK_TEXT_BYTES` of text, the row width read from the file's
    start."""
    rows = min(CHUNK_ROWS, max(1, CHUNK_CELLS // max(1, columns)))
    if shard.kind == "csv" and shard.path is not None:
        try:
            with open(shard.path, "rb") as f:
                f.readline()  # the header
                sample = f.read(_SAMPLE_BYTES)
        except OSError:
            return rows
        lines = sample.count(b"\n")
        width = len(sample) / lines if lines else max(len(sample), 1)
        rows = min(rows, max(1, int(CHUNK_TEXT_BYTES / width)))
    return rows


def read_chunks(
    shard: Shard, columns: Sequence[str] | None = None, chunk_rows: int | None = None
) -> Iterator[tuple[int, Any]]:
    """(first row of the chunk, chunk) pairs; a chunk is a DataFrame or an Arrow batch of at
    most ``chunk_rows`` rows (by default :func:`rows_per_chunk`: bounded in cells and text)."""
    if chunk_rows is None:
        chunk_rows = rows_per_chunk(shard, len(columns or shard_columns(shard)))
    if shard.kind == "frame":
        frame = shard.frame if columns is None else shard.frame[list(columns)]  # type: ignore[index]
        for start in range(0, len(frame), chunk_rows):  # type: ignore[arg-type]
            yield start, frame.iloc[start : start + chunk_rows]  # type: ignore[union-attr]
        return
    assert shard.path is not None
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(shard.path)
            start = 0
            for batch in file.iter_batches(batch_size=chunk_rows, columns=columns):
                yield start, batch
                start += batch.num_rows
        except (OSError, ValueError) as exc:
            raise MemtuneError(f"{shard.path}: not a readable Parquet file ({exc})") from None
        return
    try:
        reader = pd.read_csv(shard.path, usecols=columns, chunksize=chunk_rows)
        start = 0
        for frame in reader:
            yield start, frame
            start += len(frame)
    except pd.errors.EmptyDataError:
        return
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise MemtuneError(f"{shard.path}: not a readable CSV file ({one_line(exc)})") from None


def chunk_columns(chunk: Any) -> list[str]:
    """Column names of a chunk, in file order."""
    if isinstance(chunk, pd.DataFrame):
        return [str(c) for c in chunk.columns]
    return list(chunk.schema.names)


def shard_columns(shard: Shard) -> list[str]:
    """A shard's column names from its header alone; [] for an empty file."""
    if shard.kind == "frame":
        return [str(c) for c in shard.frame.columns]  # type: ignore[union-attr]
    assert shard.path is not None
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(shard.path).names)
        except (OSError, ValueError) as exc:
            raise MemtuneError(f"{shard.path}: not a readable Parquet file ({exc})") from None
    try:
        return [str(c) for c in pd.read_csv(shard.path, nrows=0).columns]
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise MemtuneError(f"{shard.path}: not a readable CSV file ({one_line(exc)})") from None


def column_values(chunk: Any, name: str, *, where: str, first_row: int, sequence: bool) -> Column:
    """One column of a chunk: a numeric array for scalars, a :class:`Ragged` for sequences."""
    if isinstance(chunk, pd.DataFrame):
        series = chunk[name]
        if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
            values = series.to_numpy()
            return scalars_as_ragged(values) if sequence else values
        cells = series.tolist()
        if not sequence:
            raise MemtuneError(f"{where}: column {name!r} mixes numbers and lists")
        first = next((c for c in cells if isinstance(c, list | tuple | np.ndarray)), None)
        if first is not None:
            return _ragged_from_lists(cells, where=where, first_row=first_row)
        return parse_cells(cells, where=f"{where}, column {name!r}", first_row=first_row)
    return _arrow_column(
        chunk.column(name), name, where=where, first_row=first_row, sequence=sequence
    )


def is_sequence_column(chunk: Any, name: str) -> bool:
    """Whether a column holds lists (Arrow list type, or text/objects in pandas)."""
    if isinstance(chunk, pd.DataFrame):
        dtype = chunk[name].dtype
        return not (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype))
    import pyarrow as pa

    t = chunk.schema.field(name).type
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_string(t))


def _arrow_column(array: Any, name: str, *, where: str, first_row: int, sequence: bool) -> Column:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = array.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy().astype(np.int64)
        flat = pc.list_flatten(array)
        if flat.null_count:
            raise MemtuneError(f"{where}, column {name!r}: a list holds a null item")
        vt = flat.type
        if not (pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_boolean(vt)):
            raise MemtuneError(f"{where}, column {name!r}: list items of type {vt} are not numbers")
        values = flat.to_numpy(zero_copy_only=False)  # native dtype: padding casts once
        return Ragged(values, lengths, not pa.types.is_floating(vt))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return parse_cells(
            array.to_pylist(), where=f"{where}, column {name!r}", first_row=first_row
        )
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise MemtuneError(f"{where}, column {name!r}: values of type {t} are not numbers")
    values = array.to_numpy(zero_copy_only=False)
    return scalars_as_ragged(values) if sequence else values


def _ragged_from_lists(cells: list[Any], *, where: str, first_row: int) -> Ragged:
    arrays = []
    for i, cell in enumerate(cells):
        try:
            arrays.append(
                np.zeros(0) if cell is None else np.asarray(cell, dtype=np.float64).reshape(-1)
            )
        except (TypeError, ValueError):
            raise MemtuneError(
                f"{where}, row {first_row + i + 1}: {cell!r} is not numbers"
            ) from None
    lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
    values = np.concatenate(arrays) if arrays else np.zeros(0)
    is_int = all(np.asarray(c).dtype.kind in "iub" for c in cells if c is not None and len(c))
    return Ragged(values, lengths, is_int)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
