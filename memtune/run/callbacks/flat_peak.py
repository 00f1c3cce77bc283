"""``FlatPeak``: a trial trains until its memory stops growing, not a fixed few steps."""

from __future__ import annotations

from typing import Any

from memtune.probe import process
from memtune.proc import tf as _tf

keras = _tf.keras()

FLAT_STEPS = 2  # the peak must hold over this many steps
FLAT_SHARE = 0.01  # "holds": grew by at most this share of the peak (or FLAT_BYTES)
FLAT_BYTES = 8 * 1024**2


class FlatPeak(keras.callbacks.Callback):  # type: ignore[name-defined]
    """Stops training once ``min_steps`` have run and the most the process held grew by
    at most 1 % (8 MiB) over the last two steps. The first epoch's allocator growth (arena
    fragmentation, a second set of shapes for the partial batch) shows in the first steps;
    a trial that ends while memory still climbs would promise what ``fit`` does not keep."""

    def __init__(self, min_steps: int) -> None:
        super().__init__()
        self.min_steps = min_steps
        self.peaks: list[int] = []
        self.begin = 0  # what the process held when training began

    def on_train_begin(self, logs: Any = None) -> None:
        self.begin = process.peak_held()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.peaks.append(process.peak_held())
        if len(self.peaks) < max(self.min_steps, FLAT_STEPS + 1):
            return
        grown = self.peaks[-1] - self.peaks[-1 - FLAT_STEPS]
        if grown <= max(FLAT_BYTES, FLAT_SHARE * self.peaks[-1]):
            self.model.stop_training = True
