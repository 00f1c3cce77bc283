"""Named NVML scenarios, as gpustat tests them: a fake ``pynvml`` module per situation."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

GiB = 1024**3


class NVMLError(Exception):
    pass


class FakeNVML:
    """Enough of ``pynvml`` for memtune's probe; ``fail_at`` makes one call raise."""

    NVMLError = NVMLError

    def __init__(
        self,
        gpus: list[tuple[str, int, int]],
        *,
        init_fails: bool = False,
        fail_at: tuple[str, int] | None = None,
    ) -> None:
        self.gpus = gpus
        self.init_fails = init_fails
        self.fail_at = fail_at
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        self._maybe_fail("handle", i)
        return i

    def nvmlDeviceGetName(self, h: int) -> Any:
        self._maybe_fail("name", h)
        return self.gpus[h][0].encode()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        self._maybe_fail("memory", h)
        _, total, free = self.gpus[h]
        return SimpleNamespace(total=total, free=free, used=total - free)

    def _maybe_fail(self, what: str, i: int) -> None:
        if self.fail_at == (what, i):
            raise NVMLError("GPU is lost")


SCENARIOS = {
    "no_driver": lambda: FakeNVML([], init_fails=True),
    "no_gpu": lambda: FakeNVML([]),
    "one_gpu": lambda: FakeNVML([("NVIDIA A10", 24 * GiB, 20 * GiB)]),
    "two_gpus": lambda: FakeNVML(
        [("NVIDIA A100", 80 * GiB, 10 * GiB), ("NVIDIA A100", 80 * GiB, 70 * GiB)]
    ),
    "error_mid_query": lambda: FakeNVML(
        [("NVIDIA T4", 16 * GiB, 15 * GiB), ("NVIDIA T4", 16 * GiB, 12 * GiB)],
        fail_at=("memory", 1),
    ),
}
