"""GPU memory through NVML. Every call goes through :func:`query`, which never raises.

No driver, no library and no GPU all read as an empty list; a device whose query fails
in the middle is left out and the failure kept as a warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class GpuMemory:
    """One GPU as NVML sees it, numbered as TensorFlow will number it."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int

    def to_json(self) -> dict[str, int | str]:
        return {
            "index": self.index,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "used_bytes": self.used_bytes,
        }


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def query(fn: Callable[..., T], *args: Any) -> T | _Failed:
    """Call one NVML function; any error comes back as a value, never raised."""
    try:
        return fn(*args)
    except Exception as exc:
        return _Failed(exc)


def load_pynvml() -> ModuleType | None:
    """The real ``pynvml`` module, or None when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except Exception:
        return None
    return pynvml


def visible_indices(count: int) -> list[int]:
    """NVML indices in the order TensorFlow sees them, honouring CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    indices: list[int] = []
    for part in visible.split(","):
        part = part.strip()
        if not part.isdigit():  # UUIDs, "-1", "": treat as hiding what it cannot name
            break
        if int(part) < count:
            indices.append(int(part))
    return indices


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpus(nvml: ModuleType | None, warnings: list[str]) -> list[GpuMemory]:
    """Every visible GPU's memory; [] without NVML, a driver or a device."""
    if nvml is None or isinstance(query(nvml.nvmlInit), _Failed):
        return []
    try:
        count = query(nvml.nvmlDeviceGetCount)
        if isinstance(count, _Failed):
            warnings.append(f"NVML: cannot count GPUs ({count.error})")
            return []
        gpus: list[GpuMemory] = []
        for tf_index, nvml_index in enumerate(visible_indices(int(count))):
            handle = query(nvml.nvmlDeviceGetHandleByIndex, nvml_index)
            name = query(nvml.nvmlDeviceGetName, handle)
            memory = query(nvml.nvmlDeviceGetMemoryInfo, handle)
            failed = next((r for r in (handle, name, memory) if isinstance(r, _Failed)), None)
            if failed is not None:
                warnings.append(f"NVML: GPU {nvml_index} could not be read ({failed.error})")
                continue
            gpus.append(
                GpuMemory(
                    index=tf_index,
                    name=_text(name),
                    total_bytes=int(memory.total),  # type: ignore[union-attr]
                    free_bytes=int(memory.free),  # type: ignore[union-attr]
                    used_bytes=int(memory.used),  # type: ignore[union-attr]
                )
            )
        return gpus
    finally:
        query(nvml.nvmlShutdown)
