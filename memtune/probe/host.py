"""Host memory: psutil for the machine, cgroup files for the container's limit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as a page-rounded LONG_MAX; anything this large means none.
_NO_LIMIT = 1 << 60


@dataclass(frozen=True)
class HostMemory:
    """What the host can give this process, in bytes."""

    total_bytes: int
    available_bytes: int
    limit_bytes: int | None

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


def cgroup_memory(root: Path = CGROUP_ROOT) -> tuple[int | None, int | None]:
    """(limit, current usage) of this cgroup, v2 first then v1; None where unset or unknown."""
    v2_limit = root / "memory.max"
    if v2_limit.exists():
        return _read_int(v2_limit), _read_int(root / "memory.current")
    v1 = root / "memory"
    limit = _read_int(v1 / "memory.limit_in_bytes")
    if limit is not None and limit >= _NO_LIMIT:
        limit = None
    return limit, _read_int(v1 / "memory.usage_in_bytes")


def read_host(cgroup_root: Path = CGROUP_ROOT) -> HostMemory:
    """Host RAM now; available memory is capped by what the cgroup limit still allows."""
    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    limit, usage = cgroup_memory(cgroup_root)
    if limit is not None:
        total = min(total, limit)
        headroom = limit - (usage or 0)
        available = max(0, min(available, headroom))
    return HostMemory(total_bytes=total, available_bytes=available, limit_bytes=limit)
