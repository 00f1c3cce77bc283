"""``MemoryGuard``: the CPU memory watchdog, read after training steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil

from memtune import _tf
from memtune.probe.host import read_host
from memtune.watchdog import Reading, Watchdog

keras = _tf.keras()

# A reading costs ~70 µs (/proc and cgroup files): at most one per this many seconds.
WATCH_SECONDS = 0.01


class MemoryGuard(keras.callbacks.Callback):  # type: ignore[name-defined]
    """Raises :class:`memtune.watchdog.MemoryOverrun` after a step when this process passed
    the usable budget or other processes took the memory the plan counted on (CPU plans;
    on a GPU, TensorFlow raises ``ResourceExhaustedError`` itself)."""

    def __init__(
        self,
        budget_bytes: int,
        usable_bytes: int,
        *,
        cpu: bool,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.process = psutil.Process()
        self.watchdog = Watchdog(budget_bytes, usable_bytes) if cpu else None
        self.next_check = 0.0
        self.notify = notify  # where the watchdog's notices go (the dashboard and trace)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        now = time.monotonic()
        if self.watchdog is not None and now >= self.next_check:
            self.next_check = now + WATCH_SECONDS
            rss = int(self.process.memory_info().rss)
            notice = self.watchdog.check(Reading(rss, read_host().available_bytes))
            if notice is not None and self.notify is not None:
                self.notify(notice)
