"""What a process holds that the kernel cannot take back: the one measure the budget bounds.

A process's resident set (RSS) mixes two kinds of pages. File pages — the code of the
shared libraries it mapped, most of a TensorFlow process's RSS — the kernel drops under
pressure and reads again when needed. Anonymous and shared-memory pages it can only swap
or kill for. So memtune counts, per process, from ``/proc/PID/status``:

    held = RssAnon + RssShmem + VmPTE  (page tables: kernel memory charged per process)

and the budget bounds the sum over memtune's process tree. A process that imported
TensorFlow and trained a small MLP read VmRSS 788 MiB of which 279 MiB anonymous (README,
"What memtune promises"). Reading the file takes ~20 µs, so trials can be watched every few
milliseconds (``smaps_rollup`` takes ~15 ms).

Off Linux there is no such file: RSS stands in (the safe side).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

PROC = Path("/proc")
_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmPTE")


@dataclass(frozen=True)
class ProcessMemory:
    """One reading of a process's memory, in bytes."""

    rss: int
    high_water: int  # VmHWM: the most RSS it has held (anonymous, file and shared pages)
    anon: int
    file: int
    shmem: int
    page_tables: int

    @property
    def held(self) -> int:
        """What the kernel cannot reclaim from this process: the budget's measure."""
        return self.anon + self.shmem + self.page_tables


class PeakTracker:
    """The most a process held, from its readings.

    Readings a few milliseconds apart miss a step's short spikes; the kernel's high-water
    mark (VmHWM) catches them but counts file pages too. Less the *most* file pages any
    reading saw, it is what the process held at its highest RSS, or less: file pages the
    kernel evicted afterwards (a squeezed cgroup) cannot inflate it. VmHWM less the file
    pages resident at the end read a trial 28 % over ``fit`` in a 1 GiB cgroup."""

    def __init__(self) -> None:
        self.held = 0
        self._file = 0
        self._high_water = 0
        self._page_tables = 0

    def add(self, reading: ProcessMemory | None) -> None:
        if reading is None:
            return
        self.held = max(self.held, reading.held)
        self._file = max(self._file, reading.file)
        self._high_water = max(self._high_water, reading.high_water)
        self._page_tables = max(self._page_tables, reading.page_tables)

    @property
    def peak(self) -> int:
        return max(self.held, self._high_water - self._file + self._page_tables)


def kib_fields(text: str, names: tuple[str, ...] | frozenset[str]) -> dict[str, int]:
    """``Name: N kB`` lines of a ``/proc`` file (``status``, ``smaps_rollup``), in bytes."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in names:
            parts = value.split()
            if parts and parts[0].isdigit():
                found[key] = int(parts[0]) * 1024  # the file says kB, meaning KiB
    return found


def parse_status(text: str) -> ProcessMemory | None:
    """A ``/proc/PID/status`` text as a reading; None without the memory fields (a kernel
    thread, a zombie, or no such file format)."""
    found = kib_fields(text, _FIELDS)
    if "VmRSS" not in found or "RssAnon" not in found:
        return None
    return ProcessMemory(
        rss=found["VmRSS"],
        high_water=found.get("VmHWM", found["VmRSS"]),
        anon=found["RssAnon"],
        file=found.get("RssFile", 0),
        shmem=found.get("RssShmem", 0),
        page_tables=found.get("VmPTE", 0),
    )


def read(pid: int | str = "self", proc: Path = PROC) -> ProcessMemory | None:
    """A process's memory now (``pid``: a number or ``"self"``); None if it is gone.

    Off Linux (no ``/proc``), psutil's RSS stands in for every field."""
    try:
        text = (proc / str(pid) / "status").read_text()
    except FileNotFoundError:
        if proc.is_dir():
            return None
        return _from_psutil(pid)
    except (ProcessLookupError, PermissionError, OSError):
        return None
    return parse_status(text)


def _from_psutil(pid: int | str) -> ProcessMemory | None:
    try:
        process = psutil.Process(None if pid == "self" else int(pid))
        rss = int(process.memory_info().rss)
    except (psutil.Error, ValueError):
        return None
    return ProcessMemory(rss=rss, high_water=rss, anon=rss, file=0, shmem=0, page_tables=0)


