"""Pipelines: every sample exactly once per epoch, padded like Keras, memory kept flat."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import memtune.app.batches as api
from memtune.core.errors import MemtuneError
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.batch_sources import StreamingBatches
from memtune.data.footprint import footprint
from memtune.data.layout import Layout
from memtune.data.order import EpochOrder
from memtune.data.scan import scan
from memtune.data.shares import blocks_of, split_blocks
from tests.conftest import SIZES, id_shards


def epoch_ids(data: Path | pd.DataFrame, batch_size: int, **kw) -> list[int]:
    out: list[int] = []
    for inputs, targets in api.batches(data, target="answer", batch_size=batch_size, **kw):
        assert set(targets) == {"answer"}
        np.testing.assert_array_equal(targets["answer"], inputs["id"] % 2)
        out.extend(int(v) for v in inputs["id"])
    return out


@pytest.mark.parametrize("batch_size", [1, 4, 10, 13, 200])  # 13 > every shard; 200 > data
@pytest.mark.parametrize("mode", ["streaming", "in-memory"])
def test_exactly_once_in_numeric_order(tmp_path: Path, batch_size: int, mode: str) -> None:
    folder = id_shards(tmp_path / "d")
    ids = epoch_ids(folder, batch_size, mode=mode)
    assert ids == list(range(sum(SIZES)))  # 10.csv after 9.csv, last partial batch kept


@pytest.mark.parametrize("batch_size", [3, 16, 100])
def test_exactly_once_shuffled_across_epochs(tmp_path: Path, batch_size: int) -> None:
    folder = id_shards(tmp_path / "d")
    info = scan(folder)
    sig = ModelSignature((TensorSpec("id", (None,)),), (TensorSpec("answer", (None,)),))
    layout = Layout(footprint(sig, info), info)
    stream = StreamingBatches(layout, blocks_of(info, 4), batch_size, shuffle=True, seed=3)
    epochs = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        ids = [int(v) for i in range(len(stream)) for v in stream[i][0]["id"]]
        assert sorted(ids) == list(range(sum(SIZES)))
        epochs.append(ids)
    assert epochs[0] != epochs[1] != list(range(sum(SIZES)))
    stream.set_epoch(0)
    assert [int(v) for v in stream[0][0]["id"]] == epochs[0][:batch_size]  # seeded: repeatable
    assert len(stream) == -(-sum(SIZES) // batch_size)


def test_a_stream_keeps_only_the_blocks_batches_still_need(tmp_path: Path) -> None:
    """After a batch, the cache holds no block a later batch of the epoch will not read:
    an LRU up to its capacity held a 40,423-row stream's 27 row groups, 150 MiB more than
    the 8 its batches in flight and the read-ahead use."""
    folder = id_shards(tmp_path / "d")
    info = scan(folder)
    sig = ModelSignature((TensorSpec("id", (None,)),), (TensorSpec("answer", (None,)),))
    stream = StreamingBatches(
        Layout(footprint(sig, info), info), blocks_of(info, 4), 16, shuffle=True, seed=3
    )
    assert stream.capacity >= 16  # the bound: a batch could span 16 one-row blocks
    for epoch in range(2):
        stream.set_epoch(epoch)
        seen = []
        for i in range(len(stream)):
            seen.extend(int(v) for v in stream[i][0]["id"])
            stream._ahead.submit(lambda: None).result()  # the read-ahead queued so far has run
            done = min((i + 1) * 16, sum(SIZES))
            assert all(stream.order.block_end[b] > done for b in stream._cache)
            assert len(stream._cache) <= 2  # the block running on, the one read ahead
        assert sorted(seen) == list(range(sum(SIZES)))


def test_epoch_order_is_a_bijection() -> None:
    order = EpochOrder([5, 1, 7, 3], 4, shuffle=True, seed=9)
    for epoch in range(3):
        order.set_epoch(epoch)
        seen = [(b, int(r)) for i in range(len(order)) for b, rows in order.batch(i) for r in rows]
        assert sorted(seen) == [(b, r) for b, n in enumerate([5, 1, 7, 3]) for r in range(n)]
    with pytest.raises(IndexError):
        order.batch(len(order))


def test_large_shards_are_cut_into_blocks(tmp_path: Path) -> None:
    folder = id_shards(tmp_path / "d", [50, 23])
    info = scan(folder)
    blocks = blocks_of(info, 8)
    assert [b.rows for b in blocks] == [8] * 6 + [2] + [8, 8, 7]
    assert all(b.byte_range is not None for b in blocks)
    sig = ModelSignature((TensorSpec("id", (None,)),), (TensorSpec("answer", (None,)),))
    stream = StreamingBatches(Layout(footprint(sig, info), info), blocks, 5)
    assert [int(v) for i in range(len(stream)) for v in stream[i][0]["id"]] == list(range(73))


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_padding_equals_keras(tmp_path: Path, padding: str, truncating: str) -> None:
    import keras

    rows = [[1, 2, 3, 4, 5, 6], [7], [], [8, 9, 10]]
    frame = pd.DataFrame({"seq": rows, "answer": [0, 1, 0, 1]})
    got = next(
        api.batches(
            frame, target="answer", batch_size=4, maxlen=4, padding=padding, truncating=truncating
        )
    )[0]["seq"]
    want = keras.utils.pad_sequences(rows, maxlen=4, padding=padding, truncating=truncating)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32


def test_multi_input_dicts_follow_the_model(tmp_path: Path) -> None:
    import keras

    frame = pd.DataFrame(
        {
            "a": [[0.5, 1.5, 2.5], [1.0]],
            "b": [[1, 2], [3, 4, 5, 6]],
            "w": [1.0, 2.0],
            "answer": [0, 1],
        }
    )
    a = keras.Input((2,), name="a")
    b = keras.Input((None,), dtype="int32", name="b")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(9, 2)(b))
    x = keras.layers.Concatenate()([a, pooled])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1, name="answer")(x))
    model.compile("adam", "mse")
    inputs, targets = next(api.batches(frame, target="answer", batch_size=2, model=model))
    assert set(inputs) == {"a", "b"}
    np.testing.assert_array_equal(inputs["a"], np.array([[1.5, 2.5], [0.0, 1.0]], np.float32))
    np.testing.assert_array_equal(inputs["b"], np.array([[0, 0, 1, 2], [3, 4, 5, 6]], np.int32))
    assert targets["answer"].shape == (2, 1)


def test_parquet_list_columns_stream(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    start = 0
    for i, n in enumerate([5, 3, 6]):
        ids = list(range(start, start + n))
        table = pa.table(
            {
                "id": ids,
                "seq": pa.array([[v] * (v % 3 + 1) for v in ids], pa.list_(pa.int32())),
                "answer": [v % 2 for v in ids],
            }
        )
        pq.write_table(table, folder / f"{i}.parquet", row_group_size=2)
        start += n
    assert epoch_ids(folder, 4) == list(range(14))
    first = next(api.batches(folder, target="answer", batch_size=3))[0]["seq"]
    np.testing.assert_array_equal(first, [[0, 0, 0], [0, 1, 1], [2, 2, 2]])


def test_validation_split_holds_out_whole_shards(tmp_path: Path) -> None:
    info = scan(id_shards(tmp_path / "d"))
    train, held = split_blocks(blocks_of(info), 0.2)
    assert {b.shard.label for b in train}.isdisjoint({b.shard.label for b in held})
    assert [b.shard.label for b in held] == ["10.csv", "11.csv"]
    assert sum(b.rows for b in held) >= 0.2 * info.num_samples
    one = scan(id_shards(tmp_path / "one", [10]))
    with pytest.raises(MemtuneError, match="only one"):
        split_blocks(blocks_of(one), 0.2)


def test_streaming_memory_is_flat(tmp_path: Path) -> None:
    """Peak Python/numpy allocation while streaming barely grows with 10x the data."""

    def peak(sizes: list[int], mode: str) -> int:
        # The least of three passes: the read-ahead thread's timing only ever adds to a
        # peak, and the first pass also pays for lazy imports.
        folder = id_shards(tmp_path / f"{mode}{len(sizes)}", sizes)
        tops = []
        for _ in range(3):
            tracemalloc.start()
            for _ in api.batches(folder, target="answer", batch_size=64, mode=mode, maxlen=64):
                pass
            tops.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        return min(tops)

    # Eight shards already fill the read-ahead; past that only the scan's lengths (a byte
    # a row) and a few hundred bytes a shard may grow: measured 1.14-1.23 here.
    small, large = [1000] * 8, [1000] * 80
    growth = peak(large, "streaming") / peak(small, "streaming")
    in_memory_growth = peak(large, "in-memory") / peak(small, "in-memory")
    assert growth < 1.4, growth
    assert in_memory_growth > 3 * growth  # the check can tell flat from growing


def test_batches_needs_a_target(tmp_path: Path) -> None:
    with pytest.raises(MemtuneError, match="target"):
        next(api.batches(id_shards(tmp_path / "d"), target=[], batch_size=2))


def test_in_memory_load_makes_no_second_copy(tmp_path: Path) -> None:
    """Loading pads straight into preallocated arrays: peak <= 1.3x the padded bytes."""
    from memtune.data.layout import load_in_memory

    info = scan(id_shards(tmp_path / "d", [5000] * 20))
    sig = ModelSignature(
        (TensorSpec("id", (None,)), TensorSpec("seq", (None, 64))), (TensorSpec("answer", (None,)),)
    )
    fp = footprint(sig, info)
    layout = Layout(fp, info)
    blocks = blocks_of(info)
    tracemalloc.start()
    inputs, targets = load_in_memory(layout, blocks)
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    padded = info.num_samples * fp.per_sample_bytes
    assert sum(a.nbytes for a in (*inputs.values(), *targets.values())) == padded
    assert top <= 1.3 * padded, top / padded
