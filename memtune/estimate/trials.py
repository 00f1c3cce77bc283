"""Measured trials: real training steps at batch b on the user's rows, in a child process.

The user's process never trains to learn: on a CPU the kernel kills an out-of-memory
process before any exception, so each trial runs in a child that the parent watches and
stops when it passes its limit — a result ("does not fit"), not a crash. The limit covers
the whole tree: the child is stopped when it plus the planning process pass it. A trial
trains until its peak stops growing (:class:`~memtune.callbacks.flat_peak.FlatPeak`). The
peak is the child's whole-process high-water mark (its own ``VmHWM``, reported as it ends;
``ru_maxrss`` would include the parent's) on CPU, TensorFlow's device peak plus the CUDA
context on GPU.

Run as ``python -m memtune.estimate.trials`` it is the child: it reads one JSON spec on
stdin and prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from memtune import children, heap, progress
from memtune.errors import MemtuneError
from memtune.plan import Trial
from memtune.probe import process
from memtune.probe.host import oom_kills

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

    def to_json(self, batch_size: int, limit_bytes: int, debug: bool) -> str:
        out = asdict(self)
        out.update(batch_size=batch_size, limit_bytes=limit_bytes, debug=debug)
        return json.dumps(out)


def own_held() -> int:
    """What this (the planning) process holds now."""
    return process.held()


def bare_child_bytes() -> int:
    """What a trial child holds before it loads TensorFlow: what the planning process holds
    beyond it is held by ``fit``'s process too, beside training."""
    proc = children.spawn("memtune.estimate.trials")
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
) -> Trial:
    """Measure one trial; stopped when the child plus this process pass ``limit_bytes``."""
    kills = oom_kills()
    proc = children.spawn("memtune.estimate.trials")
    try:
        trial = _watch_trial(proc, spec, batch_size, limit_bytes, timeout_s, debug)
    except MemtuneError:
        if not killed_for_memory(proc.returncode, kills, oom_kills()):
            raise
        # The kernel (a cgroup or the host) ran out first: as good as passing the limit.
        progress.report("trial_oom_killed", batch=batch_size)
        return Trial(batch_size, limit_bytes, exceeded=True)
    finally:
        children.reap(proc)
    return trial


def killed_for_memory(returncode: int | None, kills_before: int, kills_after: int) -> bool:
    """A child that died of SIGKILL while the kernel's OOM-kill count rose was killed for
    memory (the kernel sends no other sign)."""
    return returncode == -signal.SIGKILL and kills_after > kills_before


def _watch_trial(
    proc: subprocess.Popen[str],
    spec: TrialSpec,
    batch_size: int,
    limit_bytes: int,
    timeout_s: float,
    debug: bool,
) -> Trial:
    stopped = threading.Event()
    over = threading.Event()

    seen = process.PeakTracker()  # what the watcher saw the child hold

    def watch() -> None:
        told = 0.0
        try:
            child = psutil.Process(proc.pid)
            while not stopped.is_set():
                reading = process.read(proc.pid)
                seen.add(reading)
                held = reading.held if reading is not None else 0
                if spec.device == "cpu" and held + process.held() > limit_bytes:
                    over.set()
                    child.kill()
                    return
                now = time.monotonic()
                if now - told >= PROGRESS_SECONDS:
                    told = now
                    progress.report("trial_peak", batch=batch_size, held=held)
                time.sleep(POLL_SECONDS)
        except psutil.Error:
            return

    def deadline() -> None:
        if not stopped.wait(timeout_s):
            proc.kill()

    watchers = [
        threading.Thread(target=watch, daemon=True),
        threading.Thread(target=deadline, daemon=True),
    ]
    for w in watchers:
        w.start()
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        try:
            proc.stdin.write(spec.to_json(batch_size, limit_bytes, debug))
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
        err = errors[0] if errors else ""
        _, status, _ = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        stopped.set()  # the watchers stop before the pid can be reused
    if over.is_set():  # the memory the child had passed
        return Trial(batch_size, seen.held, exceeded=True)
    result = children.last_json(out)
    if result is None:
        if proc.returncode != 0 and proc.returncode < 0:
            raise MemtuneError(
                f"trial at batch {batch_size} was stopped after {timeout_s:.0f} s or by a signal "
                f"({proc.returncode}); use --analytic to plan without trials"
            )
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise MemtuneError(f"trial at batch {batch_size} failed: {last}")
    if result.get("error"):
        raise MemtuneError(f"trial at batch {batch_size} failed: {result['error']}")
    if result.get("oom"):
        return Trial(batch_size, limit_bytes, exceeded=True)
    if spec.device != "cpu":
        return Trial(batch_size, int(result["device_peak"]) + GPU_CONTEXT_BYTES)
    return Trial(batch_size, max(seen.peak, int(result.get("peak_held") or 0)))


