"""On a real GPU only: the probe, the sampler, the dashboard and the CLI read NVML as the
hardware says, and see memory another library takes.

Everything else about GPUs is tested with named fake-NVML scenarios; these tests are
skipped where NVML sees no GPU (CI and this project's own machines) and were run on a lent
GPU machine with ``pytest -m gpu tests/test_gpu_hardware.py``. Allocations use PyTorch or
CuPy, whichever is installed (TensorFlow is not needed: planning never loads it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rich.console import Console

from memtune.core.budget import resolve_budget, resolve_device
from memtune.core.units import format_bytes
from memtune.probe import probe
from memtune.probe.nvml import load_pynvml
from memtune.proc.monitor import MemorySampler
from memtune.ui.dashboard import DashboardState, render

GiB = 1024**3
MiB = 1024**2


def _real_gpus() -> int:
    try:
        return len(probe().gpus)
    except Exception:
        return 0


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_real_gpus() == 0, reason="NVML sees no GPU on this machine"),
]


def _allocator() -> Callable[[int], Any] | None:
    """A function taking n bytes on GPU 0 (the buffer is returned), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            return lambda n: torch.ones(n, dtype=torch.uint8, device="cuda:0")
    except Exception:
        pass
    try:
        import cupy

        return lambda n: cupy.ones(n, dtype=cupy.uint8)
    except Exception:
        return None


@pytest.fixture
def allocate() -> Iterator[Callable[[int], Any]]:
    take = _allocator()
    if take is None:
        pytest.skip("neither PyTorch with CUDA nor CuPy is installed")
    take(MiB)  # the CUDA context first, so it is not counted with the buffer
    yield take


def test_the_probe_reads_every_gpu_as_nvml_reports_it() -> None:
    seen = probe()
    assert seen.gpus and not seen.warnings
    for g in seen.gpus:
        assert g.name and g.total_bytes > GiB
        assert 0 < g.free_bytes <= g.total_bytes and 0 <= g.used_bytes <= g.total_bytes
        # NVML's used and free need not add up to the total (reserved memory), but close.
        assert g.total_bytes - (g.free_bytes + g.used_bytes) < g.total_bytes // 10
    device = resolve_device(seen, "auto")
    best = max(seen.gpus, key=lambda g: g.free_bytes)
    assert device == f"gpu:{best.index}"
    assert resolve_budget(seen, device, None).budget_bytes == best.free_bytes


def test_memory_another_library_takes_shows_in_the_probe_and_the_sampler(
    allocate: Callable[[int], Any],
) -> None:
    sampler = MemorySampler(interval=0.05, nvml=load_pynvml())
    before, used_before = probe().gpus[0].free_bytes, sampler.sample().gpu_used[0]
    buffer = allocate(4 * GiB)
    after, used_after = probe().gpus[0].free_bytes, sampler.sample().gpu_used[0]
    del buffer
    assert used_before is not None and used_after is not None
    taken, grew = before - after, used_after - used_before
    print(f"4 GiB allocated: probe free fell {taken / MiB:.0f} MiB, used rose {grew / MiB:.0f} MiB")
    for change in (taken, grew):
        assert 4 * GiB - 8 * MiB <= change <= 4 * GiB + 256 * MiB
    sampler.stop()


def test_the_dashboard_shows_the_real_gpu() -> None:
    sampler = MemorySampler(interval=0.05, nvml=load_pynvml())
    started = time.perf_counter()
    samples = [sampler.sample() for _ in range(20)]
    per_sample = (time.perf_counter() - started) / 20
    print(f"one sample with NVML: {per_sample * 1e3:.2f} ms")  # a figure, not a target
    console = Console(record=True, width=100, color_system=None)
    console.print(render(DashboardState(usable_bytes=GiB, batch_size=8), samples, GiB))
    text = console.export_text()
    total = samples[-1].gpu_total[0]
    assert total is not None and f"/ {format_bytes(total)}" in text
    assert "N/A" not in text
    sampler.stop()


@pytest.mark.parametrize(("visible", "count"), [("", 0), ("-1", 0), ("0", 1)])
def test_cuda_visible_devices_decides_what_the_cli_sees(visible: str, count: int) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
    done = subprocess.run(
        [sys.executable, "-m", "memtune", "probe", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stderr == ""
    gpus = json.loads(done.stdout)["gpus"]
    assert len(gpus) == count
    assert all(g["index"] == 0 for g in gpus)
