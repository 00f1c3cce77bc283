import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memtune.core.errors import MemtuneError
from memtune.data.cells import Ragged, parse_cells
from memtune.data.padding import pad
from memtune.data.scan import scan
from memtune.data.sources import open_source, shard_order
from tests.conftest import write_csv_shards


def test_numeric_shard_order() -> None:
    names = [Path(f"{i}.csv") for i in (10, 2, 0, 1, 11, 3)]
    assert [p.name for p in shard_order(names)] == [
        "0.csv",
        "1.csv",
        "2.csv",
        "3.csv",
        "10.csv",
        "11.csv",
    ]


def test_shard_order_with_prefixes_and_fallback() -> None:
    numbered = [Path("part-10.csv"), Path("part-9.csv")]
    assert [p.name for p in shard_order(numbered)] == ["part-9.csv", "part-10.csv"]
    mixed = [Path("b.csv"), Path("10.csv"), Path("a.csv")]
    assert [p.name for p in shard_order(mixed)] == ["10.csv", "a.csv", "b.csv"]


def test_parse_cells_both_spellings() -> None:
    r = parse_cells(["[1.0, 2.5]", "3 4 5", "", "[]", float("nan")], where="f.csv")
    assert r.lengths.tolist() == [2, 3, 0, 0, 0]
    assert r.values.tolist() == [1.0, 2.5, 3.0, 4.0, 5.0]
    assert not r.is_int
    assert parse_cells(["[1, 2]", "3"], where="f.csv").is_int


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ("[1, x]", "'x', which is not a number"),
        ("[1, 2", "without a closing"),
        ("1, 2]", "without an opening"),
    ],
)
def test_parse_cells_names_the_row(cell: str, fragment: str) -> None:
    with pytest.raises(MemtuneError) as info:
        parse_cells(["[1]", "[2]", cell], where="3.csv, column 'a'", first_row=10)
    message = str(info.value)
    assert message.startswith("3.csv, column 'a', row 13:")
    assert fragment in message


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
@pytest.mark.parametrize("maxlen", [1, 3, 6])
def test_pad_matches_keras(padding: str, truncating: str, maxlen: int) -> None:
    import keras

    rows = [[1, 2, 3, 4, 5], [6], [], [7, 8, 9]]
    ragged = Ragged(
        np.array([v for r in rows for v in r], dtype=np.float64),
        np.array([len(r) for r in rows]),
        True,
    )
    ours = pad(ragged, maxlen, dtype=np.int32, padding=padding, truncating=truncating)  # type: ignore[arg-type]
    theirs = keras.utils.pad_sequences(rows, maxlen=maxlen, padding=padding, truncating=truncating)
    np.testing.assert_array_equal(ours, theirs)


def test_ragged_take() -> None:
    r = Ragged(np.arange(6.0), np.array([1, 2, 3]), False)
    taken = r.take(np.array([2, 0]))
    assert taken.lengths.tolist() == [3, 1]
    assert taken.values.tolist() == [3.0, 4.0, 5.0, 0.0]


def test_scan_csv_shards(tmp_path: Path, seq_frame: pd.DataFrame) -> None:
    second = pd.DataFrame({"a": [[1.0] * 7], "b": [[9]], "x": [4.0], "answer": [1]})
    folder = write_csv_shards(tmp_path / "d", [seq_frame, second])
    info = scan(folder)
    assert info.num_samples == 4
    assert info.shard_rows == (3, 1)
    a, b, x = info.columns["a"], info.columns["b"], info.columns["x"]
    assert (a.sequence, a.is_int, a.max_len) == (True, False, 7)
    assert (b.sequence, b.is_int, b.max_len) == (True, True, 3)
    assert (x.sequence, x.is_int) == (False, False)
    assert info.columns["answer"].dtype == "int32"


def test_scan_space_separated_and_single_item_shard(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "0.csv").write_text("h,answer\n1 2 3,0\n4,1\n")
    (folder / "1.csv").write_text("h,answer\n5,0\n")  # every list one item: pandas sees numbers
    info = scan(folder)
    assert info.columns["h"].sequence
    assert info.columns["h"].max_len == 3
    assert info.columns["h"].is_int