# ---------------------------------------------------------------------------- the child


class _RepeatBatch:
    """One batch served ``steps`` times — the user's rows when given, else synthetic rows of
    the same shapes — the second one cut to ``last`` rows when the real epoch ends with a
    partial batch (its shapes cost TensorFlow memory of their own, so they come early).

    Each step gathers a fresh copy in a new order, as ``fit``'s shuffled in-memory batches
    do — except a ``whole`` batch (the dataset in one step), which ``fit`` serves as a view
    of its arrays: copying it anyway grew a trial by one batch a step (conv2d, 2,000 rows:
    +23 MiB a step, 9 % over fit's peak)."""

    failure: MemtuneError | None = None

    def __init__(
        self,
        feeds: tuple[FeedSpec, ...],
        batch_size: int,
        steps: int,
        last: int = 0,
        rows: str | None = None,
        *,
        whole: bool = False,
    ) -> None:
        import numpy as np

        self.steps = steps
        self.last = last
        self.whole = whole
        self.batch_size = batch_size
        self.position = 0
        self.num_samples = batch_size * steps
        if rows is not None:
            with np.load(rows) as saved:  # memtune.data.sample.write_trial_rows
                self.inputs = {k[3:]: saved[k] for k in saved.files if k.startswith("in:")}
                self.targets = {k[4:]: saved[k] for k in saved.files if k.startswith("out:")}
            return
        rng = np.random.default_rng(0)
        arrays = {}
        for f in feeds:
            shape = (batch_size, *f.shape)
            # Zeros are valid for any Embedding; floats get real values.
            arrays[f.name] = (
                np.zeros(shape, f.dtype)
                if f.dtype == "int32"
                else rng.standard_normal(shape).astype(f.dtype)
            )
        self.inputs = {f.name: arrays[f.name] for f in feeds if f.role == "input"}
        self.targets = {f.name: arrays[f.name] for f in feeds if f.role == "target"}

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> Any:
        """Fresh arrays each step, in a new order, as ``fit``'s shuffled sources give."""
        import numpy as np

        if self.whole:
            return self.inputs, self.targets
        rows = len(next(iter(self.inputs.values())))
        cut = self.last if self.last and i == min(1, self.steps - 1) else rows
        order = np.random.default_rng(i).permutation(rows)[:cut]
        return (
            {k: v[order] for k, v in self.inputs.items()},
            {k: v[order] for k, v in self.targets.items()},
        )

    def set_epoch(self, epoch: int) -> None:
        pass

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None:
        raise NotImplementedError("a trial measures one batch size")


def _carry_fit_libraries() -> None:
    """Load the libraries ``fit``'s process holds beside TensorFlow (its data readers and its
    screen), so a trial's resident memory holds them as fit's will: measured, code pages and
    all, rather than added on a guess."""
    import importlib

    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    importlib.import_module("rich.live")  # loaded, never drawn: the screen stays in memtune.ui


