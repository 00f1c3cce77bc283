"""Memory over time while training: a background sampler and a JSONL trace.

Library side only (no rich): the dashboard in ``memtune.ui`` reads the sampler, and the
trace is what ``memtune report`` draws. NVML goes through the probe's never-raising query,
so a GPU lost mid-run reads as N/A and training goes on.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from memtune.probe import host, process
from memtune.probe import nvml as _nvml


@dataclass(frozen=True)
class Sample:
    """One reading: seconds since start, what this process holds (the budget's measure,
    :mod:`memtune.probe.process`) and its RSS, host available, GPU used."""

    t: float
    held: int
    rss: int
    host_available: int
    gpu_used: tuple[int | None, ...] = ()
    gpu_total: tuple[int | None, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "sample",
            "t": round(self.t, 3),
            "held": self.held,
            "rss": self.rss,
            "host_available": self.host_available,
            "gpu_used": list(self.gpu_used),
            "gpu_total": list(self.gpu_total),
        }


class Trace:
    """A JSONL file of samples and events, one object a line, flushed as it goes.

    ``append`` continues an earlier run's trace (``fit --resume``) after a ``resumed`` event
    instead of replacing it; a line a killed run left unfinished is ended first.
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        cut = append and self.path.is_file() and not self.path.read_bytes().endswith(b"\n")
        mode = "a" if append else "w"
        self._file: IO[str] = open(self.path, mode)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()
        self.failed: str | None = None  # why writing stopped (a full disk)
        self.start = time.monotonic()
        if cut and self.path.stat().st_size:
            self._file.write("\n")
        if append:
            self.event("resumed")

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            if self._file.closed or self.failed:
                return
            try:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()
            except OSError as exc:  # a full disk: the trace stops, training goes on
                self.failed = exc.strerror or str(exc)
                with contextlib.suppress(OSError):
                    self._file.close()
                print(
                    f"memtune: warning: --trace {str(self.path)!r} could not be written "
                    f"({self.failed}); the trace stops here, training goes on",
                    file=sys.stderr,
                )

    def reopen(self) -> None:
        """Append again after ``close`` (training resumed after a batch change)."""
        with self._lock:
            if self._file.closed and not self.failed:
                self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def event(self, kind: str, **fields: Any) -> None:
        self.write({"kind": kind, "t": round(time.monotonic() - self.start, 3), **fields})

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # its last flush may meet a full disk
            self._file.close()


@dataclass
class MemorySampler:
    """Samples memory every ``interval`` seconds in a daemon thread."""

    interval: float = 0.25
    nvml: ModuleType | None = None
    trace: Trace | None = None
    history: deque[Sample] = field(default_factory=lambda: deque(maxlen=240))
    peak_held: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self.trace.start if self.trace else time.monotonic()
        self._handles: list[Any] = []
        if self.nvml is not None and not isinstance(_nvml.query(self.nvml.nvmlInit), _nvml._Failed):
            count = _nvml.query(self.nvml.nvmlDeviceGetCount)
            if not isinstance(count, _nvml._Failed):
                # Numbered as the probe and TensorFlow number them (CUDA_VISIBLE_DEVICES).
                self._handles = [
                    _nvml.query(self.nvml.nvmlDeviceGetHandleByIndex, i)
                    for i in _nvml.visible_indices(int(count))
                ]

    def sample(self) -> Sample:
        used: list[int | None] = []
        total: list[int | None] = []
        nvml = self.nvml
        for handle in self._handles:
            info: Any = None
            if nvml is not None and not isinstance(handle, _nvml._Failed):
                info = _nvml.query(nvml.nvmlDeviceGetMemoryInfo, handle)
            ok = info is not None and not isinstance(info, _nvml._Failed)
            used.append(int(info.used) if ok else None)
            total.append(int(info.total) if ok else None)
        mine = process.read_own()
        held, rss = (mine.held, mine.rss) if mine is not None else (0, 0)
        s = Sample(
            time.monotonic() - self._start,
            held,
            rss,
            host.available_bytes(),
            tuple(used),
            tuple(total),
        )
        self.peak_held = max(self.peak_held, held)
        self.history.append(s)
        if self.trace is not None:
            self.trace.write(s.to_json())
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memtune-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sample()
        if self.nvml is not None and self._handles:
            _nvml.query(self.nvml.nvmlShutdown)

    def latest(self) -> Sample | None:
        return self.history[-1] if self.history else None
