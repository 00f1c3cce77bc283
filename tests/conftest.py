"""Shared helpers: real files for shards, real model factories, NVML scenarios."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sigint_reaches_child() -> None:
    """``preexec_fn`` for a child a test Ctrl-Cs: a test run started as ``cmd &`` by a
    non-interactive shell ignores SIGINT, and its children inherit that (Python then installs
    no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_csv_shards(
    folder: Path, frames: list[pd.DataFrame], names: list[str] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        name = names[i] if names else f"{i}.csv"
        frame.to_csv(folder / name, index=False)
    return folder


def write_factory(path: Path, body: str, name: str = "build") -> str:
    """Write a model factory file; returns the ``file.py:function`` spec."""
    source = (
        "import keras\n\n\ndef " + name + "():\n" + textwrap.indent(textwrap.dedent(body), "    ")
    )
    path.write_text(source)
    return f"{path}:{name}"


@pytest.fixture(autouse=True)
def _private_trial_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never read or write the user's trial cache."""
    monkeypatch.setenv("MEMTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def seq_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": [[0.5, 1.0], [2.0], [1.5, 2.5, 3.5, 4.5]],
            "b": [[1, 2, 3], [4], []],
            "x": [1.0, 2.0, 3.0],
            "answer": [0, 1, 0],
        }
    )


class MemoryCgroup:
    """A memory cgroup a test made (v1 or v2), removed afterwards. ``enter`` moves the
    calling process in: a ``preexec_fn``, so a child starts inside it."""

    def __init__(self, folder: Path, version: int) -> None:
        self.folder, self.version = folder, version

    def set_limit(self, limit: int) -> None:
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        (self.folder / name).write_text(str(limit))

    def enter(self) -> None:
        (self.folder / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.folder / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        import contextlib
        import time

        for _ in range(50):  # the kernel frees an emptied group a moment after its last exit
            with contextlib.suppress(OSError):
                self.folder.rmdir()
                return
            time.sleep(0.1)


def _make_memory_cgroup(name: str) -> MemoryCgroup | str:
    """A fresh memory cgroup under this process's own, or why not (a skip reason)."""
    from memtune.probe.host import CGROUP_ROOT, own_cgroups

    v2, v1 = own_cgroups()
    tried = []
    if v1 is not None and (CGROUP_ROOT / "memory").is_dir():
        folder = CGROUP_ROOT / "memory" / v1.strip("/") / name
        try:
            folder.mkdir()
            return MemoryCgroup(folder, 1)
        except OSError as exc:
            tried.append(f"v1 {folder}: {exc.strerror}")
    if v2 is not None and (CGROUP_ROOT / "cgroup.controllers").is_file():
        folder = CGROUP_ROOT / v2.strip("/") / name
        try:
            folder.mkdir()
        except OSError as exc:
            tried.append(f"v2 {folder}: {exc.strerror}")
        else:
            if (folder / "memory.max").is_file():
                return MemoryCgroup(folder, 2)
            folder.rmdir()
            tried.append(f"v2 {folder}: no memory controller delegated")
    return "cannot make a memory cgroup here (" + ("; ".join(tried) or "no cgroup mount") + ")"


@pytest.fixture
def memory_cgroup(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A memory cgroup for this test, or the test is skipped saying why."""
    import re

    test = re.sub(r"[^\w-]", "_", request.node.name)[:40]
    made = _make_memory_cgroup(f"memtune-test-{os.getpid()}-{test}")
    if isinstance(made, str):
        pytest.skip(made)
    yield made
    made.remove()


SIZES = [7, 1, 12, 3, 0, 9, 5, 2, 8, 4, 6, 11]  # uneven, one empty, numbered past 10


def id_shards(folder: Path, sizes: list[int] = SIZES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        ids = np.arange(start, start + n)
        frame = pd.DataFrame(
            {"id": ids, "seq": [[int(v)] * int(v % 5 + 1) for v in ids], "answer": ids % 2}
        )
        frame.to_csv(folder / f"{i}.csv", index=False)
        start += n
    return folder


FACTORY = """
ids = keras.Input((1,), name="id")
seq = keras.Input((None,), dtype="int32", name="seq")
x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(128, 4)(seq))
x = keras.layers.Concatenate()([x, ids])
model = keras.Model({"id": ids, "seq": seq}, keras.layers.Dense(1, name="answer")(x))
model.compile("adam", "mse")
return model
"""


def recording_model(seen: list[int]) -> Any:
    """A model whose first layer records the ids it is trained on (eagerly)."""
    import keras

    class Record(keras.layers.Layer):
        def call(self, x: Any, training: bool = False) -> Any:
            if training:
                seen.extend(int(v) for v in np.asarray(x).reshape(-1))
            return x

    ids = keras.Input((1,), name="id")
    model = keras.Model(ids, keras.layers.Dense(1, name="answer")(Record()(ids)))
    model.compile("sgd", "mse", run_eagerly=True)
    return model


def exhaust_at(steps: set[tuple[int, int]] | None) -> Any:
    """A callback that raises TensorFlow's out-of-memory error before chosen (epoch, step)s
    (each once), or before every step (None)."""
    import keras
    import tensorflow as tf

    class Exhaust(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if steps is None or (self.epoch, batch) in steps:
                if steps is not None:
                    steps.discard((self.epoch, batch))
                raise tf.errors.ResourceExhaustedError(None, None, "OOM (injected)")

    return Exhaust()


ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def text_of(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=90, force_terminal=False, color_system=None).print(renderable)
    return "\n".join(line.rstrip() for line in ANSI.sub("", out.getvalue()).splitlines()) + "\n"


def screen_of(output: str, width: int = 100, height: int = 30) -> list[str]:
    """What a VT terminal shows after ``output`` (the tty turns \\n into \\r\\n)."""
    import pyte

    screen = pyte.Screen(width, height)
    pyte.Stream(screen).feed(output.replace("\n", "\r\n"))
    return [line.rstrip() for line in screen.display if line.strip()]


MODEL = """
a = keras.Input((2,), name="a")
b = keras.Input((None,), dtype="int32", name="b")
e = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 2)(b))
x = keras.layers.Concatenate()([a, e])
model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1, name="answer")(x))
model.compile("adam", "mse")
return model
"""


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs mounted on ``folder`` (a full disk, or a read-only one), where the
    machine lets the test mount; else the test is skipped, saying why."""
    folder.mkdir(parents=True, exist_ok=True)
    flags = f"{'ro,' if read_only else ''}size={size}"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", flags, "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