def _child() -> int:
    children.die_with_parent()
    heap.limit_arenas()  # as fit's process: before any library starts threads
    _carry_fit_libraries()
    raw = json.loads(sys.stdin.read())
    if raw.get("baseline"):
        print(json.dumps({"held": process.held()}))
        return 0
    from memtune import _tf

    _tf.set_debug(bool(raw.get("debug")))
    try:
        tf = _tf.tensorflow()
        device = raw["device"]
        gpus = tf.config.list_physical_devices("GPU")
        replicas = int(raw.get("cpu_replicas") or 1)
        scope: Any = contextlib.nullcontext()
        if replicas > 1:
            from memtune.distribute import Topology, make_strategy

            devices = tuple(f"cpu:{i}" for i in range(replicas))
            topology = Topology("mirrored", replicas, devices=devices, cpu_replicas=replicas)
            scope = make_strategy(topology).scope()
        elif device == "cpu":
            tf.config.set_visible_devices([], "GPU")
        else:
            index = int(device.split(":")[1])
            tf.config.set_visible_devices([gpus[index]], "GPU")
            tf.config.experimental.set_memory_growth(gpus[index], True)
        from memtune.feed import KerasFeed, set_accumulation
        from memtune.footprint import Feed, Footprint
        from memtune.model import load_model

        feeds = tuple(
            FeedSpec(f["name"], f["role"], tuple(f["shape"]), f["dtype"]) for f in raw["feeds"]
        )
        with scope:
            model = load_model(raw["model"])
            set_accumulation(model, int(raw["accumulation"]))
        footprint = Footprint(
            tuple(
                Feed(f.name, "input", (), f.shape, f.dtype, False)
                for f in feeds
                if f.role == "input"
            ),
            tuple(
                Feed(f.name, "target", (), f.shape, f.dtype, False)
                for f in feeds
                if f.role == "target"
            ),
        )
        batch, total = int(raw["batch_size"]) * replicas, raw.get("num_samples")
        last = total % batch if total and total > batch else 0
        steps = int(raw["steps"])  # later epochs go on: a short epoch does not shorten it
        # Epochs as long as fit's: a pipeline prefetches within an epoch, so an epoch of one
        # whole-dataset batch holds one batch in flight where ten steps would hold five.
        per_epoch = min(steps, -(-total // batch)) if total else steps
        whole = bool(total) and total <= batch
        source = _RepeatBatch(feeds, batch, per_epoch, last, raw.get("rows"), whole=whole)
        feed = KerasFeed(footprint)
        if device != "cpu":
            tf.config.experimental.reset_memory_stats("GPU:0")
        from memtune.callbacks.epoch_progress import EpochProgress
        from memtune.callbacks.flat_peak import FlatPeak
        from memtune.callbacks.memory_guard import MemoryGuard
        from memtune.callbacks.trim_heap import TrimHeap

        flat = FlatPeak(MIN_STEPS)
        # fit's own callbacks run here too (the guard's readings, never its stop: the
        # parent's watcher stops a trial), so their memory is part of what is measured.
        ride_along = [
            TrimHeap(),
            feed.epoch_callback(),
            EpochProgress(),
            MemoryGuard(2**62, 2**62, cpu=True, reserve_bytes=0),
        ]
        try:
            data = feed.stream(source)
            extra: dict[str, Any] = {}
            if raw.get("validation"):
                held = _RepeatBatch(feeds, batch, 2, 0, raw.get("rows"))
                extra["validation_data"] = feed.stream(held)
            epochs = -(-steps // per_epoch)
            history = model.fit(
                data,
                epochs=epochs,
                verbose=0,
                shuffle=False,
                callbacks=[*ride_along, flat],
                **extra,
            )
        except tf.errors.ResourceExhaustedError:
            print(json.dumps({"oom": True}))
            return 0
        out: dict[str, Any] = {"ok": True, "step_peaks": flat.peaks, "begin": flat.begin}
        out["validated"] = any(k.startswith("val_") for k in history.history)
        out["peak_held"] = process.peak_held()
        if device != "cpu":
            out["device_peak"] = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        print(json.dumps(out))
        return 0
    except MemtuneError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0


if __name__ == "__main__":
    children.finish(_child())
