"""Length buckets: boundaries that minimise padding, every sample exactly once per epoch in
both modes, each batch cut to its bucket's length, per-bucket plans under the budget."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import memtune.app.batches as api
from memtune.core.budget import Budget
from memtune.core.choose import make_plan
from memtune.core.curve import MemoryCurve
from memtune.core.errors import MemtuneError
from memtune.core.options import make_options
from memtune.core.pipeline_memory import pipeline_bytes
from memtune.core.plan import Plan, PlanOptions
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.bucketed import Bucketing, bucketed_streaming
from memtune.data.buckets import BucketOrder, LengthBuckets, choose_boundaries
from memtune.data.footprint import footprint
from memtune.data.layout import Layout
from memtune.data.scan import scan
from memtune.data.shares import blocks_of

MiB = 1024**2
GiB = 1024**3


def padded_tokens(lengths: np.ndarray, bounds: list[int]) -> int:
    return int(np.asarray(bounds)[np.searchsorted(bounds, lengths)].sum())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [1, 2, 3])
def test_boundaries_are_the_fewest_padded_tokens(seed: int, count: int) -> None:
    """Against every choice of boundaries among the lengths present (brute force)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, size=rng.integers(5, 60))
    bounds = choose_boundaries(lengths, 40, count)
    present = sorted(set(int(v) for v in lengths))
    assert bounds[-1] == max(present) and bounds == sorted(bounds)
    assert len(bounds) == min(count, len(present))
    best = min(
        padded_tokens(lengths, [*inner, max(present)])
        for inner in itertools.combinations(present[:-1], min(count, len(present)) - 1)
    )
    assert padded_tokens(lengths, bounds) == best


def test_boundaries_truncate_at_the_pad_length_and_cut_long_tails() -> None:
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(np.log(170), 0.8, 20_000).astype(int) + 1, 2500)
    bounds = choose_boundaries(lengths, 1000, 8)
    assert len(bounds) == 8 and bounds[-1] == 1000
    clipped = np.minimum(lengths, 1000)
    padding_before = 1000 * lengths.size - clipped.sum()
    padding_after = padded_tokens(clipped, bounds) - clipped.sum()
    assert padding_after < 0.15 * padding_before  # IMDB-like: most padding goes


def test_a_bad_bucket_count_is_refused() -> None:
    with pytest.raises(MemtuneError, match="--buckets 0"):
        choose_boundaries(np.array([1, 2]), 5, 0)
    with pytest.raises(MemtuneError, match="--buckets 'many'"):
        make_options(buckets="many")
    assert make_options(buckets="off").buckets == 0
    assert make_options().buckets is None  # the default: up to 8, off for a length-linked target
    assert make_options(buckets=True).buckets == 8


def listing(order: BucketOrder) -> list[tuple[int, np.ndarray]]:
    return [
        (order.bucket_of(i), np.concatenate([order.begins[b] + r for b, r in order.batch(i)]))
        for i in range(len(order))
    ]


@pytest.mark.parametrize("window", [None, 40])
@pytest.mark.parametrize("shuffle", [False, True])
def test_bucket_order_is_a_bijection_with_a_fixed_length(window: int | None, shuffle: bool) -> None:
    rng = np.random.default_rng(1)
    rows = [30, 1, 17, 30, 30, 4, 0, 22]
    buckets = rng.integers(0, 3, sum(rows)).astype(np.int8)
    order = BucketOrder(rows, buckets, [7, 4, 2], shuffle=shuffle, seed=5, window_rows=window)
    lengths, epochs = set(), []
    for epoch in range(4):
        order.set_epoch(epoch)
        lengths.add(len(order))
        batches = listing(order)
        for bucket, rows_of in batches:
            assert (buckets[rows_of] == bucket).all()
            assert 0 < rows_of.size <= order.sizes[bucket]
        everything = np.sort(np.concatenate([r for _, r in batches]))
        np.testing.assert_array_equal(everything, np.arange(sum(rows)))
        epochs.append([r.tolist() for _, r in batches])
    assert len(lengths) == 1  # tf.data's range is fixed when the pipeline is built
    assert (epochs[0] != epochs[1]) == shuffle


