"""A ``tf.data.Dataset`` or ``keras.utils.PyDataset`` as memtune's data.

The user's pipeline stays theirs: memtune reads it once to count samples and learn each
feature's kind and longest sequence (the footprint), then, while training, unbatches it,
pads / truncates every feature to the planned shape and batches it at the planned batch.
What the pipeline itself keeps in memory (``cache()``, shuffle buffers) is not in the plan.
A batch change mid-epoch continues by skipping the samples already trained, which is exact
only when the pipeline yields the same order each time it is iterated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from memtune.core.constants import STREAM_QUEUE_BATCHES, WORKERS
from memtune.core.errors import MemtuneError
from memtune.core.options import Options
from memtune.data.arrays import feed_type
from memtune.data.footprint import Footprint
from memtune.data.python import by_name
from memtune.data.scan import ColumnInfo, DataInfo
from memtune.data.sources import Shard, Source, shard_dataset
from memtune.proc import tf as _tf

SCAN_BATCH = 4096


def _kind(data: Any) -> str:
    return "keras.utils.PyDataset" if not _is_tf_dataset(data) else "tf.data.Dataset"


def _is_tf_dataset(data: Any) -> bool:
    return bool(isinstance(data, _tf.tensorflow().data.Dataset))


def _pair(element: Any, where: str) -> tuple[Any, Any]:
    if isinstance(element, tuple | list) and len(element) == 2:
        return element[0], element[1]
    if isinstance(element, tuple | list) and len(element) == 3:
        raise MemtuneError(f"{where} yields (x, y, sample_weight); memtune needs (x, y)")
    raise MemtuneError(f"{where} must yield (x, y) pairs; got {type(element).__name__}")


def _as_tf(data: Any) -> Any:
    """A ``tf.data.Dataset`` of ``(x, y)``: itself, or a PyDataset's batches."""
    tf = _tf.tensorflow()
    if _is_tf_dataset(data):
        return data
    first = data[0]

    def spec(array: Any) -> Any:
        a = np.asarray(array)
        return tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype))

    def tuples(value: Any) -> Any:  # PyDatasets often return lists: tf.nest needs one shape
        if isinstance(value, list):
            return tuple(tuples(v) for v in value)
        if isinstance(value, Mapping):
            return {k: tuples(v) for k, v in value.items()}
        return value

    signature = tf.nest.map_structure(spec, tuples(first))
    return tf.data.Dataset.from_generator(
        lambda: (tuples(data[i]) for i in range(len(data))), output_signature=signature
    )


def is_batched(data: Any, declared: Sequence[tuple[str, tuple[int | None, ...]]]) -> bool:
    """A PyDataset yields batches; a tf.data pipeline is batched when its ``x`` has the
    model input's rank (batch axis included), or is a batch of scalars (leading axis of
    unknown size) for an input declared ``(1,)``."""
    if not _is_tf_dataset(data):
        return True
    x, _ = _pair(data.element_spec, "the tf.data.Dataset")
    name, shape = declared[0]
    spec = by_name(x, [n for n, _ in declared], "x", "the tf.data.Dataset", only=True)[name]
    rank = len(spec.shape)
    if rank == len(shape):
        return True
    return rank == 1 and shape[-1] == 1 and spec.shape[0] is None


def scan_dataset(
    data: Any, inputs: Sequence[str], targets: Sequence[str], batched: bool
) -> DataInfo:
    """One pass over the pipeline: samples, and per feature its kind and longest length."""
    where = f"the {_kind(data)}"
    columns: dict[str, ColumnInfo] = {}
    total = 0
    for x, y, shapes in _numpy_batches(data, batched):
        named = {
            **by_name(x, inputs, "x", where, only=True),
            **by_name(y, targets, "y", where, only=True),
        }
        sizes = (
            {}
            if shapes is None
            else {
                **by_name(shapes[0], inputs, "x", where, only=True),
                **by_name(shapes[1], targets, "y", where, only=True),
            }
        )
        rows = None
        for name, value in named.items():
            array = np.asarray(value)
            if array.ndim == 0:
                raise MemtuneError(f"{where}: {name!r} is a single number, not one per sample")
            if rows is not None and array.shape[0] != rows:
                raise MemtuneError(f"{where}: {name!r} has {array.shape[0]} rows, not {rows}")
            rows = array.shape[0]
            found = np.asarray(sizes.get(name, np.asarray(array.shape[1:])[None]))
            columns[name] = _column(columns.get(name), name, array, found, where)
        total += rows or 0
    if total == 0:
        raise MemtuneError(f"data: {where} yields no samples")
    label = f"<{_kind(data)}>"
    source = Source(label, "dataset", (Shard(label, "dataset", dataset=data, batched=batched),))
    note = (
        f"{_kind(data)}: memtune rebatches your pipeline and streams it; what the pipeline "
        "keeps in memory (cache, shuffle buffers) is not in the prediction"
    )
    return DataInfo(source, columns, total, (total,), [note])


def _column(
    seen: ColumnInfo | None, name: str, array: np.ndarray, shapes: np.ndarray, where: str
) -> ColumnInfo:
    """A feature's kind after one more batch: a scalar, a sequence (one axis, padded), or
    a fixed N-D sample (more axes, one shape for every sample)."""
    if array.ndim > 2:
        shape = tuple(int(d) for d in array.shape[1:])
        known = [*([seen.shape] if seen is not None else []), *{tuple(map(int, r)) for r in shapes}]
        odd = next((k for k in known if k != known[0]), None)
        if odd is not None:
            raise MemtuneError(
                f"{where}: {name!r} holds samples of different shapes ({known[0]} and {odd}); "
                "resize them to one (a Resizing layer in the pipeline, or --image-size)"
            )
        return ColumnInfo(
            name, False, array.dtype.kind in "biu", 1, shape=shape, item=feed_type(array.dtype)
        )
    sequence = array.ndim == 2
    info = ColumnInfo(name, sequence, array.dtype.kind in "biu", array.shape[1] if sequence else 1)
    if seen is None:
        return info
    return ColumnInfo(
        name,
        seen.sequence or sequence,
        seen.is_int and info.is_int,
        max(seen.max_len, info.max_len),
    )


