"""The Python API takes what Keras users hold: (x, y) arrays, dicts of arrays, tf.data and
PyDataset pipelines; anything else is one MemtuneError line."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import memtune
from memtune.core.errors import MemtuneError

pytestmark = pytest.mark.slow  # real models, real training

N = 300


def dense(inputs: int = 3) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((inputs,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, name="y")(keras.layers.Dense(4)(x)))
    model.compile("adam", "mse")
    return model


def two_way() -> Any:
    import keras

    a = keras.Input((2,), name="a")
    seq = keras.Input((None,), dtype="int32", name="seq")
    e = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 4)(seq))
    h = keras.layers.Concatenate()([a, e])
    model = keras.Model(
        {"a": a, "seq": seq},
        {"p": keras.layers.Dense(1, name="p")(h), "q": keras.layers.Dense(3, name="q")(h)},
    )
    model.compile("adam", {"p": "mse", "q": "mse"})
    return model


def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((N, 3)).astype("float32")
    return x, (x @ np.array([1.0, 2.0, -1.0])).astype("float32")


def test_suggest_takes_an_x_y_pair() -> None:
    plan = memtune.suggest(dense(), xy(), budget="3GiB", analytic=True)
    assert plan.num_samples == N
    assert plan.per_sample_bytes == 3 * 4 + 4
    assert plan.batch_size == N // 16  # the default keeps 16 steps per epoch
    assert plan.largest_safe_batch_size == N


def test_dicts_of_arrays_keyed_by_input_and_output_name() -> None:
    rng = np.random.default_rng(0)
    x = {"a": rng.random((N, 2)), "seq": rng.integers(1, 50, (N, 7))}
    y = {"p": rng.random(N), "q": rng.random((N, 3))}
    plan = memtune.suggest(two_way(), (x, y), budget="3GiB", analytic=True)
    assert plan.per_sample_bytes == (2 + 7 + 1 + 3) * 4
    inputs, targets = next(
        memtune.batches((x, y), target=["p", "q"], batch_size=8, model=two_way())
    )
    assert inputs["seq"].dtype == np.int32 and inputs["seq"].shape == (8, 7)
    np.testing.assert_array_equal(targets["q"], y["q"][:8].astype("float32"))


def id_pipelines() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    ids = np.arange(N, dtype="float32")

    class Pages(keras.utils.PyDataset):
        def __len__(self) -> int:
            return 7

        def __getitem__(self, i: int) -> Any:
            part = ids[i * 43 : (i + 1) * 43]
            return part.reshape(-1, 1), part % 2

    return {
        "pair": (ids.reshape(-1, 1), ids % 2),
        "tf.data unbatched": tf.data.Dataset.from_tensor_slices((ids, ids % 2)),
        "tf.data batched": tf.data.Dataset.from_tensor_slices((ids.reshape(-1, 1), ids % 2)).batch(
            32
        ),
        "PyDataset": Pages(),
    }


@pytest.mark.parametrize("kind", ["pair", "tf.data unbatched", "tf.data batched", "PyDataset"])
def test_every_sample_once_per_epoch_through_a_recovery(kind: str) -> None:
    from tests.conftest import exhaust_at, recording_model

    seen: list[int] = []
    result = memtune.fit(
        recording_model(seen),
        id_pipelines()[kind],
        epochs=2,
        batch_size=16,
        analytic=True,
        verbose=0,
        callbacks=[exhaust_at({(0, 3)})],
    )
    assert [c["to"] for c in result.batch_size_changes] == [8]
    assert len(seen) == 2 * N
    assert sorted(seen[:N]) == list(range(N)) and sorted(seen[N:]) == list(range(N))


def test_a_tf_data_pipeline_is_planned_streamed_and_padded_as_declared() -> None:
    import tensorflow as tf

    lengths = [1, 4, 2, 9, 3]
    rows = [list(range(1, n + 1)) for n in lengths] * 20
    ds = tf.data.Dataset.from_generator(
        lambda: ((np.array(r, "int32"), np.float32(len(r))) for r in rows),
        output_signature=(tf.TensorSpec((None,), tf.int32), tf.TensorSpec((), tf.float32)),
    )
    plan = memtune.suggest(two_way_seq(), ds, budget="3GiB", analytic=True)
    assert plan.num_samples == len(rows) and plan.mode == "streaming"
    assert plan.per_sample_bytes == 9 * 4 + 4  # the longest sequence, then the target
    assert any("memtune rebatches your pipeline" in r for r in plan.reasons)
    inputs, _ = next(memtune.batches(ds, target="y", batch_size=5, model=two_way_seq()))
    assert inputs["seq"][1].tolist() == [0] * 5 + [1, 2, 3, 4]  # pre-padding, as Keras pads


def two_way_seq() -> Any:
    import keras

    seq = keras.Input((None,), dtype="int32", name="seq")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 4)(seq))
    model = keras.Model(seq, keras.layers.Dense(1, name="y")(h))
    model.compile("adam", "mse")
    return model


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (5, "data: expected a .csv / .parquet path or folder"),
        ((np.zeros((4, 3)),), "got tuple"),
        (
            (np.zeros((4, 3)), np.zeros((4, 2, 2))),  # N-D targets are taken, if they match
            "model output 'y' has shape (None, 1) but 'y' holds samples of shape (2, 2)",
        ),
        ((np.array([["a"] * 3] * 4), np.zeros(4)), "x holds <U1 values, not numbers"),
        (({"a": np.zeros((4, 3))}, np.zeros(4)), "model input 'x' has no column"),
    ],
    ids=["int", "one-tuple", "3-D y", "strings", "input missing"],
)
def test_wrong_data_is_one_memtune_error(data: Any, fragment: str) -> None:
    with pytest.raises(MemtuneError) as caught:
        memtune.suggest(dense(), data, budget="3GiB", analytic=True)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_a_validation_split_plans_the_training_samples() -> None:
    plan = memtune.suggest(dense(), xy(), budget="3GiB", analytic=True, validation_split=0.2)
    assert plan.num_samples == int(N * 0.8)
    assert any(f"{N - int(N * 0.8)} more held out for validation" in r for r in plan.reasons)
    assert plan.batch_size == int(N * 0.8) // 16


def test_a_pair_without_a_model_is_one_line_not_a_type_error() -> None:
    """(x, y) and pipelines are named after the model: batches() without one says so."""
    with pytest.raises(MemtuneError, match=r"an \(x, y\) pair is named after a model"):
        next(memtune.batches(xy(), target="y", batch_size=2))


def test_the_scan_hands_its_memory_back_before_the_model_child_starts(
    monkeypatch, tmp_path
) -> None:
    """A scan of a 1.6 GiB Parquet stream left 615 MiB resident (134 MiB after release):
    beside the child that reads the model, fit's tree passed a 1.25 GiB budget."""
    import pandas as pd

    from memtune.app import prepare as api
    from memtune.core.options import make_options
    from memtune.model import info as modelinfo
    from memtune.proc import heap

    order: list[str] = []

    class Stop(Exception):
        pass

    def read(*args: object, **kwargs: object) -> None:
        order.append("model child")
        raise Stop

    monkeypatch.setattr(heap, "release", lambda: order.append("release"))
    monkeypatch.setattr(modelinfo, "read", read)
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "answer": [0, 1, 0]})
    (tmp_path / "model.py").write_text("")  # there (a typo is caught before the scan)
    spec = f"{tmp_path / 'model.py'}:build"
    with pytest.raises(Stop):
        api.prepare(spec, frame, make_options(target="answer", budget="1GiB"))
    assert order == ["release", "model child"]


