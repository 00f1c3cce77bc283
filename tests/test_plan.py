"""The plan is pure: these run without TensorFlow, on made-up curves and budgets."""

import pytest

from memtune.core.budget import Budget
from memtune.core.choose import make_plan
from memtune.core.constants import BLOCK_ROWS, STREAM_QUEUE_BATCHES, WORKERS
from memtune.core.curve import MemoryCurve
from memtune.core.errors import MemtuneError, NothingFits
from memtune.core.plan import PlanOptions

MiB = 1024**2
GiB = 1024**3
DEFAULT_CURVE = MemoryCurve(100 * MiB, 1 * MiB)


def plan(
    budget=1 * GiB,
    curve=DEFAULT_CURVE,
    n=100_000,
    per=1000,
    device="cpu",
    host=None,
    **opts,
):
    b = Budget(device, budget, "test", host if host is not None else budget)
    return make_plan(b, curve, num_samples=n, per_sample_bytes=per, options=PlanOptions(**opts))


def test_largest_batch_under_usable() -> None:
    p = plan()
    usable = int(GiB * 0.9)
    assert p.usable_bytes == usable
    assert p.predicted_peak_bytes <= usable
    slope = MiB + (STREAM_QUEUE_BATCHES + WORKERS) * 1000  # the queue, the batches building
    cache = (WORKERS + 1) * BLOCK_ROWS * 1000  # a block running on each, and one read ahead
    assert p.batch_size == (usable - 100 * MiB - cache) // slope
    assert plan(safety=0.0).batch_size > p.batch_size


def test_json_has_the_contract_keys_and_the_distribution_ones() -> None:
    keys = set(plan().to_json())
    assert keys == {
        "strategy",  # added by memtune beside the contract's keys (#7)
        "replicas",
        "global_batch_size",
        "workers",
        "worker_index",
        "largest_safe_batch_size",  # the contract: the memory bound beside the step floor
        "batch_size",
        "gradient_accumulation_steps",
        "effective_batch_size",
        "mode",
        "device",
        "budget_bytes",
        "usable_bytes",
        "num_samples",
        "per_sample_bytes",
        "dataset_bytes",
        "predicted_peak_bytes",
        "trials",
        "reasons",
        "batch_size_forced",  # added by memtune (#27)
    }
    j = plan(n=10, per=7).to_json()
    assert j["dataset_bytes"] == 70
    assert j["effective_batch_size"] == j["batch_size"] * j["gradient_accumulation_steps"]
    assert (j["strategy"], j["replicas"], j["global_batch_size"]) == ("none", 1, j["batch_size"])


def test_capped_by_dataset_and_max_batch() -> None:
    assert plan(n=50, max_batch_size=10**6).batch_size == 50
    p = plan(max_batch_size=64)
    assert p.batch_size == 64
    assert any("--max-batch-size" in r for r in p.reasons)


