"""The budget a plan must stay under, and the device it is for: ``--budget`` or ``auto``,
``--device`` resolved against what the probe saw."""

from __future__ import annotations

from dataclasses import dataclass

from memtune.core.errors import MemtuneError
from memtune.core.units import format_bytes
from memtune.probe import Probe


@dataclass(frozen=True)
class Budget:
    """The memory a plan must stay under, and where that number came from."""

    device: str
    budget_bytes: int
    source: str
    host_available_bytes: int  # for the dataset, which lives in host RAM even on a GPU


def resolve_device(probe: Probe, device: str, *, virtual: bool = False) -> str:
    """``auto`` → the GPU with most free memory, else ``cpu``; ``gpu`` → likewise but required.

    ``virtual`` (``--gpu-memory``): a GPU may be named that this machine does not have.
    """
    device = device.strip().lower()
    if device == "cpu":
        return "cpu"
    if virtual and not probe.gpus and (device == "gpu" or device.startswith("gpu:")):
        return "gpu:0" if device == "gpu" else device
    if device in ("auto", "gpu"):
        if probe.gpus:
            best = max(probe.gpus, key=lambda g: (g.free_bytes, -g.index))
            return f"gpu:{best.index}"
        if device == "gpu":
            raise MemtuneError("--device gpu: no GPU is visible (NVML found none)")
        return "cpu"
    if device.startswith("gpu:") and device[4:].isdigit():
        index = int(device[4:])
        if not any(g.index == index for g in probe.gpus):
            seen = ", ".join(f"gpu:{g.index}" for g in probe.gpus) or "none"
            raise MemtuneError(f"--device {device}: no such GPU (visible: {seen})")
        return f"gpu:{index}"
    raise MemtuneError(f"--device {device!r}: expected auto, cpu, gpu or gpu:N")


def resolve_budget(
    probe: Probe, device: str, budget_bytes: int | None, source: str = "--budget"
) -> Budget:
    """The budget for ``device``: as given, or ``auto`` (what is free there now).

    On the CPU the budget bounds the memory memtune's process tree holds (anonymous and
    shared pages, page tables: :mod:`memtune.probe.process`). ``auto`` is what the host
    (or the memory cgroup) has available less the reserve it must keep, plus what memtune
    already holds. A given budget above that is clipped to it, and the source says so: a
    budget the machine cannot honour would only let the plan run into the kernel.
    """
    host = probe.host
    if device == "cpu":
        can_give = host.can_give
        reserve = format_bytes(host.reserve_bytes)
        if budget_bytes is not None and budget_bytes > can_give:
            return Budget(
                device,
                can_give,
                f"{source} {format_bytes(budget_bytes)} clipped to what the host can give: "
                f"{format_bytes(host.available_bytes)} available less the {reserve} reserve, "
                f"+ {format_bytes(host.process_bytes)} memtune holds",
                host.available_bytes,
            )
        if budget_bytes is not None:
            return Budget(device, budget_bytes, source, host.available_bytes)
        where = "available host memory" + (
            " (capped by the cgroup limit)" if host.limit_bytes is not None else ""
        )
        return Budget(device, can_give, f"{where} less the {reserve} reserve", host.available_bytes)
    if budget_bytes is not None:
        return Budget(device, budget_bytes, source, host.available_bytes)
    index = int(device.split(":")[1])
    gpu = next(g for g in probe.gpus if g.index == index)
    return Budget(
        device, gpu.free_bytes, f"free memory of {device} ({gpu.name})", host.available_bytes
    )
