"""What memory this process can use now: host RAM (with cgroup limits) and GPUs (NVML).

The one facade is :func:`probe`; tests pass a fake NVML module and a fake cgroup root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from memtune.probe import host as _host
from memtune.probe import nvml as _nvml
from memtune.probe.host import HostMemory
from memtune.probe.nvml import GpuMemory

__all__ = ["GpuMemory", "HostMemory", "Probe", "probe"]

_REAL = object()


@dataclass(frozen=True)
class Probe:
    """A snapshot of host and GPU memory."""

    host: HostMemory
    gpus: list[GpuMemory]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "host": self.host.to_json(),
            "gpus": [g.to_json() for g in self.gpus],
        }
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def probe(*, nvml: ModuleType | object | None = _REAL, cgroup_root: Path | None = None) -> Probe:
    """Read host and GPU memory now. ``nvml=None`` skips GPUs; a module object fakes NVML."""
    module = _nvml.load_pynvml() if nvml is _REAL else nvml
    warnings: list[str] = []
    gpus = _nvml.read_gpus(module, warnings)  # type: ignore[arg-type]
    host = _host.read_host(cgroup_root or _host.CGROUP_ROOT)
    return Probe(host=host, gpus=gpus, warnings=warnings)
