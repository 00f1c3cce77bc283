"""tf.distribute: the strategy chosen per machine, workers' shares of the data, and real
training under MirroredStrategy (2 logical CPUs) and MultiWorkerMirroredStrategy (2 worker
processes on loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memtune.cli import main
from memtune.core.errors import MemtuneError
from memtune.core.options import make_options
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.batch_sources import EvenBatches, StreamingBatches
from memtune.data.footprint import footprint
from memtune.data.layout import layout_for
from memtune.data.scan import scan
from memtune.data.shares import balanced_cuts, worker_blocks
from memtune.probe import probe
from memtune.run.distribute import parse_tf_config, resolve_topology, tightest_device
from tests.conftest import SIZES, id_shards, write_factory
from tests.nvml_fakes import SCENARIOS


def tf_config(workers: int, index: int, ports: list[int] | None = None) -> str:
    ports = ports or [2222 + i for i in range(workers)]
    return json.dumps(
        {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


# ------------------------------------------------------------------ choosing a strategy


def test_auto_is_mirrored_on_two_gpus_planned_against_the_tighter() -> None:
    seen = probe(nvml=SCENARIOS["two_gpus"]())  # gpu:0 has 10 GiB free, gpu:1 70 GiB
    topology = resolve_topology("auto", None, seen, "gpu:1")
    assert (topology.strategy, topology.replicas, topology.devices) == (
        "mirrored",
        2,
        ("gpu:0", "gpu:1"),
    )
    assert tightest_device(topology, seen, "gpu:1") == "gpu:0"


def test_auto_keeps_to_a_gpu_the_user_named() -> None:
    seen = probe(nvml=SCENARIOS["two_gpus"]())
    assert not resolve_topology("auto", None, seen, "gpu:1", pinned=True).active
    assert resolve_topology("mirrored", None, seen, "gpu:1", pinned=True).replicas == 2


def test_auto_on_one_gpu_or_a_plain_cpu_is_no_strategy() -> None:
    assert not resolve_topology("auto", None, probe(nvml=SCENARIOS["one_gpu"]()), "gpu:0").active
    assert not resolve_topology("auto", None, probe(nvml=None), "cpu").active


def test_cpu_replicas_and_tf_config() -> None:
    seen = probe(nvml=None)
    mirrored = resolve_topology("auto", 2, seen, "cpu")
    assert (mirrored.strategy, mirrored.replicas, mirrored.cpu_replicas) == ("mirrored", 2, 2)
    worker = resolve_topology("auto", None, seen, "cpu", tf_config(3, 2))
    assert (worker.strategy, worker.workers, worker.worker_index, worker.replicas) == (
        "multiworker",
        3,
        2,
        3,
    )
    assert not resolve_topology("auto", None, seen, "cpu", tf_config(1, 0)).active


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("multiworker", None, "cpu", None), "needs TF_CONFIG"),
        (("none", 2, "cpu", None), "--cpu-replicas needs a strategy"),
        (("mirrored", 2, "gpu:0", None), "--cpu-replicas splits the CPU"),
        (("mirrored", None, "cpu", None), "no GPU to mirror over .* add --cpu-replicas N"),
        (("auto", None, "cpu", "{not json"), "TF_CONFIG: expected JSON"),
        (("auto", None, "cpu", tf_config(2, 5)), "task index 5 is not one of 2 workers"),
        (("ring", None, "cpu", None), "--strategy 'ring'"),
    ],
)
def test_bad_strategy_inputs(args: tuple, fragment: str) -> None:
    strategy, replicas, device, config = args
    with pytest.raises(MemtuneError, match=fragment):
        resolve_topology(strategy, replicas, probe(nvml=SCENARIOS["one_gpu"]()), device, config)


def test_parse_tf_config_unset() -> None:
    assert parse_tf_config(None) is None and parse_tf_config("  ") is None
    assert parse_tf_config(tf_config(4, 1)) == (4, 1)


def test_plan_reports_replicas_and_the_global_batch(tmp_path: Path, capfd) -> None:
    data = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", RECORDING_MODEL.replace("Record()(ids)", "ids"))
    flags = ["--cpu-replicas", "2", "--analytic", "--budget", "4GiB", "--max-batch-size", "16"]
    code = main(["suggest", "--model", model, "--data", str(data), *flags, "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["strategy"], plan["replicas"], plan["workers"]) == ("mirrored", 2, 1)
    assert plan["batch_size"] == 16 and plan["global_batch_size"] == 32
    assert any("global batch 32" in r for r in plan["reasons"])


# ------------------------------------------------------------------ each worker's share


def test_balanced_cuts_are_contiguous_nonempty_and_even() -> None:
    assert balanced_cuts([7, 5, 4], 2) == [0, 1, 3]
    assert balanced_cuts([1, 1, 1, 1], 4) == [0, 1, 2, 3, 4]
    assert balanced_cuts([100, 1, 1], 3) == [0, 1, 2, 3]  # never an empty part
    with pytest.raises(ValueError):
        balanced_cuts([5], 2)


def _layout(folder: Path):
    info = scan(str(folder))
    sig = ModelSignature((TensorSpec("id", (None, 1)),), (TensorSpec("answer", (None, 1)),))
    return info, layout_for(info, footprint(sig, info, targets=("answer",)), make_options())


@pytest.mark.parametrize(
    ("sizes", "workers"), [(SIZES, 2), (SIZES, 3), (SIZES, 5), ([40], 3), ([9, 2], 4)]
)
def test_workers_shares_are_disjoint_cover_and_take_equal_steps(
    tmp_path: Path, sizes: list[int], workers: int
) -> None:
    """Whole shards when there are enough (else runs of rows); every worker takes the same
    number of steps, none larger than the batch, every sample once across workers."""
    info, layout = _layout(id_shards(tmp_path / "d", sizes))
    batch = 4
    shares = [worker_blocks(info, workers, k, 8192) for k in range(workers)]
    counts = [sum(b.rows for b in share) for share in shares]
    steps = max(-(-n // batch) for n in counts)
    seen: list[int] = []
    for share in shares:
        assert share, "every worker gets some data"
        even = EvenBatches(StreamingBatches(layout, share, batch, shuffle=True, seed=1), steps)
        even.set_epoch(1)
        got = [even[i][0]["id"].reshape(-1).tolist() for i in range(len(even))]
        assert len(got) == steps and all(1 <= len(g) <= batch for g in got)
        seen += [v for g in got for v in g]
    assert sorted(seen) == list(range(sum(sizes)))
    if len([s for s in sizes if s]) >= workers:  # whole shards: no shard is split
        for share in shares[1:]:
            assert share[0].start == 0


def test_too_few_samples_for_the_workers(tmp_path: Path) -> None:
    info, _ = _layout(id_shards(tmp_path / "d", [2]))
    with pytest.raises(MemtuneError, match="2 samples cannot be shared between 3 workers"):
        worker_blocks(info, 3, 0, 8192)


# ------------------------------------------------------------------ real training

RECORDING_MODEL = """
import os
import tensorflow as tf


