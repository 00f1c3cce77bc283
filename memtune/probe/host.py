"""Host memory: psutil for the machine, cgroup files for the container's limit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_VMSTAT = Path("/proc/vmstat")
# cgroup v1 writes "no limit" as a page-rounded LONG_MAX; anything this large means none.
_NO_LIMIT = 1 << 60


@dataclass(frozen=True)
class HostMemory:
    """What the host can give this process, in bytes."""

    total_bytes: int
    available_bytes: int
    limit_bytes: int | None
    process_bytes: int = 0  # this process's RSS now: part of what a budget may cover

    def to_json(self) -> dict[str, int | None]:
        return {
            "total_bytes": self.total_bytes,
            "available_bytes": self.available_bytes,
            "limit_bytes": self.limit_bytes,
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


def _limits_v2(folder: Path) -> tuple[int | None, int | None]:
    limits = [v for v in (_read_int(folder / f) for f in ("memory.max", "memory.high")) if v]
    return (min(limits) if limits else None), _read_int(folder / "memory.current")


def _limits_v1(folder: Path) -> tuple[int | None, int | None]:
    limit = _read_int(folder / "memory.limit_in_bytes")
    if limit is not None and limit >= _NO_LIMIT:
        limit = None
    return limit, _read_int(folder / "memory.usage_in_bytes")


def cgroup_memory(
    root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP
) -> tuple[int | None, int | None]:
    """(limit, usage) of the tightest memory limit over this process's own cgroup and its
    parents: v2 ``memory.max`` / ``memory.high``, v1 ``memory.limit_in_bytes``. The
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


def read_host(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> HostMemory:
    """Host RAM now; available memory is capped by what the cgroup limit still allows."""
    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    limit, usage = cgroup_memory(cgroup_root, proc_cgroup)
    if limit is not None:
        total = min(total, limit)
        headroom = limit - (usage or 0)
        available = max(0, min(available, headroom))
    own = int(psutil.Process().memory_info().rss)
    return HostMemory(
        total_bytes=total, available_bytes=available, limit_bytes=limit, process_bytes=own
    )
