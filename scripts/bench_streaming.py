"""Streaming vs in-memory vs the original how-to's generator, side by side in one run.

Data shaped like the how-to's (numbered CSV shards, two list-cell history columns, target
``answer``) and the demo's two-GRU model. Every measurement runs in a fresh child process so
peaks and warm-ups do not leak between them; rounds alternate the pipelines (and their
order), ratios are taken within a round, and their median and spread are printed. ``--json``
adds one JSON line.

An image-folder row compares ``fit`` streaming a folder of PNGs (decoded a batch at a time)
with ``fit`` on the same images as numpy arrays in memory, on a small convnet.

    python scripts/bench_streaming.py [--samples 20000] [--rounds 3] [--images 8000]
                                      [--images-only] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 256
ROWS_PER_SHARD = 2000


def make_data(folder: Path, samples: int, seed: int = 0, units: int = 32) -> Path:
    import numpy as np

    from memtune.app.demo import MODEL_SOURCE, make_shard

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = folder / "csv"
    shards.mkdir(exist_ok=True)
    for i in range(math.ceil(samples / ROWS_PER_SHARD)):
        rows = min(ROWS_PER_SHARD, samples - i * ROWS_PER_SHARD)
        make_shard(rng, rows).to_csv(shards / f"{i}.csv", index=False)
    (folder / "model.py").write_text(MODEL_SOURCE.replace("GRU(32)", f"GRU({units})"))
    return folder


def to_parquet(csv: Path, out: Path) -> Path:
    import json as _json

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(exist_ok=True)
    for path in csv.iterdir():
        frame = pd.read_csv(path)
        table = pa.table(
            {
                "clicks": pa.array(
                    [_json.loads(c) for c in frame["clicks"]], pa.list_(pa.float32())
                ),
                "items": pa.array([_json.loads(c) for c in frame["items"]], pa.list_(pa.int32())),
                "answer": frame["answer"].to_numpy(),
            }
        )
        pq.write_table(table, out / f"{path.stem}.parquet")
    return out


# ---------------------------------------------------------------- children


def _epoch_timer() -> Any:
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()
            if epoch == 0:
                self.first = self.start

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter() - self.start)

    return EpochTimer()


def child_memtune(folder: str, data: str, mode: str, epochs: int) -> dict[str, Any]:
    from memtune.app.fit import fit
    from memtune.proc import tf as _tf

    _tf.tensorflow()
    timer = _epoch_timer()
    result = fit(
        f"{folder}/model.py:build_model",
        data,
        epochs=epochs,
        batch_size=BATCH,
        mode=mode,
        verbose=0,
        callbacks=[timer],
        seed=0,
        target=["answer"],
    )
    n = result.plan.num_samples
    return {
        "samples_per_s": n / min(timer.times[1:] or timer.times),
        "epoch_s": timer.times,
        "peak_rss": _peak(),
        "samples": n,
    }


CONVNET = """import keras


def build():
    image = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255)(image)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, keras.layers.Dense(10, activation="softmax", name="label")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model