def test_a_shrunk_bucket_continues_the_epoch_without_loss_or_repeat() -> None:
    rng = np.random.default_rng(2)
    buckets = rng.integers(0, 3, 200).astype(np.int8)
    order = BucketOrder([50, 50, 50, 50], buckets, [9, 6, 3], shuffle=True, seed=1, window_rows=100)
    order.set_epoch(2)
    trained = [r for _, r in listing(order)[:7]]
    assert order.shrink(1, 3, epoch=2, done_batches=7) == sum(r.size for r in trained)
    assert order.sizes == [9, 3, 3] and order.start == sum(r.size for r in trained)
    after = listing(order)
    assert all(r.size <= 3 for b, r in after if b == 1)
    trained += [r for _, r in after[:5]]
    order.shrink(0, 4, epoch=2, done_batches=5)  # a second overrun in the same epoch
    trained += [r for _, r in listing(order)]
    np.testing.assert_array_equal(np.sort(np.concatenate(trained)), np.arange(200))
    order.set_epoch(3)  # the next epoch is whole again, at the smaller batches
    assert order.start == 0
    assert sum(r.size for _, r in listing(order)) == 200


def text_shards(folder: Path, sizes: list[int]) -> Path:
    """Rows whose id is also their tokens' value, lengths long-tailed (1..40)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    start = 0
    for i, n in enumerate(sizes):
        ids = np.arange(start, start + n)
        lengths = np.minimum(rng.lognormal(np.log(6), 0.8, n).astype(int) + 1, 40)
        frame = pd.DataFrame(
            {
                "seq": [" ".join([str(v + 1)] * int(k)) for v, k in zip(ids, lengths, strict=True)],
                "answer": ids,
            }
        )
        frame.to_csv(folder / f"{i}.csv", index=False)
        start += n
    return folder


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("mode", ["streaming", "in-memory"])
def test_batches_over_buckets_hold_every_sample_once_cut_to_its_bucket(
    tmp_path: Path, mode: str, padding: str
) -> None:
    folder = text_shards(tmp_path / "d", [300, 7, 120, 0, 260, 11])
    info = scan(folder)
    lengths = info.column("seq").lengths
    assert lengths is not None and lengths.shape == (698,)
    chosen = LengthBuckets.cut("seq", "seq", lengths, 40, 4)
    sizes = [13, 9, 5, 3]
    buckets = [
        {"length": n, "batch_size": b, "samples": s}
        for n, b, s in zip(chosen.boundaries, sizes, chosen.samples, strict=True)
    ]
    seen: list[int] = []
    for inputs, targets in api.batches(
        folder,
        target="answer",
        batch_size=3,
        mode=mode,
        shuffle=True,
        seed=4,
        maxlen=40,
        padding=padding,
        buckets=buckets,
    ):
        ids = targets["answer"]
        seq = inputs["seq"]
        k = chosen.boundaries.index(seq.shape[1])  # one of the buckets' lengths
        assert ids.size <= sizes[k]
        for row, rid in zip(seq, ids, strict=True):
            tokens = row[row != 0]
            assert (tokens == rid + 1).all()  # the row's own tokens, none cut
            assert tokens.size == lengths[rid]
            assert (row[-tokens.size :] if padding == "pre" else row[: tokens.size]).all()
            if k:  # too long for the bucket below
                assert tokens.size > chosen.boundaries[k - 1]
        seen.extend(int(v) for v in ids)
    assert sorted(seen) == list(range(698))


def test_streaming_buckets_read_each_block_about_once(tmp_path: Path) -> None:
    """A window's blocks stay cached while its batches are served: rare buckets never make
    the stream re-read blocks it already padded."""
    folder = text_shards(tmp_path / "d", [400] * 6)
    info = scan(folder)
    sig = ModelSignature((TensorSpec("seq", (None, None)),), (TensorSpec("answer", (None,)),))
    fp = footprint(sig, info, targets=["answer"], maxlen={None: 40})
    layout = Layout(fp, info)
    lengths = info.column("seq").lengths
    assert lengths is not None
    chosen = LengthBuckets.cut("seq", "seq", lengths, 40, 3)
    blocks = blocks_of(info, 100)
    reads: list[int] = []
    original = layout.block

    class Counting(Layout):
        def block(self, block):  # type: ignore[no-untyped-def]
            reads.append(blocks.index(block))
            return original(block)

    counting = Counting(fp, info)
    bucketing = Bucketing("seq", "seq", chosen.boundaries, (16, 8, 4))
    source = bucketed_streaming(counting, blocks, bucketing, shuffle=True, seed=1)
    total = sum(targets["answer"].size for _, targets in source)
    assert total == 2400
    assert len(reads) <= len(blocks) + 2, (len(reads), len(blocks))


def test_batches_refuse_buckets_that_do_not_match(tmp_path: Path) -> None:
    folder = text_shards(tmp_path / "d", [50])
    good = [{"length": 5, "batch_size": 8, "samples": 1}, {"length": 40, "batch_size": 4}]
    with pytest.raises(MemtuneError, match="not the longest bucket's"):
        next(api.batches(folder, target="answer", batch_size=8, maxlen=40, buckets=good))
    with pytest.raises(MemtuneError, match="past the longest bucket"):
        short = [{"length": 2, "batch_size": 8}, {"length": 3, "batch_size": 4}]
        next(api.batches(folder, target="answer", batch_size=4, maxlen=40, buckets=short))
    with pytest.raises(MemtuneError, match="batch_size 0"):
        bad = [{"length": 40, "batch_size": 0}]
        next(api.batches(folder, target="answer", batch_size=4, maxlen=40, buckets=bad))


# ---------------------------------------------------------------- plans, on made-up curves

CURVES = [
    MemoryCurve(300 * MiB, 2 * MiB),  # analytic line
    MemoryCurve(0, 0).with_points([(8, 320 * MiB), (64, 420 * MiB), (256, 900 * MiB)]),
    MemoryCurve(0, 0).with_points([(4, 500 * MiB), (40, 505 * MiB)]),  # nearly flat
]


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("mode", [None, "streaming"])
@pytest.mark.parametrize("scale", [(0.1, 0.3, 0.6, 1.0), (0.5, 0.5, 0.9, 1.0), (1.0,) * 4])
def test_every_bucket_plans_under_the_budget(
    curve: MemoryCurve, mode: str | None, scale: tuple[float, ...]
) -> None:
    """Each bucket's batch, at its memory share, predicts a peak under the usable budget."""
    budget = Budget("cpu", 2048 * MiB, "--budget", 20 * 1024 * MiB)
    samples = (40_000, 25_000, 9_000, 1_000)
    options = PlanOptions(
        mode=mode,  # type: ignore[arg-type]
        max_batch_size=100_000,
        buckets=tuple(zip((50, 120, 300, 500), samples, strict=True)),
        bucket_scale=scale,
        pad_length=500,
        real_tokens=6_000_000,
    )
    plan = make_plan(
        budget, curve, num_samples=sum(samples), per_sample_bytes=2004, options=options
    )
    assert [b.length for b in plan.buckets] == [50, 120, 300, 500]
    assert sum(b.samples for b in plan.buckets) == plan.num_samples
    assert plan.buckets[-1].batch_size == plan.batch_size
    for bucket, share in zip(plan.buckets, scale, strict=True):
        equal = int(np.ceil(bucket.batch_size * share))
        extra = pipeline_bytes(
            plan.mode,
            plan.batch_size,
            num_samples=plan.num_samples,
            per_sample_bytes=plan.per_sample_bytes,
            with_queue=curve.source == "analytic",
        )
        assert curve.peak(equal) + extra <= plan.usable_bytes + curve.slope_at(equal)
        assert bucket.batch_size >= plan.batch_size
    as_json = plan.to_json()
    assert [sorted(b) for b in as_json["buckets"]] == [["batch_size", "length", "samples"]] * 4
    assert as_json["tokens"]["without_buckets"] == 500 * sum(samples)
    assert as_json["tokens"]["with_buckets"] == sum(
        n * s for n, s in zip((50, 120, 300, 500), samples, strict=True)
    )
    if scale[0] < 1 and plan.mode == "in-memory":
        assert plan.buckets[0].batch_size > plan.batch_size  # short rows get larger batches
    assert 0 < plan.padding_cut <= 1


