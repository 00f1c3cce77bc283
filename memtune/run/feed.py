"""What turns batches into Keras training: the ``tf.data`` feed and gradient accumulation.

The trial child imports this and nothing above it (no planning, no ``fit`` orchestration),
so measuring a trial and training for real feed Keras the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memtune.core.constants import STREAM_QUEUE_BATCHES, WORKERS
from memtune.core.errors import MemtuneError
from memtune.data.footprint import WEIGHT, Footprint
from memtune.proc import tf as _tf

if TYPE_CHECKING:  # the data readers (pandas, Arrow) stay out of a trial child
    from memtune.data.batch_sources import BatchSource
    from memtune.data.layout import Arrays


@dataclass
class KerasFeed:
    """Hands batches to Keras: a single input or output as its array, several as a dict."""

    footprint: Footprint
    streams: list[BatchSource] = field(default_factory=list)
    # Inputs whose length changes from batch to batch (length buckets): fed as None-long,
    # so one traced training function serves every bucket.
    flexible: frozenset[str] = frozenset()
    # ``class_weight`` as ``model.fit`` takes it: class id → weight, for the training stream
    class_weight: dict[int, float] | None = None

    @property
    def single_input(self) -> str | None:
        inputs = self.footprint.inputs
        return inputs[0].name if len(inputs) == 1 else None

    @property
    def single_target(self) -> str | None:
        targets = self.footprint.model_targets
        return targets[0].name if len(targets) == 1 else None

    def pair(self, inputs: Arrays, targets: Arrays) -> tuple[Any, Any]:
        """``(x, y)`` as Keras takes them (the row weights, a batch's third part, left out)."""
        x = inputs[self.single_input] if self.single_input else inputs
        if self.single_target:
            return x, targets[self.single_target]
        return x, {k: v for k, v in targets.items() if k != WEIGHT}

    def stream(self, batches: BatchSource, *, training: bool = False) -> Any:
        """A ``tf.data`` pipeline over batch indices: parallel workers, bounded prefetch.

        Each epoch yields exactly ``len(batches)`` batches in order; which rows they hold
        comes from the epoch set by :meth:`epoch_callback`. ``training``: the class weights
        apply (as Keras applies ``class_weight`` to training data only).
        """
        tf = _tf.tensorflow()
        self.streams.append(batches)
        # Row weights shape training only: validation reports plain means (Keras would
        # weight a validation_split's rows too)
        rows_weighed = training and self.footprint.weighted
        feeds = tuple(f for f in self.footprint.feeds if f.name != WEIGHT or rows_weighed)
        n_inputs = len(self.footprint.inputs)
        # Length-bucketed training batches carry per-row loss weights (Keras's third element)
        weighted = bool(getattr(batches, "weighted", False))

        def get(i: Any) -> list[Any]:
            try:
                inputs, targets = batches[int(i)]
            except MemtuneError as exc:
                batches.failure = exc
                raise
            out = [(inputs if f.role == "input" else targets)[f.name] for f in feeds]
            return [*out, batches.row_weights(int(i))] if weighted else out  # type: ignore[attr-defined]

        def load(i: Any) -> Any:
            types = [tf.as_dtype(f.dtype) for f in feeds] + ([tf.float32] if weighted else [])
            outs = tf.numpy_function(get, [i], types)
            arrays = {
                f.name: tf.ensure_shape(
                    o, (None, None, *f.shape[1:]) if f.name in self.flexible else (None, *f.shape)
                )
                for f, o in zip(feeds, outs, strict=False)
            }
            names = [f.name for f in feeds]
            x, y = self.pair(
                {k: arrays[k] for k in names[:n_inputs]}, {k: arrays[k] for k in names[n_inputs:]}
            )
            weights = tf.ensure_shape(outs[-1], (None,)) if weighted else None
            if rows_weighed:
                weights = arrays[WEIGHT] if weights is None else weights * arrays[WEIGHT]
            if training and self.class_weight:
                weights = self._weigh_classes(y, weights)
            return (x, y) if weights is None else (x, y, weights)

        return (
            tf.data.Dataset.range(len(batches))
            .map(load, num_parallel_calls=WORKERS, deterministic=True)
            .prefetch(STREAM_QUEUE_BATCHES)
        )

    def _weigh_classes(self, y: Any, weights: Any) -> Any:
        """Each row's class weight (class ids as Keras reads them: the label, or the
        one-hot's index), times the row's weight when it has one."""
        tf = _tf.tensorflow()
        assert self.class_weight is not None
        table = tf.constant(
            [self.class_weight.get(c, 1.0) for c in range(max(self.class_weight) + 1)],
            tf.float32,
        )
        if y.shape.rank >= 2 and y.shape[-1] is not None and y.shape[-1] > 1:
            classes = tf.argmax(y, axis=-1)
        else:
            classes = tf.reshape(tf.cast(y, tf.int64), [-1])
        # A class past the table (not named in class_weight) weighs 1, as in Keras
        inside = classes < table.shape[0]
        found = tf.gather(table, tf.where(inside, classes, tf.zeros_like(classes)))
        rows = tf.where(inside, found, tf.ones_like(found))
        return rows if weights is None else rows * weights

    def epoch_callback(self) -> Any:
        """Tell every stream which epoch Keras is starting (resumed runs included)."""
        keras = _tf.keras()

        def begin(epoch: int, logs: Any = None) -> None:
            for stream in self.streams:
                stream.set_epoch(epoch)

        return keras.callbacks.LambdaCallback(on_epoch_begin=begin)

    def failure(self) -> MemtuneError | None:
        """A data error a pipeline worker met, to report instead of TensorFlow's wrapper."""
        return next((s.failure for s in self.streams if s.failure is not None), None)


def set_accumulation(model: Any, steps: int) -> None:
    """Recompile with ``gradient_accumulation_steps`` (Keras 3 optimizers carry it)."""
    current = getattr(model.optimizer, "gradient_accumulation_steps", None) or 1
    if steps == current:
        return
    config = model.get_compile_config()
    config["optimizer"]["config"]["gradient_accumulation_steps"] = steps if steps > 1 else None
    model.compile_from_config(config)
