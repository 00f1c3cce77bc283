"""What a trial is fed and how its model is read: the user's rows (the longest included),
plain-data model shapes, and the stop when memory holds. No trial processes here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.footprint import footprint
from memtune.data.layout import Layout
from memtune.data.sample import trial_rows, write_trial_rows
from memtune.data.scan import scan
from memtune.estimate.analytic import profile
from memtune.model.info import ModelInfo
from memtune.model.shape import ModelShape


def token_shards(folder: Path) -> Path:
    """Three shards of token lists; the longest (length 40) sits in the middle of shard 2."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    row = 0
    for shard in range(3):
        seqs = []
        for i in range(30):
            n = 40 if (shard, i) == (2, 17) else int(rng.integers(1, 12))
            seqs.append([int(v) for v in rng.integers(1, 900, n)])
            row += 1
        frame = pd.DataFrame({"tokens": seqs, "answer": rng.integers(0, 2, 30)})
        frame.to_csv(folder / f"{shard}.csv", index=False)
    return folder


def layout(folder: Path) -> Layout:
    info = scan(folder)
    sig = ModelSignature(
        (TensorSpec("tokens", (None, None), "int32"),), (TensorSpec("answer", (None, 1)),)
    )
    return Layout(footprint(sig, info), info)


def test_scan_records_where_the_longest_sequence_is(tmp_path: Path) -> None:
    info = scan(token_shards(tmp_path / "d"))
    assert info.column("tokens").max_len == 40
    assert info.column("tokens").longest_at == (2, 17)


@pytest.mark.parametrize("batch", [8, 90, 200])  # 200 > the data: its rows repeat
def test_trial_rows_are_real_and_hold_the_longest_row(tmp_path: Path, batch: int) -> None:
    lay = layout(token_shards(tmp_path / "d"))
    inputs, targets = trial_rows(lay, batch)
    tokens = inputs["tokens"]
    assert tokens.shape == (batch, 40) and targets["answer"].shape[0] == batch
    assert (tokens != 0).sum(axis=1).max() == 40  # the longest row, unpadded, is in
    assert (tokens != 0).any(axis=1).all()  # every row is a real one, none all padding


def test_trial_rows_file_round_trips(tmp_path: Path) -> None:
    lay = layout(token_shards(tmp_path / "d"))
    path = write_trial_rows(lay, 16, tmp_path / "rows.npz")
    with np.load(path) as saved:
        assert sorted(saved.files) == ["in:tokens", "out:answer"]
        np.testing.assert_array_equal(saved["in:tokens"], trial_rows(lay, 16)[0]["tokens"])


def test_profile_resolves_sequence_lengths_from_the_data(tmp_path: Path) -> None:
    """The shape read in the model's child has ``None`` lengths; the data fills them in."""
    shape = ModelShape(100, 80, 160, ((None, 8), (4,), (1,)), ((None, 16, 6),))
    lay = layout(token_shards(tmp_path / "d"))
    prof = profile(shape, lay.footprint)
    assert prof.activation_elems_per_sample == 40 * 8 + 4 + 1
    assert prof.recurrent_elems_per_sample == 40 * 16 * 6
    assert (prof.param_bytes, prof.trainable_bytes, prof.optimizer_bytes) == (100, 80, 160)


def test_model_info_round_trips_through_json() -> None:
    sig = ModelSignature(
        (TensorSpec("tokens", (None, None), "int32"),), (TensorSpec("answer", (None, 1)),)
    )
    info = ModelInfo(sig, ModelShape(1, 1, 2, ((None, 8),), ()), {"model": {"a": [1]}})
    assert ModelInfo.from_json(info.to_json()) == info


def test_flat_peak_stops_once_memory_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from memtune.run.callbacks import flat_peak

    mib = 1024**2
    peaks = iter([500 * mib, 700 * mib, 800 * mib, 802 * mib, 803 * mib, 900 * mib])
    monkeypatch.setattr(flat_peak.process, "peak_held", lambda: next(peaks))
    cb = flat_peak.FlatPeak(min_steps=4)
    cb.set_model(types.SimpleNamespace(stop_training=False))  # type: ignore[arg-type]
    stopped_at = None
    for step in range(6):
        cb.on_train_batch_end(step)
        if cb.model.stop_training:
            stopped_at = step
            break
    # 700 → 800 still grows; 800 → 803 over two steps is within 8 MiB: the fifth step stops.
    assert stopped_at == 4