def test_a_bucketed_prediction_is_the_largest_batch_a_bucket_can_hold() -> None:
    """The longest bucket holds fewer rows than its batch: no step ever takes the plan's
    batch at full length, so the peak is predicted at what the worst bucket holds — unless
    validation runs unbucketed at the plan's batch (as trials measure it)."""
    budget = Budget("cpu", 2048 * MiB, "--budget", 20 * 1024 * MiB)
    curve, scale = CURVES[0], (0.1, 0.2, 1.0)
    options = PlanOptions(
        max_batch_size=400,
        buckets=((50, 3_000), (100, 3_000), (500, 150)),
        bucket_scale=scale,
        pad_length=500,
        real_tokens=1_000_000,
    )
    plans = [
        make_plan(budget, curve, num_samples=6_150, per_sample_bytes=2004, options=o)
        for o in (options, replace(options, validating=True))
    ]
    worst = max(
        min(b.batch_size, b.samples) * s for b, s in zip(plans[0].buckets, scale, strict=True)
    )
    assert plans[0].batch_size == plans[1].batch_size == 400 and worst < 400
    saved = plans[1].predicted_peak_bytes - plans[0].predicted_peak_bytes
    assert saved == curve.peak(400) - curve.peak(int(np.ceil(worst))) > 0


