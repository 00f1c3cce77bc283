"""``memtune.fit`` with ``model.fit``'s habits: its keywords, refused ones said before any
planning, and a Keras ``History`` back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import memtune
from memtune.core.errors import MemtuneError


def tiny_model() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(2, activation="softmax", name="y")(x))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64")


@pytest.mark.parametrize(
    ("keywords", "said"),
    [
        ({"steps_per_epoch": 10}, "steps_per_epoch: memtune trains every sample once an epoch"),
        ({"validation_steps": 2}, "validation_steps: memtune validates on every held-out sample"),
        ({"epochs": 0}, "epochs 0: must be a positive integer"),
        ({"epochs": 2, "initial_epoch": 2}, "initial_epoch 2: must be an integer from 0 to"),
        ({"class_weight": [1, 2]}, "class_weight: expected a dict of class id → weight"),
        ({"class_weight": {"a": 1}}, "class_weight {'a': 1}: expected class id → weight"),
        ({"class_weight": {0: -1}}, "class_weight {0: -1}: a class id is an integer ≥ 0"),
        ({"class_weight": {1.5: 1}}, "a class id is an integer ≥ 0"),
    ],
)
def test_keywords_memtune_cannot_honour_are_refused_before_planning(
    keywords: dict[str, Any], said: str
) -> None:
    with pytest.raises(MemtuneError) as info:  # the model file does not exist: the keyword
        memtune.fit("no-model.keras", arrays(8), **keywords)  # is said before it is looked for
    assert said in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "weights", "said"),
    [
        ("dict", np.ones(3), "sample_weight has shape (3,); expected one number for each of the 8"),
        ("dict", [1, -1, 1, 1, 1, 1, 1, 1], "sample_weight row 1: -1.0 (a weight is a finite"),
        ("frame", [1, 1, 1, np.nan, 1, 1, 1, 1], "sample_weight row 3: nan"),
        ("path", np.ones(8), "sample_weight as an array needs in-memory data"),
        ("triple", np.ones(8), "sample_weight given twice"),
    ],
)
def test_bad_row_weights_are_refused_before_planning(data: str, weights: Any, said: str) -> None:
    import pandas as pd

    x, y = arrays(8)
    given = {
        "dict": {"x": x[:, 0], "y": y},
        "frame": pd.DataFrame({"x": x[:, 0], "y": y}),
        "path": "data.csv",
        "triple": (x, y, np.ones(8)),
    }[data]
    with pytest.raises(MemtuneError) as info:
        memtune.fit("no-model.keras", given, sample_weight=weights)
    assert said in str(info.value)


@pytest.mark.slow
def test_model_fit_keywords_train_and_a_history_comes_back() -> None:
    """validation_data as an (x, y) pair, class_weight, initial_epoch, epochs's default."""
    import keras

    x, y = arrays(256)
    xv, yv = arrays(64, seed=1)
    history = memtune.fit(
        tiny_model(),
        (x, y),
        epochs=3,
        initial_epoch=1,
        validation_data=(xv, yv),
        class_weight={0: 1.0, 1: 2.0},
        budget="2GiB",
        analytic=True,
        verbose=0,
    )
    assert isinstance(history, keras.callbacks.History)
    assert history.epoch == [1, 2]
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["val_loss"]) == 2
    assert history.model is not None and history.plan.num_samples == 256
    assert history.peak_bytes > 0 and history.to_json()["plan"]["num_samples"] == 256
    once = memtune.fit(tiny_model(), (x, y), budget="2GiB", analytic=True, verbose=0)
    assert once.epoch == [0]  # epochs defaults to 1, as in model.fit


