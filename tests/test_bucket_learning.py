"""Length buckets that train as without them: every row weighs the same, no bucket is one
giant step, and a target that depends on length turns the default buckets off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memtune.app.length_buckets import length_buckets
from memtune.core.budget import Budget
from memtune.core.choose import make_plan
from memtune.core.constants import MIN_BUCKET_STEPS
from memtune.core.curve import MemoryCurve
from memtune.core.options import make_options
from memtune.core.plan import PlanOptions
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.bucketed import Bucketing, bucketed_in_memory
from memtune.data.footprint import footprint
from memtune.data.layout import Layout, load_in_memory
from memtune.data.length_link import LengthLink
from memtune.data.scan import scan
from memtune.data.shares import blocks_of
from memtune.run.distribute import Topology

MiB = 1024**2


def texts(lengths: np.ndarray, **targets: np.ndarray) -> pd.DataFrame:
    """Rows of ``lengths`` tokens each, with the given target columns."""
    rows = [" ".join(["7"] * int(n)) for n in lengths]
    return pd.DataFrame({"seq": rows, **targets})


def long_tail(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(rng.lognormal(np.log(20), 0.9, n).astype(int) + 1, 400)


def test_the_share_of_a_target_that_length_explains() -> None:
    rng = np.random.default_rng(1)
    lengths = long_tail(4000)
    by_length = (lengths > np.median(lengths)).astype(np.int64)
    noise = rng.integers(0, 2, lengths.size)
    mostly = np.where(rng.random(lengths.size) < 0.8, by_length, 1 - by_length)

    def share(values: np.ndarray, chunks: int = 3) -> float:
        link = LengthLink()
        for part in np.array_split(np.arange(lengths.size), chunks):  # chunks add up
            link.add(lengths[part], values[part])
        return link.explained()

    assert share(by_length) > 0.9  # length alone tells the class
    assert share(noise) < 0.02  # chance, with 30-odd bins, corrected away
    assert 0.2 < share(mostly) < 0.5  # 80 % of labels follow length
    assert share(by_length, 1) == pytest.approx(share(by_length, 7))
    numeric = np.log(lengths) + rng.normal(0, 0.3, lengths.size)
    assert share(numeric.astype(np.float32)) > 0.8  # η² for numbers
    assert share(rng.normal(0, 1, lengths.size)) < 0.02
    many = rng.integers(0, 1000, lengths.size)  # too many values for classes: a number
    assert share(many) < 0.02
    gaps = numeric.copy()
    gaps[::5] = np.nan  # missing values are left out, not counted as zero
    assert share(gaps) > 0.8
    assert LengthLink().explained() == 0.0
    for seed in range(20):  # a few hundred rows of a label that ignores length: exactly 0
        few = np.random.default_rng(seed)
        link = LengthLink()
        link.add(long_tail(300, seed), few.integers(0, 3, 300))
        assert link.explained() == 0.0


def plan_buckets(frame: pd.DataFrame, target: str, **options: object) -> tuple[object, str | None]:
    info = scan(frame)
    sig = ModelSignature((TensorSpec("seq", (None, None)),), (TensorSpec(target, (None,)),))
    fp = footprint(sig, info, targets=[target])
    return length_buckets(info, fp, make_options(**options), Topology(), info.num_samples)


def test_a_target_that_depends_on_length_turns_default_buckets_off() -> None:
    lengths = long_tail(3000)
    rng = np.random.default_rng(2)
    linked = (lengths > 25).astype(np.int64)
    frame = texts(lengths, label=linked, other=rng.integers(0, 2, lengths.size))
    buckets, why = plan_buckets(frame, "label")
    assert buckets is None
    assert why is not None and why.startswith("no length buckets: target 'label' depends on")
    assert why.endswith("--buckets N turns them on")
    asked, warning = plan_buckets(frame, "label", buckets=4)
    assert asked is not None and warning is not None
    assert warning.startswith("warning: target 'label' depends on the length of 'seq'")
    kept, nothing = plan_buckets(frame, "other")  # a label independent of length
    assert kept is not None and nothing is None
    off, silent = plan_buckets(frame, "label", buckets="off")
    assert off is None and silent is None


def test_no_bucket_is_one_giant_step() -> None:
    """A short bucket whose memory would allow all its rows still trains in several steps."""
    budget = Budget("cpu", 2048 * MiB, "--budget", 20 * 1024 * MiB)
    samples = (1_611, 3_000, 400)
    options = PlanOptions(
        max_batch_size=100_000,
        buckets=tuple(zip((20, 120, 500), samples, strict=True)),
        bucket_scale=(0.04, 0.24, 1.0),
        pad_length=500,
        real_tokens=400_000,
    )
    curve = MemoryCurve(300 * MiB, 8 * MiB)
    plan = make_plan(
        budget, curve, num_samples=sum(samples), per_sample_bytes=2004, options=options
    )
    for bucket in plan.buckets[:-1]:
        assert bucket.batch_size <= max(plan.batch_size, -(-bucket.samples // MIN_BUCKET_STEPS))
    assert plan.buckets[0].batch_size > plan.batch_size  # still larger than the longest's
    words = " ".join(plan.reasons)
    assert "a shorter bucket's batch is larger" in words
    assert f"weighted by n / {plan.batch_size:,}" in words


def test_equal_bucket_batches_do_not_claim_to_grow() -> None:
    budget = Budget("cpu", 2048 * MiB, "--budget", 20 * 1024 * MiB)
    options = PlanOptions(
        max_batch_size=64,
        buckets=((20, 3_000), (500, 3_000)),
        bucket_scale=(0.04, 1.0),
        pad_length=500,
        real_tokens=400_000,
    )
    curve = MemoryCurve(300 * MiB, 2 * MiB)
    plan = make_plan(budget, curve, num_samples=6_000, per_sample_bytes=2004, options=options)
    assert [b.batch_size for b in plan.buckets] == [64, 64]
    words = " ".join(plan.reasons)
    assert "larger" not in words and "grows" not in words
    assert "every bucket trains at batch 64 (--max-batch-size)" in words


def test_every_row_weighs_one_over_the_planned_batch() -> None:
    lengths = long_tail(700)
    frame = texts(lengths, answer=np.arange(700))
    info = scan(frame)
    sig = ModelSignature((TensorSpec("seq", (None, None)),), (TensorSpec("answer", (None,)),))
    fp = footprint(sig, info, targets=["answer"])
    layout = Layout(fp, info)
    blocks = blocks_of(info, 8192)
    inputs, targets = load_in_memory(layout, blocks)
    bucketing = Bucketing("seq", "seq", (10, 30, int(lengths.max())), (90, 40, 16))
    batches = bucketed_in_memory(
        layout, blocks, inputs, targets, bucketing, shuffle=True, seed=3, weighted=True
    )
    seen = 0
    for i in range(len(batches)):
        rows = batches.order.batches[i].rows
        weights = batches.row_weights(i)
        assert weights.shape == (rows,) and weights.dtype == np.float32
        # Keras divides a batch's weighted loss by its rows: each row counts 1 / 16
        assert weights / rows == pytest.approx(np.full(rows, 1 / 16))
        seen += rows
    assert seen == 700


@pytest.mark.slow
def test_keras_counts_a_weighted_row_as_planned() -> None:
    """The weights rest on Keras dividing a batch's weighted loss by its rows: a batch of
    n rows weighted n / B has the loss sum / B, whatever n is."""
    import keras

    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    for n in (5, 40):
        x, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 1))
        plain = np.mean((model.predict(x, verbose=0) - y) ** 2, axis=1)
        weighted = model.evaluate(x, y, sample_weight=np.full(n, n / 16), batch_size=n, verbose=0)
        assert weighted == pytest.approx(plain.sum() / 16, rel=1e-4)


@pytest.mark.slow
def test_the_training_feed_carries_the_weights_and_validation_does_not() -> None:
    from memtune.run.feed import KerasFeed

    lengths = long_tail(300)
    info = scan(texts(lengths, answer=np.arange(300)))
    sig = ModelSignature((TensorSpec("seq", (None, None)),), (TensorSpec("answer", (None,)),))
    fp = footprint(sig, info, targets=["answer"])
    layout = Layout(fp, info)
    blocks = blocks_of(info, 8192)
    inputs, targets = load_in_memory(layout, blocks)
    bucketing = Bucketing("seq", "seq", (10, int(lengths.max())), (50, 20))
    feed = KerasFeed(fp, flexible=frozenset({"seq"}))
    train = bucketed_in_memory(layout, blocks, inputs, targets, bucketing, weighted=True)
    rows = 0
    for i, (x, y, w) in enumerate(feed.stream(train)):
        assert x.shape[0] == y.shape[0] == w.shape[0]
        assert np.allclose(w.numpy(), train.row_weights(i))
        rows += int(w.shape[0])
    assert rows == 300
    held = bucketed_in_memory(layout, blocks, inputs, targets, bucketing)
    assert all(len(element) == 2 for element in feed.stream(held))