def test_a_bucketed_prediction_is_never_under_the_buckets_measured_together() -> None:
    """fit trains every bucket shape in one process, and each adds memory TensorFlow keeps
    (bench_buckets: fit 5 % over the worst bucket measured alone): a trial of them all
    together raises the prediction when it reads more, with the reason; never lowers it."""
    budget = Budget("cpu", 2048 * MiB, "--budget", 20 * 1024 * MiB)
    curve = CURVES[0]
    options = PlanOptions(
        max_batch_size=400,
        buckets=((50, 3_000), (100, 3_000), (500, 150)),
        bucket_scale=(0.1, 0.2, 1.0),
        pad_length=500,
        real_tokens=1_000_000,
    )

    def plan(o: PlanOptions) -> Plan:
        return make_plan(budget, curve, num_samples=6_150, per_sample_bytes=2004, options=o)

    alone = plan(options)
    worst = max(
        min(b.batch_size, b.samples) * s
        for b, s in zip(alone.buckets, options.bucket_scale, strict=True)
    )
    pipeline = alone.predicted_peak_bytes - curve.peak(int(np.ceil(worst)))  # the data's
    higher = curve.peak(int(np.ceil(worst))) + 40 * MiB
    raised = plan(replace(options, buckets_together=higher))
    assert raised.predicted_peak_bytes == higher + pipeline
    assert raised.batch_size == alone.batch_size
    assert any("trained one after another in one trial process" in r for r in raised.reasons)
    lower = plan(replace(options, buckets_together=alone.predicted_peak_bytes // 2))
    assert lower.predicted_peak_bytes == alone.predicted_peak_bytes
    validating = replace(options, validating=True)
    assert (
        plan(replace(validating, buckets_together=10 * GiB)).predicted_peak_bytes
        == plan(validating).predicted_peak_bytes
    )


def test_the_trial_of_buckets_together_serves_their_shapes_in_order(tmp_path: Path) -> None:
    from memtune.estimate.trial_child import _BucketSteps
    from memtune.estimate.trials import FeedSpec

    feeds = (FeedSpec("seq", "input", (9,), "int32"), FeedSpec("answer", "target", (1,), "float32"))
    rows = tmp_path / "rows.npz"
    ids = np.arange(4 * 9, dtype=np.int32).reshape(4, 9)
    np.savez(rows, **{"in:seq": ids, "out:answer": np.arange(4, dtype=np.float32)[:, None]})
    shapes = ((4, 9), (3, 9), (6, 5), (2, 3))
    source = _BucketSteps(feeds, shapes, "seq", str(rows))
    assert len(source) == 4 and source.weighted
    for i, (count, length) in enumerate(shapes):
        inputs, targets = source[i]
        assert inputs["seq"].shape == (count, length) and targets["answer"].shape == (count, 1)
        assert source.row_weights(i).shape == (count,)
        for row, answer in zip(inputs["seq"], targets["answer"][:, 0], strict=True):
            assert row.tolist() == ids[int(answer), 9 - length :].tolist()  # the row's end


def test_no_buckets_no_key() -> None:
    budget = Budget("cpu", 2048 * MiB, "--budget", 20 * 1024 * MiB)
    plan = make_plan(
        budget, CURVES[0], num_samples=1000, per_sample_bytes=100, options=PlanOptions()
    )
    assert "buckets" not in plan.to_json() and plan.buckets == []
    forced = replace(PlanOptions(), batch_size=8, buckets=((5, 500), (9, 500)), bucket_scale=(1, 1))
    plan = make_plan(budget, CURVES[0], num_samples=1000, per_sample_bytes=100, options=forced)
    assert plan.buckets == []


@pytest.mark.slow
def test_suggest_buckets_a_text_model_and_off_turns_it_off(tmp_path: Path) -> None:
    """The CLI end to end: a length trial beside the full-length ones; JSON per contract."""
    folder = text_shards(tmp_path / "d", [400, 400])
    model = tmp_path / "m.py"
    model.write_text(
        "import keras\n\n"
        "def build():\n"
        "    x = keras.Input((None,), name='seq', dtype='int32')\n"
        "    h = keras.layers.Embedding(1000, 8)(x)\n"
        "    h = keras.layers.Conv1D(8, 3)(h)\n"
        "    h = keras.layers.GlobalMaxPooling1D()(h)\n"
        "    m = keras.Model(x, keras.layers.Dense(1, name='answer')(h))\n"
        "    m.compile('adam', 'mse')\n"
        "    return m\n"
    )
    base = [sys.executable, "-m", "memtune", "suggest", "--model", f"{model}:build"]
    base += ["--data", str(folder), "--budget", "2GiB", "--json", "--max-batch-size", "400"]
    out = subprocess.run(base, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    buckets = plan["buckets"]
    assert [b["length"] for b in buckets] == sorted(b["length"] for b in buckets)
    assert sum(b["samples"] for b in buckets) == plan["num_samples"] == 800
    assert buckets[-1]["batch_size"] == plan["batch_size"]
    assert any(t.get("length") == buckets[0]["length"] for t in plan["trials"])
    assert any("of the memory of one of" in r for r in plan["reasons"])
    # and one trial of every bucket's shapes together, as fit trains them (cached apart)
    cached = json.loads((Path(os.environ["MEMTUNE_CACHE_DIR"]) / "trials.json").read_text())
    assert sum("/together" in key for key in cached) == 1
    off = subprocess.run([*base, "--buckets", "off"], capture_output=True, text=True, timeout=280)
    assert off.returncode == 0, off.stderr
    assert "buckets" not in json.loads(off.stdout)
    bad = subprocess.run([*base, "--buckets", "x"], capture_output=True, text=True, timeout=280)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "memtune: error: --buckets 'x': expected a positive integer or off"
    ]


def bucket_recording_model(seen: list[int], widths: list[int]) -> object:
    """A None-length model whose first layer records each row's id (its tokens are id+1)
    and each batch's width, eagerly."""
    import keras

    class Record(keras.layers.Layer):
        def call(self, x: object, training: bool = False) -> object:
            if training:
                rows = np.asarray(x)
                widths.append(rows.shape[1])
                seen.extend(int(r.max()) - 1 for r in rows)
            return x

    seq = keras.Input((None,), dtype="int32", name="seq")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(2000, 4)(Record()(seq)))
    model = keras.Model(seq, keras.layers.Dense(1, name="answer")(h))
    model.compile("sgd", "mse", run_eagerly=True)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["streaming", "in-memory"])
