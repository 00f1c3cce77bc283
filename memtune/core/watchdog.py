"""Memory watchdog for a CPU fit: decide, from numbers alone, when to shrink the batch.

Readings are *held* memory (:mod:`memtune.probe.process`: anonymous and shared pages plus
page tables, what the kernel cannot take back) and what the host, or the memory cgroup, has
available. Two dangers, both caught before the kernel's OOM killer acts (it sends no
exception):

* **over budget** — memtune holds more than the plan's usable budget and is still growing.
  An explicit budget is the user's cap on memtune's tree, not a share of the host;
* **memory pressure** — the host (or the cgroup) would run short: what is available would
  fall under the reserve it must keep (:func:`memtune.probe.host.reserve_bytes`). Memory
  other processes take matters only then: a neighbour taking 3 GiB of a host with 18 GiB
  free changes nothing (it used to halve a run to batch 1).

After a trigger the next one needs the excess to grow by a step, so allocator slack (memory
rarely falls after a batch change) does not halve the batch all the way down to 1; once back
under the limit by a step, the next excess triggers. (Back under it at all was not enough:
a stream's memory swings ±70 MiB between steps, and each dip re-armed the trigger — a 2 GiB
stream halved 40,423 → 2,526.) When the reading after a halving is still over the limit and
no lower, the halving freed nothing, and :meth:`Watchdog.check` says so once.

Within half a step of the budget itself, growth of a quarter step since the last halving
ends the run (``final``) rather than halving again: TensorFlow keeps the memory it freed and
each new batch shape adds to it, so halving on toward batch 1 carried a run past the budget
it is meant to keep (docs/benchmarks.md, "Halving near the budget").
"""

from __future__ import annotations

from dataclasses import dataclass

from memtune.core.units import format_bytes

MiB = 1024**2


class MemoryOverrun(Exception):
    """The process is about to run out of memory: recover before the kernel kills it.

    ``reason``: ``"over budget"`` or ``"memory pressure"``; ``others``: what other processes
    took since training started (bytes, for the words); ``final``: halving cannot help, the
    run must stop before the budget."""

    def __init__(self, message: str, reason: str, others: int = 0, *, final: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.others = others
        self.final = final


@dataclass(frozen=True)
class Reading:
    """What memtune holds now, and what the host (cgroup-capped) has available, in bytes."""

    held: int
    available: int


class Watchdog:
    """Judges readings taken after each training step against the plan's budget and the
    reserve the host must keep."""

    def __init__(self, budget_bytes: int, usable_bytes: int, reserve_bytes: int) -> None:
        self.budget = budget_bytes
        self.usable = usable_bytes
        self.reserve = reserve_bytes
        self.step = max(64 * MiB, budget_bytes // 20)
        self.start: Reading | None = None
        self._threshold = 0  # how far past the limit the next trigger needs
        self._halved_at: int | None = None  # held when the last trigger fired (one reading)
        self._last = 0  # held when the last trigger fired

    def others(self, now: Reading) -> int:
        """Memory other processes took since the first reading (never negative)."""
        if self.start is None:
            return 0
        lost = self.start.available - now.available
        return max(0, lost - max(0, now.held - self.start.held))

    def short(self, now: Reading) -> bool:
        """The host would run short: what is available is under its reserve."""
        return now.available < self.reserve

    def limit(self, now: Reading) -> int:
        """What memtune may hold now: its usable budget, and no more than leaves the
        host its reserve."""
        return min(self.usable, now.held + now.available - self.reserve)

    def check(self, now: Reading) -> str | None:
        """Raise :class:`MemoryOverrun` when the batch should shrink now; return a notice
        (once) when the last halving freed nothing."""
        if self.start is None:
            self.start = now
        limit = self.limit(now)
        excess = now.held - limit
        halved_at, self._halved_at = self._halved_at, None
        if excess <= 0:
            if excess <= -self.step:  # clearly back under: the next excess triggers
                self._threshold = 0
                self._last = 0  # and is a new one, not growth after the last halving
            return None
        # Near the budget itself, growth since the last trigger counts however small: memory
        # that grows whatever the batch must stop before the budget (below: the run ends).
        nearing = (
            now.held >= self.budget - self.step // 2 and now.held >= self._last + self.step // 4
        )
        if excess <= self._threshold and not nearing:
            if halved_at is not None and now.held >= halved_at - self.step // 4:
                return (
                    f"halving the batch freed nothing: memtune holds {format_bytes(now.held)}, "
                    f"over the {format_bytes(max(0, limit))} it may hold (TensorFlow keeps "
                    f"memory it has freed); no further halving unless it grows by "
                    f"{format_bytes(self.step)}"
                )
            return None
        last = self._last
        self._threshold = excess + self.step
        self._halved_at = self._last = now.held
        others = self.others(now)
        if self.short(now):
            raise MemoryOverrun(
                f"host memory pressure: {format_bytes(now.available)} available, under the "
                f"{format_bytes(self.reserve)} the host must keep; other processes took "
                f"{format_bytes(others)} since training started; memtune holds "
                f"{format_bytes(now.held)}",
                reason="memory pressure",
                others=others,
            )
        if nearing and last:
            raise MemoryOverrun(
                f"memtune holds {format_bytes(now.held)} of its {format_bytes(self.budget)} "
                f"budget and grew by {format_bytes(now.held - last)} since the last halving: "
                "TensorFlow keeps the memory it freed, and each new batch shape adds to it",
                reason="over budget",
                others=others,
                final=True,
            )
        raise MemoryOverrun(
            f"memtune holds {format_bytes(now.held)}, past the usable budget "
            f"{format_bytes(self.usable)}",
            reason="over budget",
            others=others,
        )
