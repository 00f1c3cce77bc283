"""Host memory: psutil for the machine, cgroup files for the container's limit.

What is *available* is the kernel's ``MemAvailable`` (free memory plus page cache it can take
back), capped inside a memory cgroup by the limit less what the group holds that the kernel
cannot reclaim (:func:`group_held`). The host
must keep :data:`RESERVE_BYTES` of it: memtune's budget counts held memory
(:mod:`memtune.probe.process`), so the library code its processes run needs room that the
budget does not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from memtune.probe import process

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_VMSTAT = Path("/proc/vmstat")
# cgroup v1 writes "no limit" as a page-rounded LONG_MAX; anything this large means none.
_NO_LIMIT = 1 << 60
# What the host (or the memory cgroup) must keep available: room for the library code a
# TensorFlow process runs, which the budget does not count. Measured in a 1 GiB v1 memory
# cgroup on a fresh page cache, an MLP holding 294 MiB: 256 MiB of room for file pages
# trained in 2.7 s (2.1 s unconstrained), 186 MiB in 3.4 s, 126 MiB in 6.9 s (thrashing).
# The rest covers the planning process's readers beside a trial.
RESERVE_BYTES = 384 * 1024**2


@dataclass(frozen=True)
class HostMemory:
    """What the host can give this process, in bytes."""

    total_bytes: int
    available_bytes: int
    limit_bytes: int | None
    process_bytes: int = 0  # what this process holds now: part of what a budget covers
    reserve_bytes: int = RESERVE_BYTES  # what must stay available (see RESERVE_BYTES)

    @property
    def can_give(self) -> int:
        """What memtune's tree may hold at most: what it holds plus what is available,
        less the reserve."""
        return max(0, self.available_bytes - self.reserve_bytes) + self.process_bytes

    def to_json(self) -> dict[str, int | None]:
        return {
            "total_bytes": self.total_bytes,
            "available_bytes": self.available_bytes,
            "limit_bytes": self.limit_bytes,
            "reserve_bytes": self.reserve_bytes,
        }


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def own_cgroups(proc: Path = PROC_CGROUP) -> tuple[str | None, str | None]:
    """This process's cgroup paths from ``/proc/self/cgroup``: (v2, v1 memory controller)."""
    try:
        text = proc.read_text()
    except OSError:
        return None, None
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _up_from(base: Path, path: str | None) -> list[Path]:
    """The cgroup's folder under ``base`` and each parent up to ``base``, those that exist
    (inside a container the path may name folders this mount does not show)."""
    parts = [p for p in (path or "/").strip("/").split("/") if p]
    found = [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [folder for folder in found if folder.is_dir()]


def _stat(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (memory.stat) as a dict; {} if unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def group_held(usage: int | None, stat: dict[str, int], v1: bool) -> int | None:
    """What a memory cgroup holds that the kernel cannot reclaim: its usage less the page
    cache that is not shared memory (and, v2, less reclaimable slab). That leaves anonymous
    and shared pages and kernel memory: the per-process measure's counterpart.

    Not the working set container runtimes show (usage less *inactive* file pages): that
    counts the active file pages of the libraries a TensorFlow process maps, ~400 MiB, which
    the kernel trims before it kills (an MLP holding 294 MiB trained in a 550 MiB group with
    73 MiB of them resident), so a 1 GiB group would never leave a budget room to train."""
    if usage is None:
        return None
    if v1:
        cache, shmem, slab = stat.get("total_cache", 0), stat.get("total_shmem", 0), 0
    else:
        cache, shmem = stat.get("file", 0), stat.get("shmem", 0)
        slab = stat.get("slab_reclaimable", 0)
    return max(0, usage - max(0, cache - shmem) - slab)


def _limits_v2(folder: Path) -> tuple[int | None, int | None]:
    limits = [v for v in (_read_int(folder / f) for f in ("memory.max", "memory.high")) if v]
    held = group_held(_read_int(folder / "memory.current"), _stat(folder / "memory.stat"), False)
    return (min(limits) if limits else None), held


def _limits_v1(folder: Path) -> tuple[int | None, int | None]:
    limit = _read_int(folder / "memory.limit_in_bytes")
    if limit is not None and limit >= _NO_LIMIT:
        limit = None
    usage = _read_int(folder / "memory.usage_in_bytes")
    return limit, group_held(usage, _stat(folder / "memory.stat"), True)


def cgroup_memory(
    root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP
) -> tuple[int | None, int | None]:
    """(limit, held) of the tightest memory limit over this process's own cgroup and its
    parents: v2 ``memory.max`` / ``memory.high``, v1 ``memory.limit_in_bytes``; held is
    what the group holds that the kernel cannot reclaim (:func:`group_held`, from usage —
    v2 ``memory.current``, v1 ``memory.usage_in_bytes`` — and ``memory.stat``). The
    tightest is the one with the least room left. None where no limit is set."""
    v2_path, v1_path = own_cgroups(proc)
    v2_base = root / "unified" if (root / "unified" / "cgroup.controllers").exists() else root
    found = [_limits_v2(f) for f in _up_from(v2_base, v2_path) if (f / "memory.max").exists()]
    found += [_limits_v1(f) for f in _up_from(root / "memory", v1_path)]
    limited = [(limit, usage) for limit, usage in found if limit is not None]
    if not limited:
        return None, None
    return min(limited, key=lambda lu: lu[0] - (lu[1] or 0))


def _counter(path: Path, name: str) -> int:
    """The value of ``name`` in a ``key value`` per line file (memory.events, vmstat); 0."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def oom_kills(
    root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP, vmstat: Path = PROC_VMSTAT
) -> int:
    """How many processes the kernel's OOM killer has killed, as this process can see:
    in its own cgroup and each parent (v2 ``memory.events``, v1 ``memory.oom_control``)
    and on the whole host (``/proc/vmstat``). Only a rise matters: a trial child killed
    with SIGKILL while it rose was killed for memory, not by a user."""
    v2_path, v1_path = own_cgroups(proc)
    v2_base = root / "unified" if (root / "unified" / "cgroup.controllers").exists() else root
    kills = sum(_counter(f / "memory.events", "oom_kill") for f in _up_from(v2_base, v2_path))
    kills += sum(
        _counter(f / "memory.oom_control", "oom_kill") for f in _up_from(root / "memory", v1_path)
    )
    return kills + _counter(vmstat, "oom_kill")


def available_bytes(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """What the host has available now, capped by what the cgroup limit still allows."""
    return read_host(cgroup_root, proc_cgroup, own=False).available_bytes


def read_host(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP, *, own: bool = True
) -> HostMemory:
    """Host RAM now; available memory is capped by what the cgroup limit still allows
    (the limit less what the group holds). ``own``: also read what this process holds."""
    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    limit, used = cgroup_memory(cgroup_root, proc_cgroup)
    if limit is not None:
        total = min(total, limit)
        available = max(0, min(available, limit - (used or 0)))
    held = process.held() if own else 0
    return HostMemory(
        total_bytes=total, available_bytes=available, limit_bytes=limit, process_bytes=held
    )
