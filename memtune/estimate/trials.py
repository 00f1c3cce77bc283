"""Measured trials: a few real training steps at batch b, in a child process.

The user's process never trains to learn: on a CPU the kernel kills an out-of-memory
process before any exception, so each trial runs in a child that the parent watches and
stops when it passes its limit — a result ("does not fit"), not a crash. The peak is the
child's whole-process high-water mark (ru_maxrss from ``wait4``) on CPU, TensorFlow's
device peak plus the CUDA context on GPU.

Run as ``python -m memtune.estimate.trials`` it is the child: it reads one JSON spec on
stdin and prints one JSON line.
"""

from __future__ import annotations

import contextlib
import ctypes
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

from memtune import progress
from memtune.errors import MemtuneError
from memtune.plan import Trial

TRIAL_STEPS = 3
POLL_SECONDS = 0.005
PROGRESS_SECONDS = 0.25  # how often the watcher tells listeners the trial's memory
GPU_CONTEXT_BYTES = 512 * 1024**2
PARENT_ENV = "MEMTUNE_TRIAL_PARENT"
PR_SET_PDEATHSIG = 1


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
    steps: int = TRIAL_STEPS
    # The epoch's size: its last, partial batch has other shapes, and TensorFlow's memory
    # for a second set of shapes adds to the first, so the trial ends with one too.
    num_samples: int | None = None
    # >1: train under MirroredStrategy on this many logical CPU devices, as fit will; the
    # trial's batch is per replica and the whole process (every replica) is measured.
    cpu_replicas: int = 1

    def to_json(self, batch_size: int, limit_bytes: int, debug: bool) -> str:
        out = asdict(self)
        out.update(batch_size=batch_size, limit_bytes=limit_bytes, debug=debug)
        return json.dumps(out)


def run_trial(
    spec: TrialSpec,
    batch_size: int,
    *,
    limit_bytes: int,
    timeout_s: float = 300.0,
    debug: bool = False,
) -> Trial:
    """Measure one trial; a child that passes ``limit_bytes`` is stopped and reported."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env[PARENT_ENV] = str(os.getpid())
    # Its own session: a terminal's Ctrl-C reaches memtune, which stops the child itself.
    proc = subprocess.Popen(
        [sys.executable, "-m", "memtune.estimate.trials"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        return _watch_trial(proc, spec, batch_size, limit_bytes, timeout_s, debug)
    finally:
        _reap(proc)


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill the trial's process group and wait for it, whatever ended the trial (a signal
    turned into an exception included): no trial outlives the call."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, 0)
    proc.returncode = -signal.SIGKILL
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


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

    def watch() -> None:
        told = 0.0
        try:
            child = psutil.Process(proc.pid)
            while not stopped.is_set():
                rss = child.memory_info().rss
                if rss > limit_bytes and spec.device == "cpu":
                    over.set()
                    child.kill()
                    return
                now = time.monotonic()
                if now - told >= PROGRESS_SECONDS:
                    told = now
                    progress.report("trial_peak", batch=batch_size, rss=int(rss))
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
        out, err = proc.stdout.read(), proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        stopped.set()  # the watchers stop before the pid can be reused
    rss_peak = int(usage.ru_maxrss) * 1024
    if over.is_set():
        return Trial(batch_size, max(rss_peak, limit_bytes), exceeded=True)
    result = _last_json(out)
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
    return Trial(batch_size, rss_peak)


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


# ---------------------------------------------------------------------------- the child


class _RepeatBatch:
    """One synthetic batch (worst-case shapes) served ``steps`` times, the last one cut to
    ``last`` rows when the real epoch ends with a partial batch."""

    failure: MemtuneError | None = None

    def __init__(
        self, feeds: tuple[FeedSpec, ...], batch_size: int, steps: int, last: int = 0
    ) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        self.steps = steps
        self.last = last
        self.batch_size = batch_size
        self.position = 0
        self.num_samples = batch_size * steps
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
        if self.last and i == self.steps - 1:
            cut = self.last
            return (
                {k: v[:cut] for k, v in self.inputs.items()},
                {k: v[:cut] for k, v in self.targets.items()},
            )
        return self.inputs, self.targets

    def set_epoch(self, epoch: int) -> None:
        pass

    def resize(self, batch_size: int, *, epoch: int, start: int) -> None:
        raise NotImplementedError("a trial measures one batch size")


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL when memtune dies, even by SIGKILL. If memtune is
    already gone (it died before this line), exit at once."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        os._exit(1)


def _child() -> int:
    _die_with_parent()
    raw = json.loads(sys.stdin.read())
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
        steps = int(raw["steps"])
        if total:  # an epoch shorter than the trial: run exactly its steps
            steps = min(steps, -(-int(total) // batch))
        source = _RepeatBatch(feeds, batch, steps, last)
        feed = KerasFeed(footprint)
        if device != "cpu":
            tf.config.experimental.reset_memory_stats("GPU:0")
        try:
            model.fit(feed.stream(source), epochs=1, verbose=0)
        except tf.errors.ResourceExhaustedError:
            print(json.dumps({"oom": True}))
            return 0
        out: dict[str, Any] = {"ok": True}
        if device != "cpu":
            out["device_peak"] = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        print(json.dumps(out))
        return 0
    except MemtuneError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0


if __name__ == "__main__":
    raise SystemExit(_child())
