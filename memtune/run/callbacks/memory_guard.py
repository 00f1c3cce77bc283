"""``MemoryGuard``: the CPU memory watchdog, read after training steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from memtune.core.watchdog import MemoryOverrun, Reading, Watchdog
from memtune.probe import process
from memtune.probe.host import RESERVE_BYTES, available_bytes
from memtune.proc import tf as _tf

keras = _tf.keras()

# A reading costs ~70 µs (/proc and cgroup files): at most one per this many seconds.
WATCH_SECONDS = 0.01


class MemoryGuard(keras.callbacks.Callback):  # type: ignore[name-defined]
    """Raises :class:`memtune.core.watchdog.MemoryOverrun` after a step when what this process
    holds passed the usable budget or the host would run short of its reserve (CPU plans;
    on a GPU, TensorFlow raises ``ResourceExhaustedError`` itself).

    After an epoch's last step it raises at the epoch's end instead, once validation and
    the other callbacks have run (it must come last): every row of the epoch is trained,
    and recovery goes on from the next epoch. Raised mid-step-list, a partial last batch
    counted as a full one put the epoch's restart past its end (fit crashed on wide-mlp,
    8,000 rows at batch 3,746). After the run's last step there is nothing to recover."""

    def __init__(
        self,
        budget_bytes: int,
        usable_bytes: int,
        *,
        cpu: bool,
        notify: Callable[[str], None] | None = None,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        super().__init__()
        self.watchdog = Watchdog(budget_bytes, usable_bytes, reserve_bytes) if cpu else None
        self.next_check = 0.0
        self.notify = notify  # where the watchdog's notices go (the dashboard and trace)
        self.pending: MemoryOverrun | None = None  # raised at the epoch's end

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        now = time.monotonic()
        if self.watchdog is not None and now >= self.next_check:
            self.next_check = now + WATCH_SECONDS
            try:
                notice = self.watchdog.check(Reading(process.held(), available_bytes()))
            except MemoryOverrun as overrun:
                if batch + 1 < (self.params.get("steps") or 0):
                    raise
                self.pending = overrun
                return
            if notice is not None and self.notify is not None:
                self.notify(notice)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        overrun, self.pending = self.pending, None
        if overrun is not None and epoch + 1 < (self.params.get("epochs") or 0):
            raise overrun