class Record(keras.layers.Layer):
    \"\"\"Appends every id it trains on to $RECORD_FILE (graph mode, under any strategy).\"\"\"

    def call(self, x, training=False):
        def write(values):
            if training and os.environ.get("RECORD_FILE"):
                with open(os.environ["RECORD_FILE"], "a") as f:
                    f.write(" ".join(str(int(v)) for v in values.numpy().reshape(-1)) + "\\n")
            return values

        y = tf.py_function(write, [x], x.dtype)
        y.set_shape(x.shape)
        return y


ids = keras.Input((1,), name="id")
model = keras.Model(ids, keras.layers.Dense(1, name="answer")(Record()(ids)))
model.compile("sgd", "mse")
return model
"""


def _recorded(path: Path) -> list[int]:
    return [int(v) for line in path.read_text().splitlines() for v in line.split()]


def _fit_argv(model: str, data: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "memtune",
        "fit",
        "--model",
        model,
        "--data",
        str(data),
        "--epochs",
        "2",
        "--analytic",
        "--json",
        *extra,
    ]


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_sees_every_sample_once(tmp_path: Path) -> None:
    data = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "rec.py", RECORDING_MODEL)
    record = tmp_path / "ids.txt"
    argv = _fit_argv(model, data, "--cpu-replicas", "2", "--batch-size", "4", "--mode")
    done = subprocess.run(
        [*argv, "in-memory", "--budget", "4GiB"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RECORD_FILE": str(record)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)["plan"]
    assert (plan["strategy"], plan["replicas"], plan["global_batch_size"]) == ("mirrored", 2, 8)
    seen, n = _recorded(record), sum(SIZES)
    assert len(seen) == 2 * n
    assert sorted(seen[:n]) == list(range(n)) and sorted(seen[n:]) == list(range(n))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_loopback_share_the_data_and_stay_in_sync(tmp_path: Path) -> None:
    """MultiWorkerMirroredStrategy, one process per worker: per-worker samples are disjoint
    and cover the data every epoch, uneven shares take equal steps, weights end equal."""
    sizes = [7, 5, 4]  # worker 0: shard 0 (7 rows); worker 1: shards 1-2 (9 rows)
    data = id_shards(tmp_path / "d", sizes)
    model = write_factory(tmp_path / "rec.py", RECORDING_MODEL)
    ports = _free_ports(2)
    children = []
    for k in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": tf_config(2, k, ports),
            "RECORD_FILE": str(tmp_path / f"ids{k}.txt"),
        }
        argv = _fit_argv(model, data, "--batch-size", "4", "--save", str(tmp_path / f"m{k}.keras"))
        children.append(
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    outs = []
    try:
        for child in children:
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err[-3000:]
            outs.append(json.loads(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for k, out in enumerate(outs):
        plan = out["plan"]
        assert (plan["strategy"], plan["replicas"], plan["global_batch_size"]) == (
            "multiworker",
            2,
            8,
        )
        assert (plan["workers"], plan["worker_index"]) == (2, k)
    shares = [_recorded(tmp_path / f"ids{k}.txt") for k in range(2)]
    assert [len(s) for s in shares] == [2 * 7, 2 * 9]
    for epoch in range(2):
        halves = [s[len(s) // 2 * epoch : len(s) // 2 * (epoch + 1)] for s in shares]
        assert not set(halves[0]) & set(halves[1])
        assert sorted(halves[0] + halves[1]) == list(range(sum(sizes)))
    import keras

    no_record = {"Record": keras.layers.Identity}  # the recording layer holds no weights
    weights = [
        keras.saving.load_model(tmp_path / f"m{k}.keras", compile=False, custom_objects=no_record)
        for k in range(2)
    ]
    for a, b in zip(weights[0].get_weights(), weights[1].get_weights(), strict=True):
        np.testing.assert_allclose(a, b)


def test_each_worker_dashboard_names_the_worker() -> None:
    from memtune.ui.dashboard import DashboardState, plain_line, render
    from tests.conftest import text_of

    state = DashboardState(epochs=2, worker="index 0 of 3", usable_bytes=1024**3)
    assert plain_line(state, 512 * 1024**2).startswith("worker index 0 of 3, epoch 1/2:")
    assert text_of(render(state, [], 0)).startswith("memtune — worker index 0 of 3 — epoch 1/2")
    assert not plain_line(DashboardState(), 0).startswith("worker")
