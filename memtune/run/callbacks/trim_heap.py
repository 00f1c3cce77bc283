"""``TrimHeap``: each epoch starts on the memory the last one freed, not beside it."""

from __future__ import annotations

from typing import Any

from memtune.proc import heap
from memtune.proc import tf as _tf

keras = _tf.keras()


class TrimHeap(keras.callbacks.Callback):  # type: ignore[name-defined]
    """Hands freed memory back to the system as each epoch begins (:func:`heap.trim`).

    Each epoch's ``tf.data`` iterator runs on new threads; what the last one's threads freed
    stays cached in glibc's arenas, and the new epoch's batches land beside it. Both ``fit``
    and a trial run it, so a trial's peak is the one ``fit`` keeps (see
    :func:`heap.configure`; the measurements are in docs/how-memtune-decides.md)."""

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        heap.trim()
