"""How right is memtune's predicted peak, and does the budget hold? Thirteen models (the
streaming one twice: in row groups as pyarrow writes them, and of 8,192 rows), three budgets.

Everything is measured as the budget counts it: the memory memtune's whole process tree
holds (anonymous and shared pages plus page tables, ``/proc/PID/status``), polled from
outside every 5 ms. For each (model, budget), with a fresh trial cache: ``memtune suggest``
(trials) gives a plan while its tree (planning process + trial children) is polled;
``memtune fit`` then trains at exactly that plan (forced ``--batch-size`` and ``--mode``) in
a fresh process for at least three epochs and 10 steps (memory that grows from epoch to
epoch shows; a trial trains the first epochs only), its tree polled the same way. The
analytic prior's prediction at the same batch is printed beside it, so the gain of
measuring shows.

Then, unless ``--only`` narrows the run: a **neighbour row** (``fit`` at a plan while another
process takes 3 GiB in 256 MiB steps: the batch must not change) and **cgroup rows** (``fit``
with no ``--budget`` inside a 1 GiB memory cgroup on a fresh page cache: no OOM kill, and
the plan uses at least 0.8 of the budget the group allows after the reserve).

A plan under 0.85 of the usable budget that the dataset does not cap is checked against the
model's own curve: ``fit`` runs at larger batches, 5 % apart (at most four), until one
reads more than the usable budget. If none landed between 0.85 and 1.00 of it, the curve
caps the batch (a measured cliff, e.g. oneDNN's cost of a small last batch); if one did,
the plan left that memory unused and the row misses. A ``fit`` its watchdog stops is a
row too (its tree's peak until then, its last line), not the end of the run.

    python scripts/bench_estimate.py [--json] [--only NAME] [--budget GIB] [--extras]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from memtune.probe import process

GiB = 1024**3
MiB = 1024**2
BUDGETS = (1.0 * GiB, 1.25 * GiB, 2.0 * GiB)
FULL = 0.85  # a plan the dataset does not cap should reach this share of the usable budget
CHECK_STEP = 1.05  # the curve check's batches: this factor apart
CHECKS = 4

# What users train: keras-io-style text, sequence and tabular models on data shaped like theirs.
MODELS: dict[str, str] = {
    "mlp": """
x = keras.Input((512,), name="x")
h = keras.layers.Dense(2048, activation="relu")(x)
h = keras.layers.Dense(2048, activation="relu")(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "conv2d": """
x = keras.Input((3072,), name="pixels")
h = keras.layers.Reshape((32, 32, 3))(x)
h = keras.layers.Conv2D(16, 3, activation="relu")(h)
h = keras.layers.Conv2D(32, 3, activation="relu")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "gru": """
x = keras.Input((200,), name="history")
h = keras.layers.Reshape((200, 1))(x)
h = keras.layers.GRU(64)(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "text-cnn": """
x = keras.Input((None,), dtype="int32", name="tokens")
h = keras.layers.Embedding(20000, 128)(x)
h = keras.layers.Conv1D(128, 7, strides=3, activation="relu")(h)
h = keras.layers.Conv1D(128, 7, strides=3, activation="relu")(h)
h = keras.layers.GlobalMaxPooling1D()(h)
model = keras.Model(x, keras.layers.Dense(1, activation="sigmoid", name="answer")(h))
""",
    "bilstm": """
x = keras.Input((None,), dtype="int32", name="tokens")
h = keras.layers.Embedding(20000, 128)(x)
h = keras.layers.Bidirectional(keras.layers.LSTM(64, return_sequences=True))(h)
h = keras.layers.Bidirectional(keras.layers.LSTM(64))(h)
model = keras.Model(x, keras.layers.Dense(1, activation="sigmoid", name="answer")(h))
""",
    "transformer": """
x = keras.Input((None,), dtype="int32", name="tokens")
h = keras.layers.Embedding(20000, 64)(x)
a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=32)(h, h)
h = keras.layers.LayerNormalization()(h + a)
f = keras.layers.Dense(128, activation="relu")(h)
h = keras.layers.LayerNormalization()(h + keras.layers.Dense(64)(f))
h = keras.layers.GlobalAveragePooling1D()(h)
model = keras.Model(x, keras.layers.Dense(1, activation="sigmoid", name="answer")(h))
""",
    "conv1d-series": """
x = keras.Input((500,), name="signal")
h = keras.layers.Reshape((500, 1))(x)
h = keras.layers.Conv1D(64, 5, activation="relu")(h)
h = keras.layers.MaxPooling1D(2)(h)
h = keras.layers.Conv1D(64, 5, activation="relu")(h)
h = keras.layers.GlobalAveragePooling1D()(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "wide-mlp": """
x = keras.Input((2000,), name="x")
h = keras.layers.Dense(1024, activation="relu")(x)
h = keras.layers.Dropout(0.2)(h)
h = keras.layers.Dense(1024, activation="relu")(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "embedding-lstm": """
x = keras.Input((None,), dtype="int32", name="tokens")
h = keras.layers.Embedding(5000, 64)(x)
h = keras.layers.LSTM(64)(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "multi-input": """
clicks = keras.Input((60,), name="clicks")
items = keras.Input((None,), dtype="int32", name="items")
a = keras.layers.GRU(32)(keras.layers.Reshape((60, 1))(clicks))
b = keras.layers.GRU(32)(keras.layers.Embedding(1000, 16)(items))
h = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b]))
model = keras.Model({"clicks": clicks, "items": items}, keras.layers.Dense(1, name="answer")(h))
""",
    "multi-output": """