def test_scan_parquet_list_columns(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    for i, rows in enumerate([[[1, 2], [3]], [[4, 5, 6]]]):
        table = pa.table({"ids": pa.array(rows, pa.list_(pa.int64())), "y": [0.5] * len(rows)})
        pq.write_table(table, folder / f"{i}.parquet")
    info = scan(folder)
    assert info.num_samples == 3
    assert info.columns["ids"].max_len == 3
    assert info.columns["ids"].is_int
    assert not info.columns["y"].sequence


def test_scan_dataframe_and_dict() -> None:
    frame = pd.DataFrame({"s": [[1.0, 2.0], [3.0]], "answer": [1, 0]})
    assert scan(frame).columns["s"].max_len == 2
    info = scan({"s": np.zeros((5, 4), dtype=np.float32), "answer": np.arange(5)})
    assert info.num_samples == 5
    assert info.columns["s"].max_len == 4


def test_empty_shard_is_skipped_with_warning(tmp_path: Path, seq_frame: pd.DataFrame) -> None:
    folder = write_csv_shards(tmp_path / "d", [seq_frame])
    (folder / "1.csv").write_text("")
    (folder / "2.csv").write_text("a,b,x,answer\n")
    info = scan(folder)
    assert info.num_samples == 3
    assert any("1.csv: empty shard skipped" in w for w in info.warnings)
    assert any("2.csv: empty shard skipped" in w for w in info.warnings)


def test_bad_sources(tmp_path: Path, seq_frame: pd.DataFrame) -> None:
    with pytest.raises(MemtuneError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemtuneError, match=r"holds no \.csv or \.parquet shards"):
        open_source(tmp_path / "empty")
    mixed = write_csv_shards(tmp_path / "mixed", [seq_frame])
    pq.write_table(pa.table({"x": [1]}), mixed / "1.parquet")
    with pytest.raises(MemtuneError, match="mixes CSV and Parquet"):
        open_source(mixed)
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(MemtuneError, match=r"expected a \.csv or \.parquet file"):
        open_source(tmp_path / "data.txt")


def test_missing_column_names_the_shard(tmp_path: Path, seq_frame: pd.DataFrame) -> None:
    folder = write_csv_shards(tmp_path / "d", [seq_frame, seq_frame.drop(columns=["b"]), seq_frame])
    with pytest.raises(MemtuneError, match=r"shard 1\.csv has no column 'b'"):
        scan(folder)


def test_unparsable_cell_names_file_and_row(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "0.csv").write_text('h,answer\n"[1, 2]",0\n')
    (folder / "1.csv").write_text('h,answer\n"[1, 2]",0\n"[3, oops]",1\n')
    with pytest.raises(MemtuneError, match=r"^1\.csv, column 'h', row 2: .*'oops'"):
        scan(folder)


def _sparse_csv(path: Path, rows: int, columns: int) -> Path:
    """A wide CSV of mostly empty cells: a few numbers per row, the target last."""
    rng = np.random.default_rng(0)
    cells = np.full((rows, columns), "", dtype=object)
    for r, c in zip(np.repeat(np.arange(rows), 5), rng.integers(0, columns, rows * 5), strict=True):
        cells[r, c] = "1.5"
    with open(path, "w") as f:
        f.write(",".join(f"c{i}" for i in range(columns)) + ",answer\n")
        f.writelines(",".join(row) + f",{i % 2}\n" for i, row in enumerate(cells.tolist()))
    return path


def test_a_chunk_is_bounded_by_its_cells_and_its_text(tmp_path: Path) -> None:
    from memtune.data.sources import CHUNK_CELLS, CHUNK_ROWS, Shard, rows_per_chunk

    narrow = _sparse_csv(tmp_path / "narrow.csv", 50, 3)
    assert rows_per_chunk(Shard("n", "csv", path=narrow), 4) == CHUNK_ROWS
    wide = _sparse_csv(tmp_path / "wide.csv", 50, 2000)
    assert rows_per_chunk(Shard("w", "csv", path=wide), 2001) == CHUNK_CELLS // 2001
    long_text = tmp_path / "text.csv"
    long_text.write_text("a,answer\n" + "".join(f"{'7 ' * 40000},1\n" for _ in range(30)))
    assert rows_per_chunk(Shard("t", "csv", path=long_text), 2) < 250  # 80 kB a row


SCAN_PEAK = """
import json, sys
from memtune.probe import process
from memtune.data.scan import scan
base = process.held()
with process.PeakPoller(0.002):
    info = scan(sys.argv[1])
print(json.dumps([info.num_samples, len(info.columns), process.peak_held() - base]))
"""


@pytest.mark.slow
def test_a_wide_sparse_csv_is_scanned_in_bounded_memory(tmp_path: Path) -> None:
    """#25: a sparse 10 GiB CSV got suggest OOM-killed in a 1.5 GiB cgroup. 20,000 rows of
    2,001 mostly empty columns (42 MB) took 356 MiB in one 65,536-row chunk; in chunks of
    4 Mi cells ~100 MiB, whatever the file's length."""
    import subprocess
    import sys

    data = _sparse_csv(tmp_path / "0.csv", 20_000, 2000)
    done = subprocess.run(
        [sys.executable, "-c", SCAN_PEAK, str(data)], capture_output=True, text=True, check=True
    )
    rows, columns, grew = json.loads(done.stdout)
    assert (rows, columns) == (20_000, 2001)
    assert grew < 180 * 2**20, grew / 2**20