def _numpy_batches(data: Any, batched: bool) -> Iterator[tuple[Any, Any, Any]]:
    """``(x, y, shapes)`` batches; ``shapes``: for an unbatched pipeline, ``(x, y)`` of
    every sample's shape (padding samples to a batch would hide a difference), else None."""
    if not _is_tf_dataset(data):
        for i in range(len(data)):
            yield (*_pair(data[i], "the keras.utils.PyDataset"), None)
        return
    if batched:
        yield from ((*_pair(e, "the tf.data.Dataset"), None) for e in data.as_numpy_iterator())
        return
    tf = _tf.tensorflow()

    def with_shapes(*element: Any) -> Any:
        x, y = element if len(element) == 2 else _pair(element[0], "the tf.data.Dataset")
        return (x, y), tf.nest.map_structure(tf.shape, (x, y))

    # Unbatched samples, possibly of different lengths: pad within scan batches to count.
    for (x, y), shapes in data.map(with_shapes).padded_batch(SCAN_BATCH).as_numpy_iterator():
        yield x, y, shapes


class DatasetBatches:
    """The user's pipeline as a batch source for ``fit``: rebatched, padded to the plan.

    ``len``, ``set_epoch``, ``resize`` and ``position`` behave as the file-backed sources'
    do; batches are produced by :meth:`named` / :meth:`as_dataset`, not by index.
    """

    failure: MemtuneError | None = None

    def __init__(
        self,
        data: Any,
        footprint: Footprint,
        batch_size: int,
        *,
        num_samples: int,
        batched: bool,
        padding: str = "pre",
        truncating: str = "pre",
    ) -> None:
        self.data = data
        self.footprint = footprint
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.batched = batched
        self.padding, self.truncating = padding, truncating
        self.position = 0
        self.resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return math.ceil((self.num_samples - self.position) / self.batch_size)

    def __getitem__(self, i: int) -> Any:
        raise MemtuneError("a tf.data pipeline is read in order, not by batch index")

    def set_epoch(self, epoch: int) -> None:
        self.position = self.resume[1] if self.resume and self.resume[0] == epoch else 0

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None:
        self.batch_size = batch_size
        self.resume = (epoch, start)
        self.set_epoch(epoch)

    def named(self) -> Any:
        """Samples as ``{name: tensor}`` at the planned shapes, from this epoch's position."""
        tf = _tf.tensorflow()
        fp = self.footprint
        inputs = [f.name for f in fp.inputs]
        targets = [f.name for f in fp.targets]
        where = f"the {_kind(self.data)}"
        ds = _as_tf(self.data)
        if self.batched:
            ds = ds.unbatch()
        feeds = {f.name: f for f in (*fp.inputs, *fp.targets)}

        def shape(name: str, value: Any) -> Any:
            feed = feeds[name]
            value = tf.cast(value, tf.as_dtype(feed.dtype))
            if not feed.sequence:
                return tf.reshape(value, feed.shape)
            length = feed.length
            value = tf.reshape(value, (-1,))
            value = value[-length:] if self.truncating == "pre" else value[:length]
            missing = length - tf.shape(value)[0]
            pad = [[missing, 0]] if self.padding == "pre" else [[0, missing]]
            return tf.reshape(tf.pad(value, pad), feed.shape)

        def normalise(*element: Any) -> Any:
            x, y = element if len(element) == 2 else _pair(element[0], where)
            named = {
                **by_name(x, inputs, "x", where, only=True),
                **by_name(y, targets, "y", where, only=True),
            }
            return {k: shape(k, v) for k, v in named.items()}

        # In order (a batch change resumes by position), but not one element at a time.
        shaped = ds.map(normalise, num_parallel_calls=WORKERS, deterministic=True)
        return shaped.skip(self.position)

    def as_dataset(self, pair: Any) -> Any:
        """``(x, y)`` batches for ``model.fit``; ``pair`` arranges a batch as Keras wants."""
        inputs = [f.name for f in self.footprint.inputs]

        def split(batch: Any) -> Any:
            return pair(
                {k: v for k, v in batch.items() if k in inputs},
                {k: v for k, v in batch.items() if k not in inputs},
            )

        tf = _tf.tensorflow()
        batches = self.named().batch(self.batch_size).map(split)
        # Unbatching loses the count; Keras (and the dashboard) need the steps per epoch.
        batches = batches.apply(tf.data.experimental.assert_cardinality(len(self)))
        return batches.prefetch(STREAM_QUEUE_BATCHES)

    def numpy(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """One epoch of numpy ``(inputs, targets)`` dicts (``memtune.batches``)."""
        inputs = {f.name for f in self.footprint.inputs}
        for batch in self.named().batch(self.batch_size).as_numpy_iterator():
            yield (
                {k: v for k, v in batch.items() if k in inputs},
                {k: v for k, v in batch.items() if k not in inputs},
            )


def dataset_source(
    info: DataInfo, fp: Footprint, options: Options, batch_size: int
) -> DatasetBatches:
    """The user's tf.data / PyDataset pipeline as a batch source at ``batch_size``."""
    shard = info.source.shards[0]
    return DatasetBatches(
        shard_dataset(shard),
        fp,
        batch_size,
        num_samples=info.num_samples,
        batched=shard.batched,
        padding=options.padding,
        truncating=options.truncating,
    )