@pytest.mark.slow
def test_class_weight_reaches_each_training_row_and_not_validation() -> None:
    """Rows weigh their class's weight (times a length bucket's weight), as Keras's
    class_weight makes them; validation stays unweighted."""
    import pandas as pd

    from memtune.core.signatures import ModelSignature, TensorSpec
    from memtune.data.batch_sources import InMemoryBatches
    from memtune.data.footprint import footprint
    from memtune.data.scan import scan
    from memtune.run.feed import KerasFeed

    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1], "int32")
    info = scan(pd.DataFrame({"x": np.arange(8.0), "y": labels}))
    sig = ModelSignature((TensorSpec("x", (None,)),), (TensorSpec("y", (None,)),))
    fp = footprint(sig, info, targets=["y"])
    feed = KerasFeed(fp, class_weight={0: 0.5, 2: 3.0})  # class 1 unnamed: weight 1
    batches = InMemoryBatches({"x": np.arange(8.0, dtype="float32")}, {"y": labels}, 3)
    weights = np.concatenate([w.numpy() for _, _, w in feed.stream(batches, training=True)])
    assert weights.tolist() == [0.5, 1.0, 3.0, 1.0, 0.5, 3.0, 3.0, 1.0]
    assert all(len(e) == 2 for e in feed.stream(batches))


@pytest.mark.slow
def test_ragged_sequences_in_a_numpy_object_array_are_read_like_a_list_column() -> None:
    import keras

    x = keras.Input((None,), dtype="int32", name="seq")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 4)(x))
    model = keras.Model(x, keras.layers.Dense(1, name="y")(h))
    model.compile("adam", "mse")
    rows = np.empty(60, dtype=object)
    for i in range(60):
        rows[i] = list(range(1, 2 + i % 7))  # 1 to 7 tokens
    y = np.arange(60, dtype="float32")
    plan = memtune.suggest(model, (rows, y), budget="2GiB", analytic=True)
    assert plan.per_sample_bytes == 7 * 4 + 4  # padded to the longest, then the target
    rows[5] = "abc"
    with pytest.raises(MemtuneError, match=r"x row 5: expected a sequence of numbers"):
        memtune.suggest(model, (rows, y), budget="2GiB", analytic=True)


@pytest.mark.slow
def test_row_weights_reach_keras_and_leave_validation_alone() -> None:
    """All-zero weights make the training loss 0 (Keras averages w * loss over the batch),
    while validation, unweighted, still measures; a column of weights is fed as one."""
    import pandas as pd

    x, y = arrays(200)
    zero = memtune.fit(
        tiny_model(), (x, y, np.zeros(200)), epochs=2, validation_split=0.25,
        budget="2GiB", analytic=True, verbose=0,
    )  # fmt: skip
    assert zero.history["loss"] == [0.0, 0.0]
    assert all(v > 0 for v in zero.history["val_loss"])
    assert zero.plan.per_sample_bytes == 4 * 4 + 4 + 4  # x, y and the row's weight
    frame = pd.DataFrame({"x": list(x), "y": y, "w": np.ones(200)})
    ones = memtune.fit(
        tiny_model(), frame, sample_weight="w", target="y", budget="2GiB", analytic=True,
        verbose=0,
    )  # fmt: skip
    assert ones.history["loss"][0] > 0
    same = memtune.fit(
        tiny_model(), (x, y), sample_weight=np.ones(200), budget="2GiB", analytic=True,
        verbose=0,
    )  # fmt: skip
    assert same.history["loss"][0] == pytest.approx(ones.history["loss"][0], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("batched", [True, False])
def test_validation_data_may_be_a_tf_data_pipeline(batched: bool) -> None:
    import tensorflow as tf

    x, y = arrays(128)
    xv, yv = arrays(48, seed=2)
    pipeline = tf.data.Dataset.from_tensor_slices((xv, yv))
    history = memtune.fit(
        tiny_model(), (x, y), epochs=2, budget="2GiB", analytic=True, verbose=0,
        validation_data=pipeline.batch(16) if batched else pipeline,
    )  # fmt: skip
    assert len(history.history["val_loss"]) == 2
    model = history.model
    expected = model.evaluate(xv, yv, verbose=0, batch_size=48)[0]
    assert history.history["val_loss"][-1] == pytest.approx(expected, rel=1e-4)