"""


def make_images(folder: Path, count: int) -> Path:
    """``count`` 32 × 32 PNGs in 10 class folders, the same images as ``x.npy`` / ``y.npy``
    (class-folder order), and a small convnet."""
    import numpy as np

    from memtune.app.demo import png

    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, 10, count))
    images = rng.integers(0, 100, (count, 32, 32, 3)) + 15 * labels[:, None, None, None]
    images = images.astype(np.uint8)
    for c in range(10):
        (folder / "images" / f"class{c}").mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / "images" / f"class{label}" / f"{i}.png").write_bytes(png(image))
    np.save(folder / "x.npy", images)
    np.save(folder / "y.npy", labels)
    (folder / "model.py").write_text(CONVNET)
    return folder


def child_images(folder: str, kind: str, epochs: int) -> dict[str, Any]:
    """``fit`` on the image folder (streaming) or on the same images in memory."""
    import numpy as np

    import memtune

    # a fresh cache each run: the streamed folder's one decode is paid here, before its
    # first epoch (as the in-memory folder's is), and shows in to_first_epoch_s
    os.environ["MEMTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="cache-", dir=folder)
    timer = _epoch_timer()
    called = time.perf_counter()
    data: Any = f"{folder}/images"
    if kind == "image-arrays":
        data = (np.load(f"{folder}/x.npy"), np.load(f"{folder}/y.npy"))
    mode = {"image-folder": "streaming", "image-folder-in-memory": "in-memory"}.get(kind)
    history = memtune.fit(
        f"{folder}/model.py:build", data, epochs=epochs, batch_size=BATCH, verbose=0,
        callbacks=[timer], seed=0, mode=mode,
    )  # fmt: skip
    n = history.plan.num_samples
    return {
        "samples_per_s": n / min(timer.times[1:] or timer.times),
        "epoch_s": timer.times,
        "to_first_epoch_s": timer.first - called,
        "peak_rss": _peak(),
        "samples": n,
    }


def image_rows(count: int, rounds: int, epochs: str) -> dict[str, Any]:
    """The image-folder rows: the folder streamed (decoded once into a fresh cache on disk,
    read memory-mapped) and decoded once into memory, each against the same images as numpy
    arrays, within each round."""
    kinds = ("image-folder", "image-folder-in-memory", "image-arrays")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    ready: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="memtune-images-") as tmp:
        folder = make_images(Path(tmp), count)
        for round_ in range(rounds):
            for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                out = run_child(kind, str(folder), epochs)
                rates[kind].append(out["samples_per_s"])
                ready[kind].append(out["to_first_epoch_s"])

    def versus(kind: str, base: str = "image-arrays") -> dict[str, float]:
        ratios = [a / b for a, b in zip(rates[kind], rates[base], strict=True)]
        return {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        }

    out = {
        "images": count,
        "samples_per_s": {k: [round(v, 1) for v in r] for k, r in rates.items()},
        "to_first_epoch_s": {k: [round(v, 1) for v in r] for k, r in ready.items()},
        "image_folder_streaming_vs_in_memory": versus("image-folder"),
        "image_folder_in_memory_vs_arrays": versus("image-folder-in-memory"),
        "image_folder_streaming_vs_folder_in_memory": versus(
            "image-folder", "image-folder-in-memory"
        ),
    }
    names = {
        "image-folder": "images: folder, streaming",
        "image-folder-in-memory": "images: folder, in memory",
        "image-arrays": "images: numpy arrays",
    }
    for kind in kinds:
        print(
            f"{names[kind]:<32}{statistics.median(rates[kind]):>20,.0f}"
            f"{statistics.median(ready[kind]):>12.1f} s to epoch 1"
        )
    for key, label in (
        ("image_folder_streaming_vs_in_memory", "folder streaming / arrays in memory"),
        ("image_folder_in_memory_vs_arrays", "folder in memory / arrays in memory"),
        ("image_folder_streaming_vs_folder_in_memory", "folder streaming / folder in memory"),
    ):
        r = out[key]
        print(f"{label}: median {r['median']:.2f} ({r['min']:.2f} … {r['max']:.2f})")
    print("target: folder streaming / in memory (folder or arrays) >= 0.90")
    return out


def seed_generator(data: str) -> tuple[Any, int]:
    """The seed article's generator, faithfully: pandas per shard, padding in the loop."""
    import json as _json

    import keras
    import pandas as pd

    files = sorted(os.listdir(data))  # the article's lexical order: 10.csv before 2.csv
    n = sum(len(pd.read_csv(Path(data) / f, usecols=["answer"])) for f in files)

    def generator() -> Any:
        while True:
            for name in files:
                frame = pd.read_csv(Path(data) / name)
                for lo in range(0, len(frame) - BATCH + 1, BATCH):  # drops the partial batch
                    part = frame.iloc[lo : lo + BATCH]
                    clicks = keras.utils.pad_sequences(
                        [_json.loads(c) for c in part["clicks"]], maxlen=30, dtype="float32"
                    )
                    items = keras.utils.pad_sequences(
                        [_json.loads(c) for c in part["items"]], maxlen=40
                    )
                    yield {"clicks": clicks, "items": items}, part["answer"].to_numpy()

    return generator(), n


