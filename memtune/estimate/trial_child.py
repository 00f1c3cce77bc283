"""The trial child: ``python -m memtune.estimate.trial_child`` reads one JSON request on stdin,
trains a few steps exactly as ``memtune fit`` would, and prints one JSON line — the peak it
held, or why it could not. It imports only what builds batches and trains (the runtime,
the model, the probe), never planning or fit's orchestration. Its parent, which watches it,
is :mod:`memtune.estimate.trials`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from memtune.core.errors import MemtuneError
from memtune.estimate.trials import MIN_STEPS, FeedSpec, decode_feeds
from memtune.probe import process
from memtune.proc import children, heap


class _RepeatBatch:
    """One batch served ``steps`` times — the user's rows when given, else synthetic rows of
    the same shapes — the second one cut to ``last`` rows when the real epoch ends with a
    partial batch (its shapes cost TensorFlow memory of their own, so they come early).

    Each step gathers a fresh copy in a new order, as ``fit``'s shuffled in-memory batches
    do — except a ``whole`` batch (the dataset in one step), which ``fit`` serves as a view
    of its arrays: copying it anyway grew a trial by one batch a step (conv2d, 2,000 rows:
    +23 MiB a step, 9 % over fit's peak)."""

    failure: MemtuneError | None = None

    def __init__(
        self,
        feeds: tuple[FeedSpec, ...],
        batch_size: int,
        steps: int,
        last: int = 0,
        rows: str | None = None,
        *,
        whole: bool = False,
    ) -> None:
        import numpy as np

        self.steps = steps
        self.last = last
        self.whole = whole
        self.batch_size = batch_size
        self.position = 0
        self.num_samples = batch_size * steps
        if rows is not None:
            with np.load(rows) as saved:  # memtune.data.sample.write_trial_rows
                self.inputs = {k[3:]: saved[k] for k in saved.files if k.startswith("in:")}
                self.targets = {k[4:]: saved[k] for k in saved.files if k.startswith("out:")}
            return
        rng = np.random.default_rng(0)
        arrays = {}
        for f in feeds:
            shape = (batch_size, *f.shape)
            # Zeros are valid for any Embedding; floats get real values.
            arrays[f.name] = (
                np.zeros(shape, f.dtype)
                if f.dtype == "int32"
                else rng.standard_normal(shape).astype(f.dtype)
            )
        self.inputs = {f.name: arrays[f.name] for f in feeds if f.role == "input"}
        self.targets = {f.name: arrays[f.name] for f in feeds if f.role == "target"}

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> Any:
        """Fresh arrays each step, in a new order, as ``fit``'s shuffled sources give."""
        import numpy as np

        if self.whole:
            return self.inputs, self.targets
        rows = len(next(iter(self.inputs.values())))
        cut = self.last if self.last and i == min(1, self.steps - 1) else rows
        order = np.random.default_rng(i).permutation(rows)[:cut]
        return (
            {k: v[order] for k, v in self.inputs.items()},
            {k: v[order] for k, v in self.targets.items()},
        )

    def set_epoch(self, epoch: int) -> None:
        pass

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None:
        raise NotImplementedError("a trial measures one batch size")


class _BucketSteps(_RepeatBatch):
    """Every bucket's batch shapes, one step each in the order given: ``fit`` trains them
    all in one process, and each new shape adds memory TensorFlow keeps. The trial's rows
    (tiled to a step's count), the bucketed input cut to the step's length, and row weights
    beside them, as fit's bucketed batches carry."""

    weighted = True

    def __init__(
        self,
        feeds: tuple[FeedSpec, ...],
        shapes: tuple[tuple[int, int], ...],
        feed: str,
        rows: str | None,
    ) -> None:
        super().__init__(feeds, max(count for count, _ in shapes), len(shapes), 0, rows)
        self.shapes = shapes
        self.feed = feed

    def __getitem__(self, i: int) -> Any:
        import numpy as np

        count, length = self.shapes[i]
        held = len(next(iter(self.inputs.values())))
        take = np.resize(np.random.default_rng(i).permutation(held), count)
        inputs = {
            k: v[take, -length:] if k == self.feed else v[take] for k, v in self.inputs.items()
        }
        return inputs, {k: v[take] for k, v in self.targets.items()}

    def row_weights(self, i: int) -> Any:
        import numpy as np

        return np.ones(self.shapes[i][0], np.float32)


def _carry_fit_libraries() -> None:
    """Load the libraries ``fit``'s process holds beside TensorFlow (its data readers and its
    screen), so a trial's resident memory holds them as fit's will: measured, code pages and
    all, rather than added on a guess."""
    import importlib

    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    importlib.import_module("rich.live")  # loaded, never drawn: the screen stays in memtune.ui


def _scope(tf: Any, raw: dict[str, Any]) -> Any:
    """Where the model is built: the devices ``fit`` will train on (one CPU, several logical
    ones under MirroredStrategy, or one GPU with memory growth)."""
    device, replicas = raw["device"], int(raw.get("cpu_replicas") or 1)
    if replicas > 1:
        from memtune.run.distribute import Topology, make_strategy

        devices = tuple(f"cpu:{i}" for i in range(replicas))
        topology = Topology("mirrored", replicas, devices=devices, cpu_replicas=replicas)
        return make_strategy(topology).scope()
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    else:
        index = int(device.split(":")[1])
        tf.config.set_visible_devices([gpus[index]], "GPU")
        tf.config.experimental.set_memory_growth(gpus[index], True)
    return contextlib.nullcontext()


def _footprint(feeds: tuple[FeedSpec, ...]) -> Any:
    """The feeds as the data floor describes them (shapes already padded)."""
    from memtune.data.footprint import Feed, Footprint

    inputs = tuple(
        Feed(f.name, "input", (), f.shape, f.dtype, False) for f in feeds if f.role == "input"
    )
    targets = tuple(
        Feed(f.name, "target", (), f.shape, f.dtype, False) for f in feeds if f.role == "target"
    )
    return Footprint(inputs, targets)


def _sources(raw: dict[str, Any], feeds: tuple[FeedSpec, ...]) -> tuple[_RepeatBatch, int]:
    """The training source, in epochs as long as fit's (a pipeline prefetches within an
    epoch, so one whole-dataset batch holds one batch in flight where ten steps hold five),
    and the epochs to run: later epochs go on, a short epoch does not shorten the trial.
    Buckets measured together: their steps, one epoch."""
    if raw.get("bucket_steps"):
        shapes = tuple((int(count), int(length)) for count, length in raw["bucket_steps"])
        return _BucketSteps(feeds, shapes, str(raw["bucket_feed"]), raw.get("rows")), 1
    replicas = int(raw.get("cpu_replicas") or 1)
    batch, total = int(raw["batch_size"]) * replicas, int(raw.get("num_samples") or 0)
    last = total % batch if total > batch else 0
    steps = int(raw["steps"])
    per_epoch = min(steps, -(-total // batch)) if total else steps
    whole = bool(total) and total <= batch
    source = _RepeatBatch(feeds, batch, per_epoch, last, raw.get("rows"), whole=whole)
    return source, -(-steps // per_epoch)


def _train(model: Any, raw: dict[str, Any], feeds: tuple[FeedSpec, ...]) -> dict[str, Any]:
    """Train with fit's own callbacks riding along (the guard's readings, never its stop:
    the parent stops a trial), until the peak holds; what was measured."""
    from memtune.run.callbacks.epoch_progress import EpochProgress
    from memtune.run.callbacks.flat_peak import FlatPeak
    from memtune.run.callbacks.memory_guard import MemoryGuard
    from memtune.run.callbacks.trim_heap import TrimHeap
    from memtune.run.feed import KerasFeed

    source, epochs = _sources(raw, feeds)
    bucketed = source.feed if isinstance(source, _BucketSteps) else None
    feed = KerasFeed(_footprint(feeds), flexible=frozenset([bucketed] if bucketed else []))
    flat = FlatPeak(len(source) if bucketed else MIN_STEPS)  # every bucket shape runs
    guard = MemoryGuard(2**62, 2**62, cpu=True, reserve_bytes=0)
    extra: dict[str, Any] = {}
    if raw.get("validation"):
        held = _RepeatBatch(feeds, source.batch_size, 2, 0, raw.get("rows"))
        extra["validation_data"] = feed.stream(held)
    history = model.fit(
        feed.stream(source, training=True),
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[TrimHeap(), feed.epoch_callback(), EpochProgress(), guard, flat],
        **extra,
    )
    out: dict[str, Any] = {"ok": True, "step_peaks": flat.peaks, "begin": flat.begin}
    out["validated"] = any(k.startswith("val_") for k in history.history)
    out["peak_held"] = process.peak_held()
    return out


def _measure(raw: dict[str, Any]) -> dict[str, Any]:
    """Load the model where fit would, train, and answer."""
    from memtune.model.load import load_model
    from memtune.proc import tf as _tf
    from memtune.run.feed import set_accumulation

    _tf.set_debug(bool(raw.get("debug")))
    tf = _tf.tensorflow()
    with _scope(tf, raw):
        model = load_model(raw["model"])
        set_accumulation(model, int(raw["accumulation"]))
    gpu = raw["device"] != "cpu"
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    try:
        out = _train(model, raw, decode_feeds(raw["feeds"]))
    except tf.errors.ResourceExhaustedError:
        return {"oom": True}
    if gpu:
        out["device_peak"] = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return out


def preload() -> None:
    """What the warm parent (:mod:`memtune.proc.warm`) loads once for every trial and the
    model reader it forks: what this child loads before its request, then TensorFlow and
    the modules that build and train."""
    heap.configure()
    _carry_fit_libraries()
    from memtune.proc import tf as _tf

    _tf.tensorflow()
    import memtune.model.info
    import memtune.model.load
    import memtune.run.callbacks.memory_guard
    import memtune.run.feed  # noqa: F401


def _child() -> int:
    children.die_with_parent()
    heap.configure()  # as fit's process: before any library starts threads
    _carry_fit_libraries()
    raw = json.loads(sys.stdin.read())
    if raw.get("baseline"):
        print(json.dumps({"held": process.held()}))
        return 0
    try:
        print(json.dumps(_measure(raw)))
    except MemtuneError as exc:
        print(json.dumps({"error": str(exc)}))
    return 0


if __name__ == "__main__":
    children.finish(_child())