x = keras.Input((256,), name="x")
h = keras.layers.Dense(2048, activation="relu")(x)
h = keras.layers.Dense(1024, activation="relu")(h)
y1 = keras.layers.Dense(1, name="y1")(h)
y2 = keras.layers.Dense(4, name="y2")(h)
model = keras.Model(x, {"y1": y1, "y2": y2})
""",
    "streaming-mlp": """
x = keras.Input((256,), name="x")
h = keras.layers.Dense(512, activation="relu")(x)
h = keras.layers.Dense(256, activation="relu")(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
}
# Convolutional models on N-D samples: uint8 images from a folder of PNGs in class folders,
# audio spectrograms from numbered .npy shards.
MODELS["convnet"] = """
x = keras.Input((32, 32, 3), dtype="uint8", name="image")
h = keras.layers.Rescaling(1 / 255)(x)
h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
h = keras.layers.MaxPooling2D()(h)
h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
h = keras.layers.MaxPooling2D()(h)
h = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(x, keras.layers.Dense(10, activation="softmax", name="answer")(h))
"""
MODELS["resnet"] = """
x = keras.Input((32, 32, 3), dtype="uint8", name="image")
h = keras.layers.Conv2D(32, 3, padding="same")(keras.layers.Rescaling(1 / 255)(x))
for filters in (32, 64, 128):
    skip = keras.layers.Conv2D(filters, 1, strides=2)(h)
    h = keras.layers.Conv2D(filters, 3, strides=2, padding="same")(h)
    h = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(h))
    h = keras.layers.BatchNormalization()(keras.layers.Conv2D(filters, 3, padding="same")(h))
    h = keras.layers.Activation("relu")(keras.layers.Add()([h, skip]))
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(x, keras.layers.Dense(10, activation="softmax", name="answer")(h))
"""
MODELS["separable"] = """
x = keras.Input((32, 32, 3), dtype="uint8", name="image")
h = keras.layers.Rescaling(1 / 255)(x)
h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
h = keras.layers.SeparableConv2D(64, 3, padding="same", activation="relu")(h)
h = keras.layers.MaxPooling2D()(h)
h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(h)
h = keras.layers.SeparableConv2D(128, 3, padding="same", activation="relu")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(x, keras.layers.Dense(10, activation="softmax", name="answer")(h))
"""
MODELS["audio-conv1d"] = """
x = keras.Input((128, 40), name="audio")
h = keras.layers.Conv1D(64, 5, activation="relu")(x)
h = keras.layers.MaxPooling1D(2)(h)
h = keras.layers.Conv1D(128, 5, activation="relu")(h)
h = keras.layers.GlobalAveragePooling1D()(h)
model = keras.Model(x, keras.layers.Dense(10, activation="softmax", name="answer")(h))
"""
IMAGE_MODELS = ("convnet", "resnet", "separable")
CONV_BUDGETS = (1.0 * GiB, 2.0 * GiB)  # the convolutional rows' two budgets
MODELS["streaming-mlp-8k"] = MODELS["streaming-mlp"]
TARGETS = {"multi-output": ["y1", "y2"]}
MAXLEN = {"text-cnn": 500, "bilstm": 200, "transformer": 200}
LOSS = {
    **dict.fromkeys((*IMAGE_MODELS, "audio-conv1d"), "sparse_categorical_crossentropy"),
    "text-cnn": "binary_crossentropy",
    "bilstm": "binary_crossentropy",
    "transformer": "binary_crossentropy",
}