def held(pid: int | str = "self", proc: Path = PROC) -> int:
    """What a process holds now (0 if it is gone)."""
    reading = read_own(proc) if pid == "self" else read(pid, proc)
    return reading.held if reading is not None else 0


def tree_held(pid: int | None = None, proc: Path = PROC) -> int:
    """What a process and every process below it hold now: memtune's tree when ``pid`` is
    memtune's own (the default, this process). A warm parent (:mod:`memtune.proc.warm`)
    counts only its own pages: those it shares with its forked children count in them."""
    root = os.getpid() if pid is None else pid
    pids = [root]
    with contextlib.suppress(psutil.Error):
        pids += [child.pid for child in psutil.Process(root).children(recursive=True)]
    family = tuple(sorted(pids))
    return sum(unshared_held(p, proc, family) if _is_warm(p, proc) else held(p, proc) for p in pids)


WARM_NAME = "memtune-warm"  # the warm parent's /proc/PID/comm; its children rename themselves
_unshared: dict[int, tuple[float, tuple[int, ...], int]] = {}
UNSHARED_EVERY_S = 0.25  # smaps_rollup walks the page tables (~15 ms): not at every poll


def _is_warm(pid: int, proc: Path = PROC) -> bool:
    try:
        return (proc / str(pid) / "comm").read_text().strip() == WARM_NAME
    except OSError:
        return False


def unshared_held(pid: int, proc: Path = PROC, family: tuple[int, ...] = ()) -> int:
    """What a process holds that no other process shares: its private dirty pages (its
    anonymous pages and the library pages it wrote) plus its page tables, from
    ``smaps_rollup``; read again at most every 0.25 s, and at once when ``family`` (the
    processes around it) changed: a fork shares what was private, an exit gives it back,
    and a reading from before a fork would count the shared pages twice. Falls back to
    :func:`held`."""
    when, seen, value = _unshared.get(pid, (-1.0, (), 0))
    if when >= 0 and seen == family and time.monotonic() - when < UNSHARED_EVERY_S:
        return value
    reading = read(pid, proc)
    try:
        text = (proc / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return reading.held if reading is not None else 0
    private = kib_fields(text, ("Private_Dirty",)).get("Private_Dirty")
    if private is None or reading is None:
        return reading.held if reading is not None else 0
    value = private + reading.page_tables
    _unshared[pid] = (time.monotonic(), family, value)
    return value


def forget_unshared(pid: int) -> None:
    """The next :func:`unshared_held` of ``pid`` reads afresh (its sharing just changed)."""
    _unshared.pop(pid, None)


_own = PeakTracker()  # every reading of this process feeds it (the guard, the sampler)


def read_own(proc: Path = PROC) -> ProcessMemory | None:
    """This process's memory now, remembered for :func:`peak_held`."""
    reading = read("self", proc)
    _own.add(reading)
    return reading


def peak_held(proc: Path = PROC) -> int:
    """The most this process has held since it started or :func:`reset_peak`
    (:class:`PeakTracker`, fed by every :func:`read_own`)."""
    read_own(proc)
    return _own.peak


def reset_peak(proc: Path = PROC) -> bool:
    """Start this process's peak afresh from now: its readings and the kernel's high-water
    mark (``clear_refs`` 5, Linux >= 4.0), so a peak read later is training's own, not the
    data scan's before it. False where the kernel does not allow the second."""
    global _own
    _own = PeakTracker()
    try:
        (proc / "self" / "clear_refs").write_text("5")
    except OSError:
        return False
    finally:
        read_own(proc)
    return True


class PeakPoller:
    """Reads this process every ``interval`` seconds in a daemon thread while in a ``with``
    block, so :func:`peak_held` sees a step's peak and not only what is held between
    steps (the guard's readings): ``fit`` at batch 1,737 in a 1 GiB cgroup reported 487 MiB
    from those, where polling from outside read 519. A reading costs ~20 µs."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memtune-peak", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            read_own()

    def __enter__(self) -> PeakPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
