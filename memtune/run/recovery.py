"""Recovery after out of memory: halve the batch from the sample the epoch reached, wait for
memory at batch 1 when the host is short, or stop with what to try. The policy
(:func:`recovery_action`) is pure and tested on made-up errors; :func:`is_oom_error` is the
one place that says what counts as out of memory."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Protocol

from memtune.core.errors import MemtuneError, TrainingFailed
from memtune.core.units import format_bytes
from memtune.core.watchdog import MemoryOverrun
from memtune.data.batch_sources import BatchSource
from memtune.data.bucketed import BucketedBatches
from memtune.probe.host import RESERVE_BYTES, available_bytes
from memtune.proc import tf as _tf
from memtune.run.distribute import Topology
from memtune.run.events import BatchChange

# How long a run at batch 1 waits for the host to have its reserve again before it gives
# up: a neighbour's spike passes, a neighbour that keeps its memory ends the run.
PRESSURE_WAIT_SECONDS = 60.0
_WAIT_POLL_SECONDS = 0.5


class Progress(Protocol):
    """Where training stands (:class:`~memtune.run.callbacks.epoch_progress.EpochProgress`)."""

    epoch: int
    steps: int


def is_oom_error(exc: BaseException) -> bool:
    """TensorFlow's ResourceExhaustedError (GPU) or the CPU guard's overrun."""
    if isinstance(exc, MemoryOverrun):
        return True
    return isinstance(exc, _tf.tensorflow().errors.ResourceExhaustedError)


def recovery_action(exc: BaseException, batch: int, multiworker: bool) -> str:
    """What recovery does after an out-of-memory at ``batch`` (per replica): ``"halve"``
    the batch, ``"wait"`` for memory (batch 1 under host pressure: the host, not memtune,
    is short), or ``"fail"`` (batch 1, or a ``final`` overrun: near the budget, halving
    again would add memory). Pure: tested on made-up errors."""
    if multiworker or (isinstance(exc, MemoryOverrun) and exc.final):
        return "fail"
    if batch > 1:
        return "halve"
    if isinstance(exc, MemoryOverrun) and exc.reason == "memory pressure":
        return "wait"
    return "fail"


def wait_for_memory(
    exc: MemoryOverrun,
    notify: Callable[[str], None],
    *,
    timeout: float | None = None,
    read: Callable[[], int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until the host has its reserve again (and a step to spare), at most
    ``timeout`` seconds; returns the seconds waited, or raises :class:`TrainingFailed`.
    ``notify`` gets what the run is waiting for, in units (dashboard and trace)."""
    timeout = PRESSURE_WAIT_SECONDS if timeout is None else timeout
    read = read or available_bytes
    want = RESERVE_BYTES + 64 * 1024**2
    now = read()
    notify(
        f"memory pressure at batch 1: waiting up to {timeout:.0f} s for memory "
        f"({format_bytes(now)} available, under the {format_bytes(RESERVE_BYTES)} the host must "
        f"keep; other processes took {format_bytes(exc.others)} since training started)"
    )
    waited = 0.0
    while now < want and waited < timeout:
        sleep(_WAIT_POLL_SECONDS)
        waited += _WAIT_POLL_SECONDS
        now = read()
    if now < want:
        raise TrainingFailed(
            f"memory pressure even at batch 1: waited {waited:.0f} s and the host still has only "
            f"{format_bytes(now)} available (it must keep {format_bytes(RESERVE_BYTES)}; other "
            f"processes took {format_bytes(exc.others)}); free memory or lower --budget"
        ) from exc
    notify(f"memory is back ({format_bytes(now)} available) after {waited:.0f} s: continuing")
    return waited


def recover(
    exc: BaseException,
    train: BatchSource,
    progress: Progress,
    accumulation: int,
    topology: Topology,
    planned: int,
    notify: Callable[[str], None],
) -> BatchChange:
    """Recovery's policy applied: halve the per-replica batch from the sample the epoch
    reached (doubling accumulation, so the effective batch holds, where Keras can
    accumulate), wait for memory at batch 1 when the host is short, or stop with what to try
    when it cannot."""
    what = f"{exc.reason} ({exc})" if isinstance(exc, MemoryOverrun) else "out of memory"
    if isinstance(train, BucketedBatches):
        return _recover_bucket(what, exc, train, progress, accumulation, planned, notify)
    local = topology.local_replicas
    batch = train.batch_size // local  # per replica
    action = recovery_action(exc, batch, topology.strategy == "multiworker")
    if action == "fail" and topology.strategy == "multiworker":
        raise TrainingFailed(
            f"{what} on worker index {topology.worker_index}: a multi-worker run cannot change "
            f"its batch on one worker; restart every worker with --batch-size {max(1, batch // 2)}"
        ) from exc
    if action == "fail":
        context = f"after halving from {planned}"
        raise TrainingFailed(_gave_up(what, exc, batch, "", context)) from exc
    epoch, done = progress.epoch, train.position + progress.steps * train.batch_size
    if _epoch_trained(train, progress):  # the guard raised at its end: go on from the next
        epoch, done = epoch + 1, 0
    to, waited = _continue_at(action, exc, batch, notify)
    if to < batch and not topology.active:  # Keras 3 accumulates no gradients under a strategy
        accumulation *= 2
    train.resize(to * local, epoch=epoch, start=done)
    reason = getattr(exc, "reason", "out of memory")
    return BatchChange(epoch, done, batch, to, accumulation, reason, waited_seconds=waited)


