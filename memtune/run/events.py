"""What a training run tells the rest of memtune, typed: a :class:`BatchChange`, and the
:class:`RunListener` whose hooks receive it (no-op by default, the shape of a Keras
``Callback``). The dashboard and the trace are listeners; ``fit`` calls the hooks of every
callback that is one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BatchChange:
    """The batch changed mid-run (``before`` → ``after`` samples, per replica) at ``sample``
    of ``epoch``; with length buckets, the bucket whose batch changed. ``after`` equals
    ``before`` when the run only waited for memory (``waited_seconds``)."""

    epoch: int
    sample: int
    before: int
    after: int
    accumulation: int
    reason: str
    bucket_length: int | None = None
    waited_seconds: float | None = None

    @property
    def changed(self) -> bool:
        return self.after != self.before

    def to_json(self) -> dict[str, Any]:
        """As ``fit --json``'s ``batch_size_changes`` and the trace record it."""
        out: dict[str, Any] = {
            "epoch": self.epoch,
            "sample": self.sample,
            "from": self.before,
            "to": self.after,
            "gradient_accumulation_steps": self.accumulation,
            "reason": self.reason,
        }
        if self.bucket_length is not None:
            out["bucket_length"] = self.bucket_length
        if self.waited_seconds is not None:
            out["waited_seconds"] = self.waited_seconds
        return out


StepBucket = Callable[[int], tuple[int, int]]  # step i -> (bucket length, rows)


class RunListener:
    """Hooks of a whole ``fit`` run, however many ``model.fit`` calls recovery makes."""

    def run_started(self, epochs: int, first_epoch: int = 0) -> None:
        """The run starts ``epochs`` epochs (from ``first_epoch`` when resumed)."""

    def bucketed(self, step_bucket: StepBucket) -> None:
        """The run trains length buckets: ``step_bucket(i)`` is step i's bucket and rows."""

    def batch_changed(self, change: BatchChange) -> None:
        """Recovery changed the batch (out of memory, over budget, memory pressure)."""

    def memory_notice(self, notice: str) -> None:
        """The watchdog's or recovery's word on memory (a halving that freed nothing, a
        wait for memory)."""

    def run_finished(self) -> None:
        """The run ended: trained, failed or interrupted."""


def listeners(callbacks: Iterable[Any]) -> list[RunListener]:
    """The callbacks that listen to the run."""
    return [c for c in callbacks if isinstance(c, RunListener)]