def token_lists(rng: np.random.Generator, n: int, vocab: int) -> Any:
    """Token ids as users have them: long-tailed lengths (lognormal, median ~170, tail to
    2,500) and Zipf-distributed ids (a few very common tokens, a long tail of rare ones)."""
    lengths = np.clip(rng.lognormal(np.log(170), 0.75, n).astype(np.int64), 5, 2500)
    ids = np.minimum(rng.zipf(1.2, int(lengths.sum())), vocab - 1).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))


def float_lists(rng: np.random.Generator, n: int, width: int) -> Any:
    values = rng.standard_normal(n * width).astype(np.float32)
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def write_data(name: str, folder: Path, rng: np.random.Generator) -> Path:
    """Shards shaped like the users' own: Parquet for wide and token data, CSV with list
    cells for the small sequence models."""
    folder.mkdir(parents=True)

    def lists(n: int, width: int, ints: bool = False, ragged: bool = False) -> list[list[Any]]:
        out = []
        for _ in range(n):
            k = int(rng.integers(1, width + 1)) if ragged else width
            out.append(
                [int(v) for v in rng.integers(1, 1000, k)]
                if ints
                else [round(float(v), 3) for v in rng.random(k)]
            )
        return out

    def parquet(shards: int, rows: int, columns: dict[str, Any], group: int | None = None) -> None:
        for i in range(shards):
            table = pa.table({k: (v(rows) if callable(v) else v) for k, v in columns.items()})
            pq.write_table(table, folder / f"{i}.parquet", row_group_size=group)

    def csv(shards: int, rows: int, columns: dict[str, Any]) -> None:
        for i in range(shards):
            pd.DataFrame({k: v(rows) for k, v in columns.items()}).to_csv(
                folder / f"{i}.csv", index=False
            )

    answer = lambda n: rng.integers(0, 2, n)  # noqa: E731
    if name in IMAGE_MODELS:  # 4,000 PNGs, 32 × 32 RGB, in 10 class folders
        from memtune.app.demo import png

        for c in range(10):
            (folder / f"class{c}").mkdir()
            for i in range(400):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                (folder / f"class{c}" / f"{i}.png").write_bytes(png(pixels))
    elif name == "audio-conv1d":  # 8 shards of 1,000 spectrograms, 128 frames × 40 bands
        (folder / "audio").mkdir()
        (folder / "answer").mkdir()
        for i in range(8):
            np.save(folder / "audio" / f"{i}.npy", rng.standard_normal((1000, 128, 40), np.float32))
            np.save(folder / "answer" / f"{i}.npy", rng.integers(0, 10, 1000))
    elif name == "mlp":
        parquet(6, 2500, {"x": lambda n: float_lists(rng, n, 512), "answer": answer})
    elif name == "conv2d":
        parquet(4, 500, {"pixels": lambda n: float_lists(rng, n, 3072), "answer": answer})
    elif name == "gru":
        csv(8, 400, {"history": lambda n: lists(n, 200, ragged=True), "answer": answer})
    elif name in ("text-cnn", "bilstm", "transformer"):
        rows = {"text-cnn": 1500, "bilstm": 500, "transformer": 1000}[name]
        parquet(4, rows, {"tokens": lambda n: token_lists(rng, n, 20000), "answer": answer})
    elif name == "conv1d-series":
        parquet(4, 2000, {"signal": lambda n: float_lists(rng, n, 500), "answer": answer})
    elif name == "wide-mlp":
        parquet(4, 2000, {"x": lambda n: float_lists(rng, n, 2000), "answer": answer})
    elif name == "embedding-lstm":
        csv(8, 400, {"tokens": lambda n: lists(n, 150, ints=True, ragged=True), "answer": answer})
    elif name == "multi-input":
        csv(
            10,
            500,
            {
                "clicks": lambda n: lists(n, 80, ragged=True),
                "items": lambda n: lists(n, 50, ints=True, ragged=True),
                "answer": answer,
            },
        )
    elif name == "streaming-mlp":  # 1.6M rows × 256 floats: 1.6 GiB padded, over both budgets
        # pyarrow's default: each 100,000-row shard is one row group, read whole
        parquet(16, 100_000, {"x": lambda n: float_lists(rng, n, 256), "answer": answer})
    elif name == "streaming-mlp-8k":  # the same data in row groups of 8,192 rows
        columns = {"x": lambda n: float_lists(rng, n, 256), "answer": answer}
        parquet(16, 100_000, columns, group=8192)
    else:
        parquet(
            6,
            2500,
            {
                "x": lambda n: float_lists(rng, n, 256),
                "y1": lambda n: rng.random(n),
                "y2": lambda n: float_lists(rng, n, 4),
            },
        )
    return folder


