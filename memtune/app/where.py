"""Where a run goes, resolved once: what the probe saw, the device, the tf.distribute
topology and the budget (``suggest``, ``fit`` and ``check`` share it)."""

from __future__ import annotations

from dataclasses import dataclass

from memtune.core.budget import Budget, resolve_budget, resolve_device
from memtune.core.errors import MemtuneError
from memtune.core.options import Options
from memtune.probe import Probe
from memtune.probe import probe as _probe
from memtune.run import distribute
from memtune.run.distribute import Topology


@dataclass(frozen=True)
class Where:
    """Where a run goes, resolved once: what the probe saw, the device, the tf.distribute
    topology and the budget. ``virtual``: a GPU this machine lacks (``--gpu-memory``)."""

    probe: Probe
    device: str
    topology: Topology
    budget: Budget

    @property
    def virtual(self) -> bool:
        return self.device != "cpu" and not self.probe.gpus


def locate(options: Options, seen: Probe | None = None, topology: Topology | None = None) -> Where:
    """Device, topology and budget from the options and the probe; a bad ``--device`` or
    ``--strategy`` fails here, before any work."""
    seen = seen or _probe()
    device = resolve_device(seen, options.device, virtual=options.gpu_memory_bytes is not None)
    if topology is None:
        topology = distribute.resolve(
            options.strategy, options.cpu_replicas, seen, device, options.device
        )
    if topology.active:
        device = distribute.tightest_device(topology, seen, device)
        if options.effective_batch_size is not None:
            raise MemtuneError(
                "--effective-batch-size needs gradient accumulation, which Keras 3 does not run "
                f"under tf.distribute ({topology.strategy}); the global batch is the per-replica "
                "batch × replicas"
            )
    if options.budget_bytes is None and options.gpu_memory_bytes is not None and device != "cpu":
        budget = resolve_budget(seen, device, options.gpu_memory_bytes, "--gpu-memory")
    else:
        budget = resolve_budget(seen, device, options.budget_bytes)
    return Where(seen, device, topology, budget)