def _gave_up(what: str, exc: BaseException, batch: int, where: str, context: str) -> str:
    """Why the run stops, and what to try: a fresh process holds none of what this one kept."""
    if isinstance(exc, MemoryOverrun) and exc.final:
        return (
            f"{what}; stopped before the budget at batch {batch}{where} ({context}): a fresh "
            f"run at --batch-size {batch} starts without what this one kept"
        )
    return (
        f"{what} even at batch 1{where} ({context}); "
        "try a smaller --maxlen, mixed precision or more memory"
    )


def _continue_at(
    action: str, exc: BaseException, batch: int, notify: Callable[[str], None]
) -> tuple[int, float | None]:
    """The batch to go on at, and the seconds waited: the same batch once memory is back
    after a wait, else half of it."""
    if action == "wait":
        assert isinstance(exc, MemoryOverrun)
        return batch, round(wait_for_memory(exc, notify), 1)
    return batch // 2, None


def _epoch_trained(train: BatchSource, progress: Progress) -> bool:
    """Every step of the epoch ran (the guard raises at an epoch's end after its last)."""
    return bool(progress.steps >= len(train))


def _recover_bucket(
    what: str,
    exc: BaseException,
    train: BucketedBatches,
    progress: Progress,
    accumulation: int,
    planned: int,
    notify: Callable[[str], None],
) -> BatchChange:
    """Recovery with length buckets: halve the batch of the bucket whose step overran, keep
    the other buckets' batches. The guard reads memory after a step ends (that step
    overran, and its rows were trained); TensorFlow's OOM stops the step after the last
    one that ended."""
    after = isinstance(exc, MemoryOverrun)
    step = min(max(0, progress.steps - 1) if after else progress.steps, len(train) - 1)
    bucket = train.bucket_of(step)
    batch = train.sizes[bucket]
    length = train.bucketing.lengths[bucket]
    action = recovery_action(exc, batch, False)
    if action == "fail":
        where, context = f" in the length-{length} bucket", f"planned {planned} for the longest"
        raise TrainingFailed(_gave_up(what, exc, batch, where, context)) from exc
    epoch, steps = progress.epoch, progress.steps
    if _epoch_trained(train, progress):  # the guard raised at its end: go on from the next
        epoch, steps = epoch + 1, 0
    to, waited = _continue_at(action, exc, batch, notify)
    done = train.shrink(bucket, to, epoch=epoch, done_batches=steps)
    reason = getattr(exc, "reason", "out of memory")
    return BatchChange(epoch, done, batch, to, accumulation, reason, length, waited)


def training_failure(exc: BaseException, failure: MemtuneError | None) -> MemtuneError:
    """What to report for a failed ``model.fit``: a data error a pipeline worker met
    (``failure``), else TensorFlow's error in one line."""
    cause = failure or _memtune_cause(exc)
    if cause is not None:
        return cause
    node, message = tf_cause(str(exc))
    vocabulary = re.search(r"indices\[[\d,]+\] = (-?\d+) is not in \[0, (\d+)\)", message)
    if vocabulary and node and "embedding" in node.lower():
        layer = node.split("/")[-2] if "/" in node else node
        return MemtuneError(
            f"the data holds id {vocabulary[1]}, past the vocabulary of Embedding layer "
            f"{layer!r} (input_dim {vocabulary[2]}): ids must be in [0, {vocabulary[2]})"
        )
    at = f" at node {node}" if node else ""
    detail = " ".join(message.split())[:300]
    return TrainingFailed(f"training failed: {type(exc).__name__}{at}: {detail}")


def tf_cause(text: str) -> tuple[str | None, str]:
    """TensorFlow's error text as (the node it names, its cause): the cause comes after the
    Python stack of where the node was defined, which cut the line before it."""
    node = re.search(r"Detected at node (\S+)", text)
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    tail = lines[frames[-1] + 1 :] if frames else lines
    kept = [
        line.strip()
        for line in tail
        if line.strip() and not line.startswith(" ") and not line.strip().startswith("[[")
    ]
    return (node[1] if node else None), " ".join(kept) or " ".join(text.split())


def _memtune_cause(exc: BaseException) -> MemtuneError | None:
    """A data error raised in a pipeline worker, however Keras / TF wrapped it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemtuneError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