@pytest.mark.parametrize("step", ["last", "middle"])
def test_the_guard_at_an_epochs_last_step_recovers_from_the_next_epoch(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog fires after a chosen step (its readings faked). After the last step of
    an epoch whose last batch is partial, recovery once restarted the epoch past its end
    (``__len__() should return >= 0``); now the epoch ends, validation included, and the
    next one runs at the halved batch. Every sample still trains once per epoch."""
    from memtune.core.watchdog import MemoryOverrun, Watchdog
    from memtune.run.callbacks import memory_guard
    from tests.conftest import recording_model

    steps = -(-N // 16)  # 19: the last batch holds 12 rows
    fire_at = steps if step == "last" else 5
    calls = [0]

    def check(self: Watchdog, now: object) -> None:
        calls[0] += 1
        if calls[0] == fire_at:
            raise MemoryOverrun("over (faked)", reason="over the usable budget")

    monkeypatch.setattr(memory_guard, "WATCH_SECONDS", 0.0)
    monkeypatch.setattr(Watchdog, "check", check)
    seen: list[int] = []
    result = memtune.fit(
        recording_model(seen),
        id_pipelines()["pair"],
        epochs=3,
        batch_size=16,
        analytic=True,
        verbose=0,
    )
    change = result.batch_size_changes[0]
    assert (change["from"], change["to"]) == (16, 8)
    if step == "last":
        assert (change["epoch"], change["sample"]) == (1, 0)
    else:
        assert (change["epoch"], change["sample"]) == (0, 5 * 16)
    assert len(seen) == 3 * N and len(result.history["loss"]) == 3
    for epoch in range(3):
        assert sorted(seen[epoch * N : (epoch + 1) * N]) == list(range(N))


def test_the_guard_defers_an_overrun_at_an_epochs_last_step_to_its_end() -> None:
    from memtune.core.watchdog import MemoryOverrun
    from memtune.run.callbacks.memory_guard import MemoryGuard

    class Firing:
        def check(self, now: object) -> None:
            raise MemoryOverrun("over", reason="over the usable budget")

    guard = MemoryGuard(4 * 2**30, 3 * 2**30, cpu=True)
    guard.watchdog = Firing()  # type: ignore[assignment]
    guard.set_params({"steps": 3, "epochs": 2})
    with pytest.raises(MemoryOverrun):
        guard.on_train_batch_end(1)  # mid-epoch: at once
    guard.next_check = 0.0
    guard.on_train_batch_end(2)  # the last step: held
    with pytest.raises(MemoryOverrun):
        guard.on_epoch_end(0)
    guard.next_check = 0.0
    guard.on_train_batch_end(2)
    guard.on_epoch_end(1)  # the run's last epoch: nothing left to recover