@pytest.mark.parametrize(("n", "batch"), [(12_000, 750), (50, 3), (15, 1), (10**6, None)])
def test_a_default_plan_keeps_sixteen_steps_per_epoch(n: int, batch: int | None) -> None:
    p = plan(n=n)
    memory_bound = plan(n=n, max_batch_size=10**9).batch_size
    assert p.largest_safe_batch_size == memory_bound
    if batch is None:  # memory binds before the floor does
        assert p.batch_size == memory_bound and -(-n // p.batch_size) >= 16
        return
    assert p.batch_size == batch and -(-n // batch) >= min(16, n)  # 15 rows: 15 steps
    assert any("at least 16 steps per epoch" in r for r in p.reasons)
    assert any("--max-batch-size N lifts" in r for r in p.reasons)


def test_in_memory_when_dataset_fits_else_streaming() -> None:
    assert plan(n=1000, per=1000).mode == "in-memory"
    big = plan(n=1_000_000, per=1000)  # 1 GB of padded data cannot sit beside training
    assert big.mode == "streaming"
    assert big.predicted_peak_bytes <= big.usable_bytes


def test_gpu_dataset_lives_in_host_memory() -> None:
    p = plan(device="gpu:0", n=1_000_000, per=1000, host=8 * GiB)
    assert p.mode == "in-memory"
    assert plan(device="gpu:0", n=1_000_000, per=1000, host=500 * MiB).mode == "streaming"


def test_effective_batch_size_gives_exact_accumulation() -> None:
    p = plan(curve=MemoryCurve(100 * MiB, 30 * MiB), effective_batch_size=100)
    assert p.batch_size * p.gradient_accumulation_steps == 100
    assert p.batch_size <= (int(GiB * 0.9) - 100 * MiB) // (30 * MiB)
    assert p.gradient_accumulation_steps > 1
    small = plan(effective_batch_size=16)
    assert (small.batch_size, small.gradient_accumulation_steps) == (16, 1)


def test_nothing_fits_says_how_far_and_what_helps() -> None:
    with pytest.raises(NothingFits) as info:
        plan(budget=100 * MiB, has_sequences=True)
    message = str(info.value)
    assert "even batch 1 needs" in message and "over the usable" in message
    assert "--maxlen" in message and "GPU" in message
    assert info.value.exit_code == 3


def test_forced_values() -> None:
    p = plan(batch_size=7, mode="streaming")
    assert (p.batch_size, p.mode) == (7, "streaming")
    with pytest.raises(NothingFits, match="--mode in-memory"):
        plan(n=1_000_000, per=1000, mode="in-memory")
    assert plan(n=1_000_000, per=1000, mode="in-memory", force=True).mode == "in-memory"
    assert p.batch_size_forced and not plan().batch_size_forced


def test_a_forced_batch_past_usable_is_refused_with_what_fits() -> None:
    curve = MemoryCurve(100 * MiB, 1 * MiB)  # usable 921.6 MiB: about 800 samples fit
    with pytest.raises(NothingFits) as info:
        plan(curve=curve, batch_size=2000, mode="streaming")
    message = str(info.value)
    safe = plan(curve=curve, mode="streaming", max_batch_size=10**6).largest_safe_batch_size
    assert message.startswith("--batch-size 2000: its predicted peak")
    assert f"the largest safe batch is {safe:,} (--batch-size {safe}," in message
    assert "--effective-batch-size 2000 without --batch-size" in message and "--force" in message
    assert info.value.exit_code == 3
    forced = plan(curve=curve, batch_size=2000, mode="streaming", force=True)
    assert forced.batch_size == 2000 and forced.predicted_peak_bytes > forced.usable_bytes
    assert plan(curve=curve, batch_size=safe, mode="streaming").batch_size == safe


def _measured(*points: tuple[int, int]) -> MemoryCurve:
    return MemoryCurve(100 * MiB, 1 * MiB).with_points([(b, p * MiB) for b, p in points])


def test_largest_safe_never_extends_a_flat_or_falling_pair_of_trials() -> None:
    # check once reported every row from trials 355 -> 1,254 MiB and 374 -> 1,233 MiB
    falling = _measured((355, 1254), (374, 1233))
    p = plan(budget=1536 * MiB, curve=falling, n=6000, verified_cap=374)
    assert (p.batch_size, p.largest_safe_batch_size) == (374, 374)
    flat = plan(budget=1536 * MiB, curve=_measured((8, 600), (57, 614)), n=6000, verified_cap=57)
    assert flat.largest_safe_batch_size == 57  # 14 MiB of growth is inside the noise


def test_largest_safe_is_one_measured_slope_past_the_largest_trial_that_fit() -> None:
    # 1 MiB a sample measured from 100 to 300; 400 MiB of room left above batch 300
    p = plan(budget=1000 * MiB, curve=_measured((100, 300), (300, 500)), n=100_000)
    usable = p.usable_bytes
    assert 300 < p.largest_safe_batch_size <= 300 + (usable - 500 * MiB) // MiB


def test_bad_options() -> None:
    with pytest.raises(MemtuneError, match="--safety"):
        plan(safety=1.0)
    with pytest.raises(MemtuneError, match="--batch-size"):
        plan(batch_size=0)


def test_larger_budget_never_smaller_batch() -> None:
    batches = [plan(budget=b * MiB).batch_size for b in range(200, 4000, 150)]
    assert batches == sorted(batches)


def test_a_budget_the_host_cannot_give_is_clipped_and_says_so() -> None:
    from memtune.core.budget import resolve_budget
    from memtune.probe import Probe
    from memtune.probe.host import RESERVE_BYTES, HostMemory

    seen = Probe(HostMemory(32 * GiB, 10 * GiB, None, process_bytes=GiB), [])
    clipped = resolve_budget(seen, "cpu", 1024 * GiB)
    assert clipped.budget_bytes == 11 * GiB - RESERVE_BYTES  # available less the reserve, + held
    assert "--budget 1.00 TiB clipped to what the host can give" in clipped.source
    assert "less the 384 MiB reserve" in clipped.source
    assert resolve_budget(seen, "cpu", 8 * GiB).budget_bytes == 8 * GiB  # honoured as given
    p = plan(budget=clipped.budget_bytes)
    assert p.budget_bytes == 11 * GiB - RESERVE_BYTES


def test_auto_is_what_is_available_less_the_reserve_plus_what_memtune_holds() -> None:
    """In a 1 GiB cgroup whose working set is 150 MiB, with this process holding 100 MiB:
    1024 - 150 - 384 + 100 MiB. Counting RSS and usage with page cache said "nothing fits"."""
    from memtune.core.budget import resolve_budget
    from memtune.probe import Probe
    from memtune.probe.host import HostMemory

    seen = Probe(HostMemory(GiB, GiB - 150 * MiB, GiB, process_bytes=100 * MiB), [])
    auto = resolve_budget(seen, "cpu", None)
    assert auto.budget_bytes == (1024 - 150 - 384 + 100) * MiB
    assert auto.source == (
        "available host memory (capped by the cgroup limit) less the 384 MiB reserve"
    )
    bare = Probe(HostMemory(GiB, 200 * MiB, GiB, process_bytes=0), [])
    assert resolve_budget(bare, "cpu", None).budget_bytes == 0  # under the reserve: nothing


def test_streaming_parquet_row_groups_larger_than_a_batch_are_held_and_decoded_whole() -> None:
    """100,000-row groups (98 MiB decoded): the cache holds four, and three readers may each
    be decoding one at DECODE_FACTOR times its size — what a 1.6 GiB stream really took."""
    from memtune.core.constants import DECODE_FACTOR
    from memtune.core.pipeline_memory import pipeline_bytes

    per, n = 1028, 1_600_000
    small = pipeline_bytes("streaming", 4096, num_samples=n, per_sample_bytes=per, with_queue=False)
    groups = (100_000, 100_000, 98 * MiB)
    whole = pipeline_bytes(
        "streaming", 4096, num_samples=n, per_sample_bytes=per, with_queue=False,
        whole_blocks=groups,
    )  # fmt: skip
    # two batches building, one handed over (the batch a trial held), three blocks
    assert small == (3 * 4096 + 3 * 8192) * per
    assert whole == 4 * 100_000 * per + 3 * DECODE_FACTOR * 98 * MiB + 4096 * per
    fitting = (8192, 8192, 8 * MiB)  # row groups no larger than a block: still decoded whole
    assert small + 3 * DECODE_FACTOR * 8 * MiB == pipeline_bytes(
        "streaming", 4096, num_samples=n, per_sample_bytes=per, with_queue=False,
        whole_blocks=fitting,
    )  # fmt: skip


def test_a_stream_of_rows_read_where_they_lie_holds_no_block_cache() -> None:
    """Memory-mapped arrays, a tf.data pipeline, an image folder: never a block (a .npy
    stream was predicted 11-20 % over its fit with a block cache), and on a measured curve
    not the hand-over either: a trial's steps gather that copy themselves (4-10 % over)."""
    from memtune.core.pipeline_memory import pipeline_bytes

    per, n = 20_484, 8_000
    measured = pipeline_bytes(
        "streaming", 1170, num_samples=n, per_sample_bytes=per, with_queue=False, blocks=False
    )
    assert measured == 0
    assert measured < pipeline_bytes("streaming", 1170, num_samples=n, per_sample_bytes=per,
                                     with_queue=False)  # fmt: skip
    prior = pipeline_bytes(
        "streaming", 1170, num_samples=n, per_sample_bytes=per, with_queue=True, blocks=False
    )
    assert prior > 0  # the analytic prior counts the builders' batches and the queue
    assert prior < pipeline_bytes("streaming", 1170, num_samples=n, per_sample_bytes=per,
                                  with_queue=True)  # fmt: skip


def test_a_small_parquet_dataset_is_planned_in_memory_where_decoding_would_cost_more() -> None:
    """The batch is the largest that fits in either mode: with a dataset smaller than three
    row-group decodes, in-memory holds less, so the decode term must not shrink the batch."""
    from memtune.core.constants import DECODE_FACTOR

    groups = (8192, 8192, 30 * MiB)  # three decodes: 540 MiB, more than the 95 MiB dataset
    with_groups = plan(budget=2 * GiB, n=100_000, per=1000, whole_blocks=groups)
    plain = plan(budget=2 * GiB, n=100_000, per=1000, mode="in-memory")
    assert with_groups.mode == "in-memory"
    assert with_groups.batch_size == plain.batch_size
    large = 3 * 1024**2  # 3 GB of data, over the budget: streaming, and the decodes count
    streamed = plan(budget=2 * GiB, n=large, per=1000, whole_blocks=groups)
    unbounded = plan(budget=2 * GiB, n=large, per=1000)
    assert streamed.mode == unbounded.mode == "streaming"
    freed = 3 * DECODE_FACTOR * 30 * MiB
    assert streamed.predicted_peak_bytes <= streamed.usable_bytes
    per_sample = MiB + (STREAM_QUEUE_BATCHES + WORKERS) * 1000  # training, queue, building
    assert unbounded.batch_size - streamed.batch_size == pytest.approx(freed / per_sample, abs=2)
