"""Measured trials: real training steps at batch b on the user's rows, in a child process.

The user's process never trains to learn: on a CPU the kernel kills an out-of-memory
process before any exception, so each trial runs in a child that the parent watches and
stops when it passes its limit — a result ("does not fit"), not a crash. The limit covers
the whole tree: the child is stopped when what it and the planning process hold
(:mod:`memtune.probe.process`) passes it. A trial trains until its peak stops growing
(:class:`~memtune.run.callbacks.flat_peak.FlatPeak`). The peak on CPU is the most the child
held: the larger of what the watcher read every few milliseconds and what the child's own
high-water mark tells as it ends (``ru_maxrss`` would include the parent's); on GPU,
TensorFlow's device peak plus the CUDA context. The child itself is
:mod:`memtune.estimate.trial_child`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from memtune.core.curve import Trial
from memtune.core.errors import MemtuneError
from memtune.probe import process
from memtune.probe.host import oom_kills
from memtune.proc import children, progress, warm

CHILD = "memtune.estimate.trial_child"
MIN_STEPS = 4  # full, partial (when the epoch has one), then two to see the peak hold
MAX_STEPS = 10
POLL_SECONDS = 0.005
PROGRESS_SECONDS = 0.25  # how often the watcher tells listeners the trial's memory
GPU_CONTEXT_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class FeedSpec:
    name: str
    role: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class TrialSpec:
    """Everything a child needs to train a few steps exactly as ``memtune fit`` would."""

    model: str  # a model spec string, or a temporary .keras file for a model object
    feeds: tuple[FeedSpec, ...]
    accumulation: int = 1
    device: str = "cpu"
    steps: int = MAX_STEPS
    # The epoch's size: its last, partial batch has other shapes, and TensorFlow's memory
    # for a second set of shapes adds to the first, so the trial ends with one too.
    num_samples: int | None = None
    # >1: train under MirroredStrategy on this many logical CPU devices, as fit will; the
    # trial's batch is per replica and the whole process (every replica) is measured.
    cpu_replicas: int = 1
    # The user's rows for this batch (``memtune.data.sample``); synthetic when None.
    rows: str | None = None
    # fit validates each epoch: the trial's epochs end with an evaluation (two batches of
    # the same rows), so the evaluation's graph and pipeline are measured too.
    validation: bool = False
    # Length buckets measured together: every step's (rows, length), in order, the input
    # ``bucket_feed`` cut to that length — fit's bucket shapes, full and partial, trained in
    # one process (each new shape adds memory TensorFlow keeps). Empty: one batch shape.
    bucket_steps: tuple[tuple[int, int], ...] = ()
    bucket_feed: str | None = None

    def to_json(self, batch_size: int, limit_bytes: int, debug: bool) -> str:
        out = asdict(self)
        out.update(batch_size=batch_size, limit_bytes=limit_bytes, debug=debug)
        return json.dumps(out)


def own_held() -> int:
    """What this (the planning) process holds now."""
    return process.held()


_bare: dict[str, int] = {}  # the answer, once measured
_bare_lock = threading.Lock()


def measure_bare_child_soon() -> None:
    """Start :func:`bare_child_bytes`'s measurement now, in a thread, beside other work
    (the data scan, the warm parent's imports); the call itself then waits for it."""
    threading.Thread(target=bare_child_bytes, name="memtune-bare", daemon=True).start()


def bare_child_bytes() -> int:
    """What a trial child holds before it loads TensorFlow: what the planning process holds
    beyond it is held by ``fit``'s process too, beside training. Measured once a process:
    it depends on nothing a call changes."""
    with _bare_lock:
        held = _bare.get("held") or _bare_child()
        if held:  # a child that failed answers 0: asked again next time
            _bare["held"] = held
        return held


def _bare_child() -> int:
    proc = children.spawn(CHILD)
    try:
        out, _ = proc.communicate(json.dumps({"baseline": True}), timeout=60)
    finally:
        children.reap(proc)
    answer = children.last_json(out) or {}
    return int(answer.get("held", 0))


def run_trial(
    spec: TrialSpec,
    batch_size: int,
    *,
    limit_bytes: int,
    timeout_s: float = 300.0,
    debug: bool = False,
    alone: bool = False,
) -> Trial:
    """Measure one trial; stopped when the child plus this process pass ``limit_bytes``.
    The child is forked from the warm parent when there is one; ``alone``: it shares no
    page (the warm parent becomes it, :func:`memtune.proc.warm.spawn`)."""
    kills = oom_kills()
    proc = warm.spawn(CHILD, fresh=alone)
    watch = _Watch(proc, spec, batch_size, limit_bytes, timeout_s)
    try:
        out, err = watch.run(spec.to_json(batch_size, limit_bytes, debug))
        return watch.trial(out, err)
    except MemtuneError:
        if not killed_for_memory(proc.returncode, kills, oom_kills()):
            raise
        # The kernel (a cgroup or the host) ran out first: as good as passing the limit.
        progress.report("trial_oom_killed", batch=batch_size)
        return Trial(batch_size, limit_bytes, exceeded=True)
    finally:
        children.reap(proc)


def killed_for_memory(returncode: int | None, kills_before: int, kills_after: int) -> bool:
    """A child that died of SIGKILL while the kernel's OOM-kill count rose was killed for
    memory (the kernel sends no other sign)."""
    return returncode == -signal.SIGKILL and kills_after > kills_before


class _Watch:
    """One trial child, watched: stopped past its limit (with this process beside it) or
    its deadline; its answer read back as a :class:`Trial`."""

    def __init__(
        self,
        proc: children.Child,
        spec: TrialSpec,
        batch: int,
        limit: int,
        timeout_s: float,
    ) -> None:
        self.proc, self.spec, self.batch, self.limit = proc, spec, batch, limit
        self.timeout_s = timeout_s
        self.stopped = threading.Event()
        self.over = threading.Event()  # the watcher stopped the child at its limit
        self.seen = process.PeakTracker()  # what the watcher saw the child hold

    def run(self, request: str) -> tuple[str, str]:
        """Send the request, watch until the child ends; its stdout and stderr."""
        for target in (self._watch, self._deadline):
            threading.Thread(target=target, daemon=True).start()
        try:
            return self._communicate(request)
        finally:
            self.stopped.set()  # the watchers stop before the pid can be reused

    def _watch(self) -> None:
        told = 0.0
        try:
            child = psutil.Process(self.proc.pid)
            while not self.stopped.is_set():
                reading = process.read(self.proc.pid)
                self.seen.add(reading)
                held = reading.held if reading is not None else 0
                tree = held + process.held() + warm.private_held()
                if self.spec.device == "cpu" and tree > self.limit:
                    self.over.set()
                    child.kill()
                    return
                if time.monotonic() - told >= PROGRESS_SECONDS:
                    told = time.monotonic()
                    progress.report("trial_peak", batch=self.batch, held=held)
                time.sleep(POLL_SECONDS)
        except psutil.Error:
            return

    def _deadline(self) -> None:
        if not self.stopped.wait(self.timeout_s):
            self.proc.kill()

    def _communicate(self, request: str) -> tuple[str, str]:
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(request)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        # Both pipes at once: a child filling stderr while stdout is read would block forever.
        errors: list[str] = []
        stderr = proc.stderr
        drain = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
        drain.start()
        out = proc.stdout.read()
        drain.join()
        children.wait(proc)
        return out, errors[0] if errors else ""

    def trial(self, out: str, err: str) -> Trial:
        """What the trial measured, from the watcher and the child's answer."""
        if self.over.is_set():  # the memory the child had passed
            return Trial(self.batch, self.seen.held, exceeded=True)
        result = children.last_json(out)
        if result is None:
            raise self._failed(err)
        if result.get("error"):
            raise MemtuneError(f"trial at batch {self.batch:,} failed: {result['error']}")
        if result.get("oom"):
            return Trial(self.batch, self.limit, exceeded=True)
        if self.spec.device != "cpu":
            return Trial(self.batch, int(result["device_peak"]) + GPU_CONTEXT_BYTES)
        return Trial(self.batch, max(self.seen.peak, int(result.get("peak_held") or 0)))

    def _failed(self, err: str) -> MemtuneError:
        code = self.proc.returncode
        if code is not None and code < 0:
            return MemtuneError(
                f"trial at batch {self.batch:,} was stopped after {self.timeout_s:.0f} s or by a "
                f"signal ({code}); use --analytic to plan without trials"
            )
        last = (err.strip().splitlines() or ["no output"])[-1]
        return MemtuneError(f"trial at batch {self.batch:,} failed: {last}")


def decode_feeds(raw: list[dict[str, Any]]) -> tuple[FeedSpec, ...]:
    """The feeds of a request, as the child reads them back."""
    return tuple(FeedSpec(f["name"], f["role"], tuple(f["shape"]), f["dtype"]) for f in raw)
