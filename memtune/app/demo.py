"""The examples ``memtune demo`` writes: the seed-shaped one (numbered CSV shards with list
cells and a named-input model) and, with ``--images``, a folder of PNG images in class
folders with a small convnet."""

from __future__ import annotations

import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
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


IMAGE_SIZE = 32
IMAGE_CLASSES = ("checks", "columns", "rows")  # a pattern each: what the convnet learns
IMAGES_PER_CLASS = 160
IMAGE_MODEL_SOURCE = f'''"""The image demo's model: a small convnet on uint8 RGB images."""

import keras


def build_model() -> keras.Model:
    image = keras.Input(shape=({IMAGE_SIZE}, {IMAGE_SIZE}, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255)(image)  # the model casts: images stay 1 B a value
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    label = keras.layers.Dense({len(IMAGE_CLASSES)}, activation="softmax", name="label")(x)
    model = keras.Model(image, label)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
'''


@dataclass(frozen=True)
class Example:
    """What the demo plans and trains: where, and the CLI's words for it."""

    data: Path
    model: str
    target: tuple[str, ...]
    wrote: str
    max_batch_size: int | None = None
    epochs: int = 2


def png(image: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG bytes (no imaging library needed)."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header), chunk(b"IDAT", zlib.compress(raw)),
         chunk(b"IEND", b""))
    )  # fmt: skip


def _pattern(rng: np.random.Generator, kind: int) -> np.ndarray:
    """One noisy image of pattern ``kind``: checks, columns or rows of random pitch."""
    pitch = int(rng.integers(2, 6))
    grid = np.indices((IMAGE_SIZE, IMAGE_SIZE)) // pitch
    on = [(grid[0] + grid[1]) % 2, grid[1] % 2, grid[0] % 2][kind].astype(np.float64)
    color = rng.uniform(80, 255, 3)
    noisy = on[..., None] * color + rng.normal(0, 40, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


_IMAGES = Example(
    Path("images"),
    "model.py:build_model",
    (),
    f"{len(IMAGE_CLASSES) * IMAGES_PER_CLASS} PNG images in {len(IMAGE_CLASSES)} class "
    "folders, and model.py",
    epochs=4,  # 16 steps an epoch (the step floor): the patterns are learnt by the fourth
)
_SHARDS = Example(
    Path("shards"),
    "model.py:build_model",
    ("answer",),
    f"{NUM_SHARDS} CSV shards with list cells, and model.py",
    max_batch_size=256,
)


def _write_images(staging: Path, rng: np.random.Generator) -> None:
    for kind, name in enumerate(IMAGE_CLASSES):
        folder = staging / "images" / name
        folder.mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            (folder / f"{i}.png").write_bytes(png(_pattern(rng, kind)))
    (staging / "model.py").write_text(IMAGE_MODEL_SOURCE)


def _write_shards(staging: Path, rng: np.random.Generator) -> None:
    shards = staging / "shards"
    shards.mkdir()
    for i in range(NUM_SHARDS):
        make_shard(rng, int(rng.integers(250, 400))).to_csv(shards / f"{i}.csv", index=False)
    (staging / "model.py").write_text(MODEL_SOURCE)


def make_shard(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    clicks, items, answers = [], [], []
    for _ in range(rows):
        n = int(rng.integers(1, 61))
        values = np.round(rng.random(n), 3)
        clicks.append([float(v) for v in values])
        items.append([int(v) for v in rng.integers(1, 1000, int(rng.integers(1, 41)))])
        answers.append(int(values[-CLICKS_LEN:].mean() > 0.5))
    return pd.DataFrame({"clicks": clicks, "items": items, "answer": answers})


def write_demo(directory: Path, *, seed: int = 0, images: bool = False) -> Path:
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
    write: Callable[[Path, np.random.Generator], None] = _write_images if images else _write_shards
    try:
        write(staging, rng)
        (staging / MARKER).write_text("written by memtune demo\n")
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def example_in(directory: Path, *, images: bool = False) -> Example:
    """The example :func:`write_demo` wrote into ``directory``, its paths under it."""
    example = _IMAGES if images else _SHARDS
    model = f"{directory / example.model}"
    return replace(example, data=directory / example.data, model=model)