def child_seed_generator(
    folder: str, data: str, epochs: int, serial: bool = False
) -> dict[str, Any]:
    """Train on the seed generator: as Keras 3 runs it, or strictly in the training thread.

    ``serial``: the issue's baseline taken literally — each step waits for the generator to
    read and pad its batch (tf.data with no prefetch, no autotune, no injected prefetch).
    Otherwise Keras 3's own wrapping, which runs the generator on a tf.data thread with
    prefetch, so its parsing overlaps training.
    """
    from memtune.proc import tf as _tf

    tf = _tf.tensorflow()
    spec: dict[str, Any] = {"__name__": "seed_model"}
    exec((Path(folder) / "model.py").read_text(), spec)
    model = spec["build_model"]()
    gen, n = seed_generator(data)
    timer = _epoch_timer()
    steps = n // BATCH  # the caller counts steps
    feed: Any = gen
    if serial:
        signature = (
            {
                "clicks": tf.TensorSpec((None, 30), tf.float32),
                "items": tf.TensorSpec((None, 40), tf.int32),
            },
            tf.TensorSpec((None,), tf.float64),
        )
        feed = tf.data.Dataset.from_generator(lambda: gen, output_signature=signature)
        options = tf.data.Options()
        options.autotune.enabled = False
        options.experimental_optimization.inject_prefetch = False
        options.threading.private_threadpool_size = 1
        feed = feed.with_options(options)
    model.fit(feed, steps_per_epoch=steps, epochs=epochs, verbose=0, callbacks=[timer])
    return {
        "samples_per_s": steps * BATCH / min(timer.times[1:] or timer.times),
        "epoch_s": timer.times,
        "peak_rss": _peak(),
        "samples": n,
    }


