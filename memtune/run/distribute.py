"""tf.distribute: which strategy, how many replicas, and each worker's share of the data.

The choice (:func:`resolve_topology`) is pure — a probe, the flags and ``TF_CONFIG`` in, a
:class:`Topology` out — so it is tested without GPUs or a cluster. :func:`make_strategy` is
where TensorFlow is touched: logical CPU devices for ``--cpu-replicas`` (which must be set
before TensorFlow starts its devices) and the strategy itself.

The batch in a plan is **per replica**; the global batch is ``batch × replicas``. Mirrored
replicas on GPUs each hold a copy of the model, so the plan is made against the GPU with the
least free memory; replicas on logical CPU devices share the host's RAM, so their trials run
under the same strategy and measure the whole process.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from memtune.core.errors import MemtuneError
from memtune.core.options import STRATEGIES
from memtune.probe import Probe


@dataclass(frozen=True)
class Topology:
    """Where training runs: ``strategy`` is ``none``, ``mirrored`` or ``multiworker``."""

    strategy: str = "none"
    local_replicas: int = 1
    workers: int = 1
    worker_index: int = 0
    devices: tuple[str, ...] = ()  # this process's replica devices: ("gpu:0", "gpu:1"), ...
    cpu_replicas: int = 1  # logical CPU devices to make (1: the CPU as it is)

    @property
    def replicas(self) -> int:
        return self.local_replicas * self.workers

    @property
    def active(self) -> bool:
        return self.strategy != "none"


def parse_tf_config(text: str | None) -> tuple[int, int] | None:
    """(workers, this worker's index) from ``TF_CONFIG``; None when it is unset or empty."""
    if not text or not text.strip():
        return None
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        kind, index = task["type"], int(task["index"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise MemtuneError(
            "TF_CONFIG: expected JSON with cluster.worker (a list of host:port) and "
            'task {"type": "worker", "index": N}'
        ) from None
    if not isinstance(workers, list) or not workers:
        raise MemtuneError("TF_CONFIG: cluster.worker must be a non-empty list of host:port")
    if kind not in ("worker", "chief"):
        raise MemtuneError(f"TF_CONFIG: task type {kind!r}: memtune runs as a worker")
    if not 0 <= index < len(workers):
        raise MemtuneError(f"TF_CONFIG: task index {index} is not one of {len(workers)} workers")
    return len(workers), index


def resolve_topology(
    strategy: str,
    cpu_replicas: int | None,
    probe: Probe,
    device: str,
    tf_config: str | None = None,
    *,
    pinned: bool = False,
) -> Topology:
    """The strategy the flags ask for on this machine (``auto``: mirrored on several GPUs,
    multiworker when ``TF_CONFIG`` names several workers, ``--cpu-replicas`` > 1 mirrored).

    ``pinned``: the user named one GPU (``--device gpu:1``), so ``auto`` keeps to it.
    """
    if strategy not in STRATEGIES:
        raise MemtuneError(f"--strategy {strategy!r}: expected {', '.join(STRATEGIES)}")
    if cpu_replicas is not None and device != "cpu":
        raise MemtuneError(f"--cpu-replicas splits the CPU; the plan's device is {device}")
    cluster = parse_tf_config(tf_config)
    on_gpu = device != "cpu"
    gpus = tuple(f"gpu:{g.index}" for g in probe.gpus) if on_gpu else ()
    cpus = cpu_replicas or 1
    local_devices = (gpus or (device,)) if on_gpu else tuple(f"cpu:{i}" for i in range(cpus))
    if strategy == "auto":
        if cluster is not None and cluster[0] > 1:
            strategy = "multiworker"
        elif (len(gpus) > 1 and not pinned) or cpus > 1:
            strategy = "mirrored"
        else:
            strategy = "none"
    if strategy == "none":
        if cpus > 1:
            raise MemtuneError("--cpu-replicas needs a strategy: use --strategy mirrored")
        return Topology()
    if strategy == "multiworker":
        if cluster is None:
            raise MemtuneError(
                "--strategy multiworker needs TF_CONFIG naming the workers (see README)"
            )
        workers, index = cluster
        return Topology("multiworker", len(local_devices), workers, index, local_devices, cpus)
    if not on_gpu and cpus == 1:
        raise MemtuneError(
            "--strategy mirrored: no GPU to mirror over on this plan's device (cpu); add "
            "--cpu-replicas N to split the CPU into N replicas, or drop --strategy"
        )
    return Topology("mirrored", len(local_devices), 1, 0, local_devices, cpus)


def tightest_device(topology: Topology, probe: Probe, device: str) -> str:
    """The replica device with the least free memory: the one the per-replica plan must fit."""
    if device == "cpu" or len(topology.devices) < 2:
        return device
    free = {f"gpu:{g.index}": g.free_bytes for g in probe.gpus}
    return min(topology.devices, key=lambda d: (free.get(d, 0), d))


def resolve(
    strategy: str, cpu_replicas: int | None, probe: Probe, device: str, requested: str
) -> Topology:
    """:func:`resolve_topology` with this process's ``TF_CONFIG``; ``requested`` is the
    ``--device`` flag as given (``gpu:N`` pins one GPU)."""
    pinned = requested.strip().lower().startswith("gpu:")
    config = os.environ.get("TF_CONFIG")
    return resolve_topology(strategy, cpu_replicas, probe, device, config, pinned=pinned)


# ------------------------------------------------------------------ TensorFlow from here on


def make_strategy(topology: Topology) -> Any:
    """The ``tf.distribute`` strategy for ``topology`` (None for ``none``).

    Logical CPU devices can only be made before TensorFlow starts its devices: a process that
    already ran TensorFlow (a notebook, a test session) gets a clear error instead.
    """
    if not topology.active:
        return None
    from memtune.proc import tf as _tf

    tf = _tf.tensorflow()
    on_cpu = topology.devices[0].startswith("cpu")
    if on_cpu:
        with contextlib.suppress(RuntimeError):  # already started: _split_cpu says so if needed
            tf.config.set_visible_devices([], "GPU")
        _split_cpu(tf, topology.cpu_replicas)
    if topology.strategy == "multiworker":
        with _tf.native_stderr_quiet():
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _keras_multiworker_workaround()
        return strategy
    names = [d.name for d in tf.config.list_logical_devices("CPU" if on_cpu else "GPU")]
    if not on_cpu:
        wanted = {f"/device:GPU:{d.split(':')[1]}" for d in topology.devices}
        names = [n for n in names if any(n.endswith(w) for w in wanted)] or names
    return tf.distribute.MirroredStrategy(names[: topology.local_replicas])


def _split_cpu(tf: Any, replicas: int) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    have = tf.config.get_logical_device_configuration(cpu)
    if replicas <= 1 and not have:
        return
    if have is not None and len(have) == replicas:
        return
    try:
        config = tf.config.LogicalDeviceConfiguration
        tf.config.set_logical_device_configuration(cpu, [config() for _ in range(replicas)])
    except RuntimeError:
        raise MemtuneError(
            f"--cpu-replicas {replicas}: TensorFlow already started its devices in this "
            "process; run memtune in a fresh process (the command line always is one)"
        ) from None


def _keras_multiworker_workaround() -> None:
    """Keras 3 ``fit`` under MultiWorkerMirroredStrategy fails reducing its logs across
    workers (keras-team/keras#20585). Gradients are all-reduced by the optimizer either way;
    reduced like a single worker's, the logs are this worker's own."""
    import keras.src.backend.tensorflow.trainer as keras_trainer

    keras_trainer._collective_all_reduce_multi_worker = lambda strategy: False


def build_for_multiworker(model: Any, strategy: Any, example: tuple[Any, Any]) -> None:
    """Build the model's training state from one local batch, then stop Keras from building
    it again from a distributed batch (the cross-worker reduction of #20585 fails there)."""
    with strategy.scope():
        model._symbolic_build(data_batch=example)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def agree_on_batch(strategy: Any, batch_size: int) -> int:
    """The smallest per-replica batch any worker planned: every worker must take the same."""
    from memtune.proc import tf as _tf

    tf = _tf.tensorflow()

    @tf.function
    def gather() -> Any:
        context = tf.distribute.get_replica_context()
        return context.all_gather(tf.constant([batch_size], tf.int64), axis=0)

    per_replica = strategy.run(gather)
    local = strategy.experimental_local_results(per_replica)[0]
    return int(tf.reduce_min(local).numpy())
