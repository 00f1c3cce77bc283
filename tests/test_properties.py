"""Property-based checks of the pure pieces: parsing, padding, sizes, order, plan."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memtune.core.budget import Budget
from memtune.core.choose import make_plan
from memtune.core.curve import MemoryCurve
from memtune.core.errors import NothingFits
from memtune.core.plan import PlanOptions
from memtune.core.units import parse_size
from memtune.data.cells import Ragged, parse_cells
from memtune.data.padding import pad
from memtune.data.sources import shard_order

ints = st.lists(st.lists(st.integers(-1000, 1000), max_size=12), min_size=1, max_size=20)
floats = st.lists(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), max_size=8), min_size=1, max_size=20
)


@settings(max_examples=60, deadline=None)
@given(ints)
def test_int_lists_as_pandas_writes_them_parse_back(rows: list[list[int]]) -> None:
    r = parse_cells([str(row) for row in rows], where="f.csv")
    assert r.lengths.tolist() == [len(row) for row in rows]
    assert r.values.tolist() == [v for row in rows for v in row]
    assert r.is_int


@settings(max_examples=60, deadline=None)
@given(floats)
def test_space_separated_floats_parse_back(rows: list[list[float]]) -> None:
    cells = [" ".join(repr(float(v)) for v in row) for row in rows]
    r = parse_cells(cells, where="f.csv")
    assert r.lengths.tolist() == [len(row) for row in rows]
    np.testing.assert_allclose(r.values, [v for row in rows for v in row])


@settings(max_examples=60, deadline=None)
@given(ints, st.integers(1, 15), st.sampled_from(["pre", "post"]), st.sampled_from(["pre", "post"]))
def test_padding_equals_keras(
    rows: list[list[int]], maxlen: int, padding: str, truncating: str
) -> None:
    import keras

    ragged = Ragged(
        np.array([v for row in rows for v in row], dtype=np.float64),
        np.array([len(row) for row in rows], dtype=np.int64),
        True,
    )
    ours = pad(ragged, maxlen, dtype=np.int32, padding=padding, truncating=truncating)  # type: ignore[arg-type]
    theirs = keras.utils.pad_sequences(rows, maxlen=maxlen, padding=padding, truncating=truncating)
    np.testing.assert_array_equal(ours, theirs)


@given(
    st.integers(1, 10**6), st.sampled_from(["B", "KiB", "MiB", "GiB", "KB", "MB", "GB", "k", "m"])
)
def test_sizes(n: int, unit: str) -> None:
    factor = {
        "B": 1,
        "KiB": 1024,
        "MiB": 1024**2,
        "GiB": 1024**3,
        "KB": 1000,
        "MB": 10**6,
        "GB": 10**9,
        "k": 1024,
        "m": 1024**2,
    }[unit]
    assert parse_size(f"{n}{unit}") == n * factor
    assert parse_size(f"{n} {unit.upper()}") == n * factor


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30, unique=True))
def test_numbered_shards_come_in_numeric_order(numbers: list[int]) -> None:
    paths = [Path(f"{n}.csv") for n in numbers]
    assert [int(p.stem) for p in shard_order(paths)] == sorted(numbers)


@settings(max_examples=80)
@given(
    st.integers(600, 4000),
    st.integers(1, 3000),
    st.integers(100, 10**6),
    st.integers(1, 10**6),
    st.integers(10, 5000),
    st.floats(0, 0.5),
)
def test_plan_invariants(
    budget_mib: int, extra_mib: int, slope: int, n: int, per: int, safety: float
) -> None:
    curve = MemoryCurve(500 * 1024**2, slope)

    def plan(mib: int):  # type: ignore[no-untyped-def]
        b = Budget("cpu", mib * 1024**2, "test", mib * 1024**2)
        return make_plan(
            b, curve, num_samples=n, per_sample_bytes=per, options=PlanOptions(safety=safety)
        )

    try:
        small = plan(budget_mib)
    except NothingFits:
        return  # nothing fits at the smaller budget: nothing to compare
    large = plan(budget_mib + extra_mib)
    assert large.batch_size >= small.batch_size  # more memory never gives a smaller batch
    for p in (small, large):
        assert p.predicted_peak_bytes <= p.usable_bytes  # within the plan's own prediction
        assert p.batch_size >= 1
        assert p.batch_size <= n


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=40), st.integers(1, 12))
def test_workers_shares_are_contiguous_nonempty_and_cover(sizes: list[int], parts: int) -> None:
    from memtune.data.shares import balanced_cuts

    if len(sizes) < parts:
        return
    cuts = balanced_cuts(sizes, parts)
    assert cuts[0] == 0 and cuts[-1] == len(sizes) and len(cuts) == parts + 1
    assert all(a < b for a, b in itertools.pairwise(cuts))  # every share non-empty


@given(st.integers(1, 5000), st.integers(0, 40), st.integers(1, 300))
def test_every_worker_takes_the_largest_shares_steps(largest: int, less: int, batch: int) -> None:
    """A share cut into the steps of the largest share: sizes differ by at most one, none
    empty or larger than the batch, and they add up to the share."""
    from memtune.data.shares import even_bounds

    steps = -(-largest // batch)
    share = max(steps, largest - less)  # EvenBatches refuses a share smaller than the steps
    sizes = [b - a for a, b in itertools.pairwise(even_bounds(share, steps))]
    assert len(sizes) == steps and sum(sizes) == share
    assert min(sizes) >= 1 and max(sizes) <= batch and max(sizes) - min(sizes) <= 1