def test_fit_trains_on_buckets_and_recovery_halves_the_bucket_that_overran(
    tmp_path: Path, mode: str
) -> None:
    from memtune.app.fit import fit
    from memtune.ui.memory_dashboard import MemoryDashboard
    from tests.conftest import exhaust_at

    folder = text_shards(tmp_path / "d", [300, 200, 250])
    seen: list[int] = []
    widths: list[int] = []
    trace = tmp_path / "t.jsonl"
    result = fit(
        bucket_recording_model(seen, widths),
        folder,
        epochs=2,
        analytic=True,
        budget="4GiB",
        maxlen=40,
        mode=mode,
        target="answer",
        verbose=0,
        seed=1,
        callbacks=[exhaust_at({(0, 3)}), MemoryDashboard(trace=str(trace), show=False)],
    )
    plan = result.plan
    lengths = [b.length for b in plan.buckets]
    assert len(lengths) >= 2 and set(widths) <= set(lengths) and len(set(widths)) >= 2
    (change,) = result.batch_size_changes
    bucket = next(b for b in plan.buckets if b.length == change["bucket_length"])
    assert change["from"] == bucket.batch_size and change["to"] == bucket.batch_size // 2
    assert sorted(seen[:750]) == list(range(750)) and sorted(seen[750:]) == list(range(750))
    steps = [json.loads(line) for line in trace.read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "step"]
    assert {s["bucket_length"] for s in steps} == set(widths)
    assert sum(s["rows"] for s in steps) == 2 * 750