def factory(name: str, folder: Path) -> str:
    body = MODELS[name].strip().replace("\n", "\n    ")
    path = folder / f"{name.replace('-', '_')}.py"
    loss = LOSS.get(name, "mse")
    path.write_text(
        f"import keras\n\n\ndef build():\n    {body}\n    model.compile('adam', {loss!r})\n"
        "    return model\n"
    )
    return f"{path}:build"


def _poll_tree(pid: int, done: threading.Event, peak: list[int]) -> None:
    """``peak[0]``: the most ``pid``'s tree held at once, polled every 5 ms until ``done``."""
    with contextlib.suppress(psutil.Error):
        while not done.is_set():
            peak[0] = max(peak[0], process.tree_held(pid))
            time.sleep(0.005)


class NothingFits(Exception):
    """memtune refused: even batch 1 would pass the budget (exit 3)."""


class RunFailed(Exception):
    """memtune exited 1 (a ``fit`` its watchdog stopped): its last line and its tree's peak."""

    def __init__(self, line: str, peak: int) -> None:
        super().__init__(line)
        self.peak = peak


def run_measured(
    *args: str, cache: str, preexec_fn: Callable[[], None] | None = None
) -> tuple[dict[str, Any], int]:
    """Run the CLI in a fresh process: its JSON and the most its whole process tree (parent
    + trial children) held at once, polled every 5 ms."""
    env = {**os.environ, "MEMTUNE_CACHE_DIR": cache}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memtune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=preexec_fn,
    )
    peak, done = [0], threading.Event()
    sampler = threading.Thread(target=_poll_tree, args=(proc.pid, done, peak), daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode == 3:  # the contract's "nothing fits": a result, not a failure
        raise NothingFits(err.strip().splitlines()[-1])
    if proc.returncode == 1 and args[0] == "fit":  # a row's result: the run stopped
        raise RunFailed((err.strip().splitlines() or [""])[-1], peak[0])
    if proc.returncode != 0:
        raise SystemExit(
            f"memtune {' '.join(args)} failed ({proc.returncode}): {err.strip()[-500:]}"
        )
    return json.loads(out), peak[0]


def epochs_for(steps: int) -> int:
    """A training run, not one step: at least as many steps as a trial may take (a batch
    capped by the dataset is one step per epoch), over at least three epochs."""
    return max(3, -(-10 // steps))


def fit_peak(inputs: list[str], plan: dict[str, Any], cache: str, batch: int) -> int:
    """``fit``'s peak at a forced batch (:func:`epochs_for` its steps), under a budget the
    host can give so the watchdog leaves the batch alone."""
    steps = -(-plan["num_samples"] // batch)
    _, peak = run_measured(
        "fit",
        *inputs,
        "--budget",
        "12GiB",
        "--max-batch-size",
        str(10**9),
        "--buckets",
        "off",
        "--batch-size",
        str(batch),
        "--mode",
        plan["mode"],
        "--epochs",
        str(epochs_for(steps)),
        "--json",
        cache=cache,
    )
    return peak


def curve_check(
    fit: Callable[[int], int], plan: dict[str, Any], usable: int
) -> tuple[str | None, list[dict[str, Any]]]:
    """Whether the model's own curve caps a plan under ``FULL`` of ``usable``: ``fit`` at
    batches ``CHECK_STEP`` apart above it (``fit(batch)`` → its peak) until one reads more
    than ``usable``. "curve" when none landed in [FULL, 1] of it, None when one did (the plan
    left that memory unused) or none passed it within ``CHECKS`` batches."""
    checks: list[dict[str, Any]] = []
    batch = plan["batch_size"]
    for _ in range(CHECKS):
        batch = min(plan["num_samples"], max(batch + 1, round(batch * CHECK_STEP)))
        share = fit(batch) / usable
        checks.append({"batch_size": batch, "peak_over_usable": round(share, 3)})
        if FULL <= share <= 1.0:
            return None, checks
        if share > 1.0:
            return "curve", checks
        if batch >= plan["num_samples"]:
            return "dataset", checks
    return None, checks


# ----------------------------------------------------------------- a neighbour, a cgroup

HOG = """
import sys, time
step, pause, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
held = []
while len(held) * step < limit:
    block = bytearray(step)
    block[::4096] = b"\\x01" * len(range(0, step, 4096))  # touch every page
    held.append(block)
    print(len(held) * step, flush=True)
    time.sleep(pause)
sys.stdin.read()  # hold it until the bench closes stdin
"""


def neighbour_row(tmp: Path, rng: np.random.Generator) -> dict[str, Any]:
    """``fit`` at mlp's 1.25 GiB plan while another process takes 3 GiB in 256 MiB steps,
    one a second: the budget is memtune's own cap, so the batch must not change."""
    from memtune.probe.host import RESERVE_BYTES, available_bytes

    need = 3 * GiB + RESERVE_BYTES + 2 * GiB
    if available_bytes() < need:
        return {"skipped": f"under {need / GiB:.1f} GiB available"}
    folder = tmp / "neighbour"
    data, model = write_data("mlp", folder / "data", rng), factory("mlp", folder)
    inputs = ["--model", model, "--data", str(data), "--budget", "1.25GiB", "--buckets", "off"]
    cache = str(folder / "cache")
    plan, _ = run_measured("suggest", *inputs, "--max-batch-size", str(10**9), "--json",
                           cache=cache)  # fmt: skip
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, str(256 * MiB), "1.0", str(3 * GiB)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        forced = ["--batch-size", str(plan["batch_size"]), "--mode", plan["mode"]]
        steps = -(-plan["num_samples"] // plan["batch_size"])
        epochs = str(max(6, epochs_for(steps)))  # long enough for the hog to take it all
        fitted, peak = run_measured("fit", *inputs, *forced, "--epochs", epochs, "--json",
                                    cache=cache)  # fmt: skip
    finally:
        assert hog.stdin is not None and hog.stdout is not None
        hog.stdin.close()
        taken = [int(line) for line in hog.stdout.read().split()]
        hog.wait(timeout=60)
    return {
        "model": "mlp",
        "budget_gib": 1.25,
        "batch_size": plan["batch_size"],
        "neighbour_took": max(taken, default=0),
        "fit_seconds": fitted["seconds"],
        "batch_changes": fitted["batch_size_changes"],
        "fit_tree_over_budget": round(peak / plan["budget_bytes"], 3),
    }


def _memory_cgroup(limit: int) -> tuple[Path, Callable[[], None]] | str:
    """A fresh memory cgroup of ``limit`` bytes under this process's own (v1 or v2), and a
    ``preexec_fn`` that moves a child into it; or why not."""
    from memtune.probe.host import CGROUP_ROOT, own_cgroups

    v2, v1 = own_cgroups()
    candidates = []
    if v1 is not None:
        candidates.append((CGROUP_ROOT / "memory" / v1.strip("/"), "memory.limit_in_bytes"))
    if v2 is not None:
        candidates.append((CGROUP_ROOT / v2.strip("/"), "memory.max"))
    for parent, limit_file in candidates:
        folder = parent / f"memtune-bench-{os.getpid()}-{time.monotonic_ns()}"
        try:
            folder.mkdir()
            (folder / limit_file).write_text(str(limit))
        except OSError:
            with contextlib.suppress(OSError):
                folder.rmdir()
            continue

        def enter(folder: Path = folder) -> None:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

        return folder, enter
    return "no memory cgroup can be made here (root and a writable cgroup mount are needed)"


def _oom_kills(folder: Path) -> int:
    for name in ("memory.oom_control", "memory.events"):
        with contextlib.suppress(OSError):
            for line in (folder / name).read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    return 0


CGROUP_CASES = ("demo", "multi-input", "mlp")


def cgroup_rows(tmp: Path, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``fit`` with no ``--budget`` inside a 1 GiB memory cgroup, the page cache dropped
    first (a fresh container): never OOM-killed, the plan at least 0.8 of its budget."""
    from memtune.app.demo import write_demo

    rows: list[dict[str, Any]] = []
    for name in CGROUP_CASES:
        folder = tmp / f"cgroup-{name}"
        if name == "demo":  # the seed-shaped shards README starts from
            write_demo(folder)
            inputs = ["--model", f"{folder / 'model.py'}:build_model", "--data",
                      str(folder / "shards"), "--target", "answer"]  # fmt: skip
        else:
            data, model = write_data(name, folder / "data", rng), factory(name, folder)
            inputs = ["--model", model, "--data", str(data)]
        made = _memory_cgroup(GiB)
        if isinstance(made, str):
            return [{"skipped": made}]
        group, enter = made
        fresh = True
        try:
            subprocess.run(["sync"], check=False)
            Path("/proc/sys/vm/drop_caches").write_text("3")
        except OSError:
            fresh = False
        try:
            fitted, peak = run_measured(
                "fit", *inputs, "--max-batch-size", str(10**9), "--epochs", "3", "--json",
                cache=str(folder / "cache"), preexec_fn=enter,
            )  # fmt: skip
            plan = fitted["plan"]
            rows.append(
                {
                    "model": name,
                    "page_cache": "fresh" if fresh else "warm",
                    "budget": plan["budget_bytes"],
                    "batch_size": plan["batch_size"],
                    # a bucketed plan whose batch holds every bucket's rows at once can
                    # hold no more: a larger batch trains the same steps
                    "capped_by_dataset": plan["batch_size"]
                    >= max(
                        [b["samples"] for b in plan.get("buckets") or []] or [plan["num_samples"]]
                    ),
                    "predicted_over_budget": round(
                        plan["predicted_peak_bytes"] / plan["budget_bytes"], 3
                    ),
                    "fit_tree_over_budget": round(peak / plan["budget_bytes"], 3),
                    "batch_changes": fitted["batch_size_changes"],
                    "oom_kills": _oom_kills(group),
                }
            )
        except NothingFits as refused:
            rows.append(
                {"model": name, "nothing_fits": str(refused), "oom_kills": _oom_kills(group)}
            )
        finally:
            for _ in range(50):
                with contextlib.suppress(OSError):
                    group.rmdir()
                    break
                time.sleep(0.1)
    return rows


def case_inputs(name: str, folder: Path, rng: np.random.Generator) -> list[str]:
    """A case's data and model written under ``folder``: the CLI's --model, --data,
    --target and --maxlen for it."""
    data = write_data(name, folder / "data", rng)
    targets = [a for t in TARGETS.get(name, ["answer"]) for a in ("--target", t)]
    maxlen = ["--maxlen", str(MAXLEN[name])] if name in MAXLEN else []
    return ["--model", factory(name, folder), "--data", str(data), *targets, *maxlen]


def _conv_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The convolutional rows' own figures (targets: median error <= 3 %, max <= 8 %)."""
    conv = [r for r in rows if r["model"] in (*IMAGE_MODELS, "audio-conv1d")]
    if not conv:
        return {}
    errors = [r["error"] for r in conv]
    out = {
        "conv_runs": len(conv),
        "conv_median_error": round(statistics.median(errors), 4),
        "conv_max_error": round(max(errors), 4),
        "conv_over_budget": sum(r["over_budget"] for r in conv),
    }
    print(
        f"convolutional rows: median error {out['conv_median_error']:.1%} (target <= 3%), "
        f"max {out['conv_max_error']:.1%} (<= 8%), over budget {out['conv_over_budget']}",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", action="append", help="run only these models")
    parser.add_argument("--budget", action="append", type=float, help="only these budgets (GiB)")
    parser.add_argument("--verbose", action="store_true", help="print each plan's trials")
    parser.add_argument(
        "--extras",
        choices=("auto", "on", "off"),
        default="auto",
        help="the neighbour and cgroup rows (auto: unless --only or --budget narrows the run)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memtune-estimate-") as tmp:
        for name in args.only or list(MODELS):
            folder = Path(tmp) / name
            inputs = case_inputs(name, folder, rng)
            conv = name in (*IMAGE_MODELS, "audio-conv1d")
            budgets = CONV_BUDGETS if conv else BUDGETS
            for budget in [b * GiB for b in args.budget] if args.budget else budgets:
                common = [
                    *inputs,
                    "--budget",
                    f"{budget / GiB:.2f}GiB",
                    # The memory model is judged at the memory bound, so the default
                    # 16-steps-per-epoch floor is lifted (the dataset still caps the batch).
                    "--max-batch-size",
                    str(10**9),
                    # One padded length: the curve over the batch is judged here; length
                    # buckets have their own bench (bench_buckets.py).
                    "--buckets",
                    "off",
                ]
                cache = str(folder / f"cache-{budget / GiB:.2f}")  # fresh per row
                start = time.perf_counter()
                try:
                    plan, planning_tree = run_measured("suggest", *common, "--json", cache=cache)
                except NothingFits as refused:
                    refusals.append({"model": name, "budget_gib": round(budget / GiB, 2)})
                    print(f"{name:<14} {budget / GiB:>4.2f} GiB  {refused}", flush=True)
                    continue
                suggest_s = time.perf_counter() - start
                forced = ["--batch-size", str(plan["batch_size"]), "--mode", plan["mode"]]
                analytic, _ = run_measured(
                    "suggest", *common, *forced, "--analytic", "--force", "--json", cache=cache
                )
                steps = -(-plan["num_samples"] // plan["batch_size"])
                epochs = str(epochs_for(steps))
                failed = None
                try:
                    fitted, measured = run_measured(
                        "fit", *common, *forced, "--epochs", epochs, "--json", cache=cache
                    )
                except RunFailed as halted:  # a miss to report, not the end of the bench
                    failed, measured = str(halted), halted.peak
                    fitted = {"batch_size_changes": [failed]}
                fit_tree = measured  # fit starts no process: its tree is its own
                pred = plan["predicted_peak_bytes"]
                capped = "dataset" if plan["batch_size"] >= plan["num_samples"] else None
                checks: list[dict[str, Any]] = []
                if capped is None and not failed and measured < FULL * plan["usable_bytes"]:
                    capped, checks = curve_check(
                        functools.partial(fit_peak, inputs, plan, cache), plan, plan["usable_bytes"]
                    )
                rows.append(
                    {
                        "model": name,
                        "budget_gib": round(budget / GiB, 2),
                        "batch_size": plan["batch_size"],
                        "mode": plan["mode"],
                        "capped": capped,  # "dataset", "curve" (checked) or None
                        "curve_checks": checks,
                        "trials": len(plan["trials"]),
                        "predicted": pred,
                        "measured": measured,
                        "error": abs(pred - measured) / measured,
                        "signed_error": (pred - measured) / measured,
                        "analytic_error": abs(analytic["predicted_peak_bytes"] - measured)
                        / measured,
                        "peak_over_usable": measured / plan["usable_bytes"],
                        "fit_tree_over_budget": fit_tree / plan["budget_bytes"],
                        "planning_tree_over_budget": planning_tree / plan["budget_bytes"],
                        "over_budget": max(fit_tree, planning_tree) > plan["budget_bytes"],
                        "suggest_s": round(suggest_s, 1),
                        "batch_changes": len(fitted["batch_size_changes"]),
                        "fit_failed": failed,  # the line a stopped fit ended with
                    }
                )
                r = rows[-1]
                print(
                    f"{name:<14} {r['budget_gib']:>4.2f} GiB  batch {r['batch_size']:>6} {r['mode']:<9} "
                    f"pred {pred / MiB:6.0f}  fit {measured / MiB:6.0f} MiB  "
                    f"error {r['signed_error']:+6.1%} (analytic {r['analytic_error']:6.1%})  "
                    f"fit/usable {r['peak_over_usable']:.2f}  fit tree/budget "
                    f"{r['fit_tree_over_budget']:.2f}  planning tree/budget "
                    f"{r['planning_tree_over_budget']:.2f}  trials {r['trials']}  "
                    f"{r['suggest_s']:.0f} s",
                    flush=True,
                )
                if failed:
                    print(f"    FIT STOPPED: {failed}", flush=True)
                for c in checks:
                    print(
                        f"    curve check: fit at batch {c['batch_size']:>6} read "
                        f"{c['peak_over_usable']:.2f} of usable",
                        flush=True,
                    )
                if checks:
                    verdict = {
                        "curve": "no larger batch lands in 0.85-1.00: the curve caps the batch",
                        "dataset": "the dataset caps the batch",
                        None: "MISS: a larger batch fits",
                    }[capped]
                    print(f"    {verdict}", flush=True)
                if args.verbose:
                    for t in plan["trials"]:
                        stopped = " (stopped)" if t.get("exceeded") else ""
                        print(
                            f"    trial {t['batch_size']:>6}: {t['peak_bytes'] / MiB:6.0f} MiB{stopped}"
                        )
                    for reason in plan["reasons"]:
                        print(f"    - {reason}")
        extras: dict[str, Any] = {}
        if args.extras == "on" or (args.extras == "auto" and not args.only and not args.budget):
            extras["neighbour"] = neighbour_row(Path(tmp), rng)
            print(f"neighbour: {json.dumps(extras['neighbour'])}", flush=True)
            extras["cgroup"] = cgroup_rows(Path(tmp), rng)
            for row in extras["cgroup"]:
                print(f"cgroup 1 GiB, no --budget: {json.dumps(row)}", flush=True)
    if not rows:
        print(json.dumps({"rows": [], "nothing_fits": refusals}) if args.json else "no rows")
        return
    errors = [r["error"] for r in rows]
    analytic_errors = [r["analytic_error"] for r in rows]
    uncapped = [r["peak_over_usable"] for r in rows if not r["capped"]]
    curve_capped = [f"{r['model']} {r['budget_gib']}" for r in rows if r["capped"] == "curve"]
    summary = {
        "machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.0f} GiB, CPU only",
        "runs": len(rows),
        "median_error": round(statistics.median(errors), 4),
        "max_error": round(max(errors), 4),
        "analytic_median_error": round(statistics.median(analytic_errors), 4),
        "analytic_max_error": round(max(analytic_errors), 4),
        "peak_over_usable_min": round(min(uncapped), 3) if uncapped else None,
        "peak_over_usable_max": round(max(r["peak_over_usable"] for r in rows), 3),
        "fit_tree_over_budget_max": round(max(r["fit_tree_over_budget"] for r in rows), 3),
        "planning_tree_over_budget_max": round(
            max(r["planning_tree_over_budget"] for r in rows), 3
        ),
        "capped_by_curve": curve_capped,
        "under_full_uncapped": sum(u < FULL for u in uncapped),
        "over_budget": sum(r["over_budget"] for r in rows),
        "max_trials": max(r["trials"] for r in rows),
        "median_suggest_s": statistics.median(r["suggest_s"] for r in rows),
        "nothing_fits": refusals,
        "fit_batch_changes": sum(r["batch_changes"] for r in rows),
        "fits_stopped": [f"{r['model']} {r['budget_gib']}" for r in rows if r["fit_failed"]],
        **_conv_summary(rows),
        **extras,
    }
    print(
        f"median error {summary['median_error']:.1%} (target <= 1.5%), max {summary['max_error']:.1%} (<= 5%); "
        f"analytic alone: median {summary['analytic_median_error']:.1%}, max {summary['analytic_max_error']:.1%}; "
        f"fit/usable {summary['peak_over_usable_min']}-{summary['peak_over_usable_max']} (0.85-1.00 uncapped; "
        f"{summary['under_full_uncapped']} uncapped under 0.85, capped by their curve: "
        f"{', '.join(curve_capped) or 'none'}); "
        f"fit tree/budget max {summary['fit_tree_over_budget_max']}, planning tree/budget max "
        f"{summary['planning_tree_over_budget_max']} (<= 1.00); rows over budget {summary['over_budget']}; "
        f"trials <= {summary['max_trials']}; fits stopped: "
        f"{', '.join(summary['fits_stopped']) or 'none'}"
    )
    if args.json:
        print(json.dumps({**summary, "rows": rows}))


if __name__ == "__main__":
    main()
