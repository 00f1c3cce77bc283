"""The seed-shaped example: numbered CSV shards with list cells and a named-input model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from memtune.core.errors import MemtuneError

MARKER = ".memtune-demo"
NUM_SHARDS = 12  # more than ten, so 10.csv must come after 2.csv
CLICKS_LEN = 30  # declared by the model; the data holds up to 60, so some are truncated
MODEL_SOURCE = f'''"""The demo model: two named sequence inputs, one output named as the target."""

import keras


def build_model() -> keras.Model:
    clicks = keras.Input(shape=({CLICKS_LEN},), name="clicks")  # fixed length: truncates
    items = keras.Input(shape=(None,), dtype="int32", name="items")  # None: longest or --maxlen
    a = keras.layers.Reshape(({CLICKS_LEN}, 1))(clicks)
    a = keras.layers.GRU(32)(a)
    b = keras.layers.Embedding(1000, 16)(items)
    b = keras.layers.GRU(32)(b)
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.Dense(16, activation="relu")(x)
    answer = keras.layers.Dense(1, activation="sigmoid", name="answer")(x)
    model = keras.Model(inputs={{"clicks": clicks, "items": items}}, outputs=answer)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model
'''


def make_shard(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    clicks, items, answers = [], [], []
    for _ in range(rows):
        n = int(rng.integers(1, 61))
        values = np.round(rng.random(n), 3)
        clicks.append([float(v) for v in values])
        items.append([int(v) for v in rng.integers(1, 1000, int(rng.integers(1, 41)))])
        answers.append(int(values[-CLICKS_LEN:].mean() > 0.5))
    return pd.DataFrame({"clicks": clicks, "items": items, "answer": answers})


def write_demo(directory: Path, *, seed: int = 0) -> Path:
    """Write the example into ``directory`` atomically; refuse a folder memtune did not make."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise MemtuneError(
            f"demo folder {str(directory)!r} already holds files memtune did not write; "
            "name an empty or new folder"
        )
    rng = np.random.default_rng(seed)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".memtune-demo-", dir=directory.parent))
    try:
        shards = staging / "shards"
        shards.mkdir()
        for i in range(NUM_SHARDS):
            make_shard(rng, int(rng.integers(250, 400))).to_csv(shards / f"{i}.csv", index=False)
        (staging / "model.py").write_text(MODEL_SOURCE)
        (staging / MARKER).write_text("written by memtune demo\n")
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
