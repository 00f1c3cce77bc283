"""``EpochProgress``: where training stands, for recovery and the result."""

from __future__ import annotations

import time
from typing import Any

from memtune.proc import tf as _tf

keras = _tf.keras()


class EpochProgress(keras.callbacks.Callback):  # type: ignore[name-defined]
    """The epoch and step reached (a recovery continues from there), each epoch's logs, and
    the time spent inside epochs (what the result's samples/s is measured over)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch, self.steps = 0, 0
        self.logs: dict[int, dict[str, float]] = {}
        self.seconds = 0.0
        self._began = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch, self.steps = epoch, 0
        self._began = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.steps = batch + 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.logs[epoch] = {k: float(v) for k, v in (logs or {}).items()}
        self.seconds += time.perf_counter() - self._began