class _Progress:
    def __init__(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps = epoch, steps


@pytest.mark.parametrize("guard", [True, False])
def test_recovery_halves_the_bucket_whose_step_overran(guard: bool) -> None:
    """The policy alone, the out-of-memory faked: the guard reads memory after a step (that
    step overran, its rows trained); TensorFlow's OOM stops the step after the last one."""
    from memtune.core.errors import TrainingFailed
    from memtune.core.watchdog import MemoryOverrun
    from memtune.data.bucketed import BucketedBatches
    from memtune.data.layout import take
    from memtune.run.recovery import _recover_bucket

    n = 120
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, n).astype(np.int8)
    inputs, targets = {"seq": np.ones((n, 9), np.int32)}, {"answer": np.arange(n)}
    order = BucketOrder([n], ids, [20, 10, 5], shuffle=True, seed=2)
    source = BucketedBatches(
        lambda pieces, cut: (take(inputs, pieces[0][1], cut), take(targets, pieces[0][1])),
        order,
        Bucketing("seq", "seq", (3, 6, 9), (20, 10, 5)),
        "pre",
    )
    trained = [source[i][1]["answer"] for i in range(4)]
    exc: Exception = (
        MemoryOverrun("over", reason="over the usable budget") if guard else RuntimeError("OOM")
    )
    overran = 3 if guard else 4  # the guard's step ended (done: 4); TF's step 4 never did
    bucket = order.bucket_of(overran)
    before = list(order.sizes)
    change = _recover_bucket("over", exc, source, _Progress(0, 4), 1, 5, print)
    assert change.bucket_length == (3, 6, 9)[bucket]
    assert change.before == before[bucket] and change.after == before[bucket] // 2
    assert order.sizes == [s // 2 if k == bucket else s for k, s in enumerate(before)]
    assert change.sample == sum(t.size for t in trained) == source.position
    rest = [source[i][1]["answer"] for i in range(len(source))]
    np.testing.assert_array_equal(np.sort(np.concatenate(trained + rest)), np.arange(n))
    order.sizes = [1, 1, 1]
    with pytest.raises(TrainingFailed, match="even at batch 1 in the length-"):
        _recover_bucket("over", exc, source, _Progress(0, 0), 1, 5, print)


def _tracings(function: object, depth: int = 0) -> dict[str, int]:
    """How often each tf.function inside Keras's train function was traced."""
    found: dict[str, int] = {}
    for cell in getattr(function, "__closure__", None) or ():
        value = cell.cell_contents
        if hasattr(value, "experimental_get_tracing_count"):
            found[value.__name__] = value.experimental_get_tracing_count()
        elif callable(value) and depth < 3:
            found |= _tracings(value, depth + 1)
    return found


@pytest.mark.slow
def test_buckets_do_not_retrace_the_training_step(tmp_path: Path) -> None:
    """Every bucket's length reaches Keras as None: the step is traced as often as
    without buckets, not once per bucket."""
    import keras

    from memtune.app.fit import fit

    folder = text_shards(tmp_path / "d", [500])
    counts = {}
    for buckets in ("off", 8):
        seq = keras.Input((None,), dtype="int32", name="seq")
        h = keras.layers.Conv1D(4, 3, padding="same")(keras.layers.Embedding(1000, 4)(seq))
        model = keras.Model(seq, keras.layers.Dense(1, name="answer")(h[:, -1]))
        model.compile("sgd", "mse")
        result = fit(
            model,
            folder,
            epochs=2,
            analytic=True,
            budget="2GiB",
            maxlen=40,
            target="answer",
            verbose=0,
            buckets=buckets,
            max_batch_size=64,
        )
        assert bool(result.plan.buckets) == (buckets != "off")
        counts[buckets] = _tracings(model.train_function)
    assert len({b.length for b in result.plan.buckets}) >= 4
    assert counts[8] == counts["off"] and max(counts[8].values()) <= 2, counts