def child_pipeline_only(folder: str, data: str, kind: str) -> dict[str, Any]:
    """One epoch of batches with no training: what each pipeline can deliver at most."""
    from memtune.proc import tf as _tf

    _tf.tensorflow()
    if kind == "seed":
        gen, n = seed_generator(data)
        steps = n // BATCH
        start = time.perf_counter()
        for _ in range(steps):
            next(gen)
        return {"samples_per_s": steps * BATCH / (time.perf_counter() - start), "peak_rss": _peak()}
    from memtune.app.prepare import prepare
    from memtune.core.options import make_options
    from memtune.data.batch_sources import StreamingBatches
    from memtune.data.layout import layout_for
    from memtune.data.shares import blocks_of
    from memtune.run.feed import KerasFeed

    prep = prepare(
        f"{folder}/model.py:build_model",
        data,
        make_options(batch_size=BATCH, mode="streaming", target=["answer"]),
    )
    layout = layout_for(prep.info, prep.footprint, prep.options)
    stream = StreamingBatches(layout, blocks_of(prep.info), BATCH, shuffle=True, seed=0)
    start = time.perf_counter()
    for _ in KerasFeed(prep.footprint).stream(stream):
        pass
    return {
        "samples_per_s": stream.num_samples / (time.perf_counter() - start),
        "peak_rss": _peak(),
    }


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=3, help="timed: the fastest after the first")
    parser.add_argument("--units", type=int, default=32, help="GRU units (32: the demo model)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--images", type=int, default=8000, help="the image row's images")
    parser.add_argument("--images-only", action="store_true", help="the image row alone")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind in ("seed", "seed-serial"):
            out = child_seed_generator(rest[0], rest[1], int(rest[2]), kind == "seed-serial")
        elif kind == "pipeline":
            out = child_pipeline_only(rest[0], rest[1], rest[2])
        elif kind.startswith("image-"):
            out = child_images(rest[0], kind, int(rest[1]))
        else:
            out = child_memtune(rest[0], rest[1], kind, int(rest[2]))
        print(json.dumps(out))
        return
    images = image_rows(args.images, args.rounds, str(args.epochs)) if args.images else {}
    if args.images_only:
        if args.json:
            print(json.dumps(images))
        return

    trained = {  # the side-by-side comparisons: every round runs each, in alternating order
        "in-memory (CSV)": ("in-memory", "csv"),
        "streaming (CSV)": ("streaming", "csv"),
        "streaming (Parquet)": ("streaming", "parquet"),
        "seed generator, serial (CSV)": ("seed-serial", "csv"),
        "seed generator, Keras 3 (CSV)": ("seed", "csv"),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trained}
    with tempfile.TemporaryDirectory(prefix="memtune-bench-") as tmp:
        small = make_data(Path(tmp) / "x1", args.samples, units=args.units)
        large = make_data(Path(tmp) / "x10", args.samples * 10, seed=1, units=args.units)
        parquet = to_parquet(small / "csv", small / "parquet")
        paths = {"csv": str(small / "csv"), "parquet": str(parquet)}
        e = str(args.epochs)
        for round_ in range(args.rounds):
            names = list(trained) if round_ % 2 == 0 else list(trained)[::-1]
            for name in names:
                kind, form = trained[name]
                runs[name].append(run_child(kind, str(small), paths[form], e))
        once = {
            "streaming 10x (CSV)": run_child("streaming", str(small), str(large / "csv"), "1"),
            "pipeline alone: streaming": run_child("pipeline", str(small), paths["csv"], "memtune"),
            "pipeline alone: seed gen.": run_child("pipeline", str(small), paths["csv"], "seed"),
        }

    def ratio(a: str, b: str) -> list[float]:
        """a / b within each round: the two ran minutes apart at most."""
        return [
            x["samples_per_s"] / y["samples_per_s"] for x, y in zip(runs[a], runs[b], strict=True)
        ]

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }

    median_rate = {k: statistics.median(r["samples_per_s"] for r in v) for k, v in runs.items()}
    median_peak = {k: int(statistics.median(r["peak_rss"] for r in v)) for k, v in runs.items()}
    ratios = {
        "streaming_vs_in_memory": ratio("streaming (CSV)", "in-memory (CSV)"),
        "streaming_vs_seed_generator": ratio("streaming (CSV)", "seed generator, serial (CSV)"),
        "streaming_vs_seed_generator_keras_prefetch": ratio(
            "streaming (CSV)", "seed generator, Keras 3 (CSV)"
        ),
        "in_memory_vs_seed_generator": ratio("in-memory (CSV)", "seed generator, serial (CSV)"),
        "parquet_vs_csv": ratio("streaming (Parquet)", "streaming (CSV)"),
    }
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, {_total_gib():.0f} GiB, CPU only",
        "samples": args.samples,
        "gru_units": args.units,
        "batch_size": BATCH,
        "rounds": args.rounds,
        "samples_per_s": {k: [round(r["samples_per_s"], 1) for r in v] for k, v in runs.items()},
        "peak_rss_bytes": median_peak,
        **{k: summary(v) for k, v in ratios.items()},
        "pipeline_alone_streaming_vs_seed_generator": round(
            once["pipeline alone: streaming"]["samples_per_s"]
            / once["pipeline alone: seed gen."]["samples_per_s"],
            3,
        ),
        "image_row": images,
        "streaming_peak_growth_10x": round(
            once["streaming 10x (CSV)"]["peak_rss"] / median_peak["streaming (CSV)"] - 1, 4
        ),
    }
    print(f"{'pipeline':<32}{'samples/s (median)':>20}{'peak RSS':>12}")
    for name in runs:
        print(f"{name:<32}{median_rate[name]:>20,.0f}{median_peak[name] / 2**20:>9,.0f} MiB")
    for name, row in once.items():
        peak = f"{row['peak_rss'] / 2**20:>9,.0f} MiB" if "alone" not in name else ""
        print(f"{name:<32}{row['samples_per_s']:>20,.0f}{peak:>12}")
    print(f"\n{'ratio (within each round)':<46}{'median':>8}{'min':>8}{'max':>8}")
    for name in ratios:
        r = result[name]
        print(f"{name:<46}{r['median']:>8.2f}{r['min']:>8.2f}{r['max']:>8.2f}")
    print(
        f"targets: streaming / in-memory >= 0.90; streaming / seed generator (serial) >= 1.5; "
        f"peak growth at 10x data {result['streaming_peak_growth_10x']:+.1%} (<= +10%)"
    )
    if args.json:
        print(json.dumps(result))


def _total_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


if __name__ == "__main__":
    main()
