"""Memory watchdog for a CPU fit: decide, from numbers alone, when to shrink the batch.

Two dangers, both caught before the kernel's OOM killer acts (it sends no exception):

* **overrun** — this process's RSS passed the plan's usable budget and is still growing;
* **pressure** — other processes took memory the plan counted on. The budget is shared:
  whatever the host lost since training started, beyond this process's own growth, was
  taken by someone else, and comes off this process's share. When the share left (or the
  host's available memory itself) falls under the safety margin, the batch must shrink.

After a trigger the next one needs the excess to grow by a step, so allocator slack (RSS
rarely falls after a batch change) or a neighbour that merely *holds* its memory does not
halve the batch all the way down to 1; once back under the limit by a step, the next excess
triggers. (Back under it at all was not enough: a stream's RSS swings ±70 MiB between
steps, and each dip under the limit re-armed the trigger — a 2 GiB stream halved 40,423 →
2,526 at 1.85-1.90 GiB, and with Arrow's system memory pool on to batch 1, where fit gave
up at 1.81 GiB, under its budget.) Within half a step of the budget itself, though, growth
of a quarter step since the last trigger triggers again: memory that grows whatever the
batch (that system pool: 2.14 GiB at a 2 GiB budget with a step of growth per trigger)
must stop before the budget, at batch 1 if need be. When the reading after a halving is
still over the limit and no lower, the halving freed nothing, and :meth:`Watchdog.check`
says so once, so the user knows why memory stays high.
"""

from __future__ import annotations

from dataclasses import dataclass

from memtune.units import format_bytes

MiB = 1024**2


class MemoryOverrun(Exception):
    """The process is about to run out of host memory: recover before the kernel kills it."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Reading:
    """This process's RSS and the host's available memory (cgroup-capped), in bytes."""

    rss: int
    available: int


class Watchdog:
    """Judges readings taken after each training step against the plan's budget."""

    def __init__(self, budget_bytes: int, usable_bytes: int) -> None:
        self.budget = budget_bytes
        self.usable = usable_bytes
        self.margin = max(0, budget_bytes - usable_bytes)
        self.step = max(64 * MiB, budget_bytes // 20)
        self.start: Reading | None = None
        self._threshold = 0  # how far past the limit the next trigger needs
        self._halved_at: int | None = None  # RSS when the last trigger fired (one reading)
        self._last = 0  # RSS when the last trigger fired

    def others(self, now: Reading) -> int:
        """Memory other processes took since the first reading (never negative)."""
        if self.start is None:
            return 0
        lost = self.start.available - now.available
        return max(0, lost - max(0, now.rss - self.start.rss))

    def limit(self, now: Reading) -> int:
        """What this process may hold now: its usable share less what others took beyond
        the host's ordinary fluctuation (one step, which the safety margin covers), and no
        more than keeps the safety margin free on the host."""
        taken = max(0, self.others(now) - self.step)
        return min(self.usable - taken, now.rss + now.available - self.margin)

    def check(self, now: Reading) -> str | None:
        """Raise :class:`MemoryOverrun` when the batch should shrink now; return a notice
        (once) when the last halving freed nothing."""
        if self.start is None:
            self.start = now
        limit = self.limit(now)
        excess = now.rss - limit
        halved_at, self._halved_at = self._halved_at, None
        if excess <= 0:
            if excess <= -self.step:  # clearly back under: the next excess triggers
                self._threshold = 0
            return None
        # Near the budget itself, growth since the last trigger halves again however small
        # the step: memory that grows whatever the batch must stop before the budget.
        nearing = now.rss >= self.budget - self.step // 2 and now.rss >= self._last + self.step // 4
        if excess <= self._threshold and not nearing:
            if halved_at is not None and now.rss >= halved_at - self.step // 4:
                return (
                    f"halving the batch freed nothing: RSS stays at {format_bytes(now.rss)}, "
                    f"over the {format_bytes(max(0, limit))} this process may hold (TensorFlow "
                    f"keeps memory it has freed); no further halving unless it grows by "
                    f"{format_bytes(self.step)}"
                )
            return None
        self._threshold = excess + self.step
        self._halved_at = self._last = now.rss
        others = self.others(now)
        if others >= self.step or now.available < self.margin:
            raise MemoryOverrun(
                f"host memory pressure: other processes took {others} bytes since training "
                f"started; this process holds {now.rss} and may hold {max(0, limit)} now",
                reason="memory pressure",
            )
        raise MemoryOverrun(
            f"RSS {now.rss} passed the usable budget {self.usable}", reason="over budget"
        )