def test_a_child_killed_while_the_kernel_counted_an_oom_kill_was_killed_for_memory() -> None:
    import signal

    from memtune.estimate.trials import killed_for_memory

    assert killed_for_memory(-signal.SIGKILL, 3, 4)
    assert not killed_for_memory(-signal.SIGKILL, 3, 3)  # a user's kill -9, or the deadline
    assert not killed_for_memory(1, 3, 4)  # a child that failed on its own
    assert not killed_for_memory(None, 0, 1)


def test_a_child_high_water_mark_is_its_own_not_its_parents() -> None:
    """A planning process that once held 600 MiB (a scan of big data) starts a child: the
    child's ``ru_maxrss`` may carry the parent's mark (Linux, vfork + exec), its own peak
    (read from its VmHWM) not."""
    import subprocess
    import sys

    script = """
import json, subprocess, sys
import numpy as np
from memtune.proc import heap
big = np.ones(600 * 2**20, np.uint8); del big
heap.release()
child = (
    "import json, resource; from memtune.probe import process; "
    "print(json.dumps([process.peak_held(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))"
)
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    own, maxrss_kib = json.loads(done.stdout)
    # Here the child's ru_maxrss read 626 MiB and its VmHWM 12 MiB.
    assert own < 200 * 2**20, (own, maxrss_kib)  # a bare Python with memtune.probe
    assert maxrss_kib * 1024 >= own


def test_a_trial_copies_each_batch_as_fit_does_and_a_whole_dataset_batch_not_at_all(
    tmp_path: Path,
) -> None:
    """fit's shuffled in-memory batches gather a copy, except a batch holding every row,
    which is a view of its arrays (``InMemoryBatches``): a trial must do the same, or a
    whole-dataset trial grows by one batch a step that fit never holds (+9 % on conv2d)."""
    from memtune.data.batch_sources import InMemoryBatches
    from memtune.estimate.trial_child import _RepeatBatch
    from memtune.estimate.trials import FeedSpec

    x = np.arange(40, dtype="float32").reshape(20, 2)
    y = np.arange(20, dtype="float32")
    np.savez(tmp_path / "rows.npz", **{"in:x": x, "out:answer": y})
    feeds = (FeedSpec("x", "input", (2,), "float32"), FeedSpec("answer", "target", (), "float32"))
    rows = str(tmp_path / "rows.npz")

    fit_whole = InMemoryBatches({"x": x}, {"answer": y}, 20, shuffle=True)[0][0]["x"]
    fit_part = InMemoryBatches({"x": x}, {"answer": y}, 10, shuffle=True)[0][0]["x"]
    assert np.shares_memory(fit_whole, x) and not np.shares_memory(fit_part, x)

    whole = _RepeatBatch(feeds, 20, 3, rows=rows, whole=True)
    part = _RepeatBatch(feeds, 20, 3, rows=rows)
    for i in range(3):
        inputs, _ = whole[i]
        assert np.shares_memory(inputs["x"], whole.inputs["x"])
        inputs, targets = part[i]
        assert not np.shares_memory(inputs["x"], part.inputs["x"])
        assert sorted(targets["answer"].tolist()) == y.tolist()  # every row, a new order


def test_a_trials_own_rows_are_left_to_the_plan_to_count(tmp_path: Path) -> None:
    """A trial holds its batch of rows beside its steps' copies; fit holds them as part of
    the dataset (or the stream's blocks), which the plan adds: counted in both, whole-dataset
    trials were predicted 3-6 % over fit."""
    from dataclasses import replace

    from memtune.core.curve import Trial
    from memtune.estimate.cache import TrialCache
    from memtune.estimate.runner import Setup, _in_fit
    from memtune.estimate.trials import FeedSpec

    feeds = (FeedSpec("x", "input", (16,), "float32"), FeedSpec("answer", "target", (), "int32"))
    s = Setup(feeds, 1, "cpu", 2**30, TrialCache("k", directory=tmp_path), 1000, parent_extra=7)
    assert s.row_bytes == 16 * 4 + 4
    assert _in_fit(s, Trial(100, 500 * 2**20)).peak_bytes == 500 * 2**20 + 7 - 100 * 68
    two = replace(s, cpu_replicas=2)  # each replica's batch: the rows of both are held
    assert _in_fit(two, Trial(100, 500 * 2**20)).peak_bytes == 500 * 2**20 + 7 - 200 * 68
    gpu = replace(s, device="gpu:0", parent_extra=0)  # rows in host RAM, not in the device peak
    assert _in_fit(gpu, Trial(100, 500 * 2**20)).peak_bytes == 500 * 2**20
