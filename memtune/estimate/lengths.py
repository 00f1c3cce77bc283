"""Length buckets, measured: a trial at the shortest bucket's length gives the share of a
full-length sample's memory a short one takes, so each bucket's batch can grow as its rows
shrink (:func:`bucket_scale`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from memtune.core.curve import MemoryCurve, Trial
from memtune.core.plan import Plan
from memtune.core.units import format_bytes
from memtune.estimate.fitting import trial_noise
from memtune.estimate.runner import Setup, Trials


@dataclass(frozen=True)
class LengthTrial:
    """A trial at a shorter padded length of the bucketed input ``feed``: rows no longer
    than ``length`` (written by ``rows``), so memory is known over batch × length."""

    feed: str
    length: int
    pad_length: int
    boundaries: tuple[int, ...]
    samples: int  # rows in the shortest bucket: its batch never needs to be larger
    rows: Callable[[int, Path], Path] | None


def bucket_scale(
    measure: Trials, s: Setup, lt: LengthTrial, curve: MemoryCurve, reach: int, notes: list[str]
) -> tuple[float, ...]:
    """Each bucket's per-sample memory as a share of a full-length sample's.

    Trials at the shortest bucket's length: first at the batch a guess between token scaling
    and none puts near ``reach`` (the full-length batch the plan may use); its peak, read
    back on the full-length curve (noise added), gives that bucket's share. Then, when that
    share gives the bucket a batch past the one measured, a trial at that batch verifies it
    (the larger of the two shares is kept). Shares in between are interpolated linearly in
    the length: exact for per-sample memory affine in the length; for a convex one
    (attention) the line lies above, on the safe side. A first trial stopped at its limit
    is tried once at half the batch; stopped again, no bucket gets more than the longest's
    batch."""
    shares = _Shares(measure, s, lt, curve)
    batch = max(1, math.floor(max(1, reach) / math.sqrt(shares.tokens)))
    trial, measured = shares(batch)
    if trial.exceeded and batch > 1:
        batch //= 2
        trial, measured = shares(batch)
    if trial.exceeded:
        notes.append(
            f"buckets: a trial at length {lt.length}, batch {batch:,} passed its limit: no "
            "bucket is given a larger batch than the longest"
        )
        return tuple(1.0 for _ in lt.boundaries)
    said = (
        f"buckets: a trial at length {lt.length}, batch {batch:,} peaked at "
        f"{format_bytes(trial.peak_bytes)}"
    )
    target = min(math.floor(reach / measured), lt.samples)
    if target > batch * 1.05:
        check, again = shares(target)
        measured = max(measured, again)
        said += (
            f"; at batch {target:,} it {'passed its limit at' if check.exceeded else 'peaked at'}"
            f" {format_bytes(check.peak_bytes)}"
        )
    notes.append(
        f"{said}: a sample of length {lt.length} takes {measured:.0%} of the memory of one of "
        f"{lt.pad_length} (read on the full-length curve, noise included)"
    )
    return interpolated(measured, lt)


def together(measure: Trials, s: Setup, lt: LengthTrial, plan: Plan, notes: list[str]) -> int:
    """The peak of every bucket's batch shapes trained one after another in one trial
    process, as ``fit`` trains them (each new shape adds memory TensorFlow keeps; a trial
    per length does not see it): the longest bucket first, each bucket's full batch then
    its epoch's partial one. 0 when there is nothing to add (one bucket, or a trial that
    passed its limit: noted, and the plan's buckets stay as measured one by one)."""
    steps: list[tuple[int, int]] = []
    for b in reversed(plan.buckets):
        steps.append((min(b.batch_size, b.samples), b.length))
        if b.samples > b.batch_size and b.samples % b.batch_size:
            steps.append((b.samples % b.batch_size, b.length))
    if len(plan.buckets) < 2 or not steps:
        return 0
    digest = hashlib.sha256(repr(steps).encode()).hexdigest()[:12]
    spec = replace(measure.spec, bucket_steps=tuple(steps), bucket_feed=lt.feed, num_samples=None)
    trial = measure.apart(f"together{digest}", s, spec)(max(count for count, _ in steps))
    if trial.exceeded:
        notes.append(
            f"buckets: their {len(steps)} batch shapes trained together passed the trial's "
            f"limit at {format_bytes(trial.peak_bytes)}; the prediction is the worst bucket's"
        )
        return 0
    return trial.peak_bytes


def interpolated(measured: float, lt: LengthTrial) -> tuple[float, ...]:
    """Each boundary's share: linear in the length from the measured shortest to the full
    length, never under the tokens' share."""
    scale = []
    for length in lt.boundaries:
        at = measured + (1 - measured) * (length - lt.length) / max(1, lt.pad_length - lt.length)
        scale.append(min(1.0, max(length / lt.pad_length, at)))
    return tuple(scale)


class _Shares:
    """``shares(batch)``: a trial at the shortest bucket's length and batch (cached apart
    from the full-length trials), and the share of a full-length sample its peak implies."""

    def __init__(self, measure: Trials, s: Setup, lt: LengthTrial, curve: MemoryCurve) -> None:
        short = lt.length
        self.measure, self.s, self.curve, self.length = measure, s, curve, short
        self.tokens = short / lt.pad_length
        feeds = tuple(
            replace(f, shape=(short, *f.shape[1:])) if f.name == lt.feed else f for f in s.feeds
        )
        self.trials = measure.apart(
            f"length{short}",
            replace(s, feeds=feeds, rows=lt.rows),
            replace(measure.spec, feeds=feeds, num_samples=None),
        )
        self.trials.length = short

    def __call__(self, batch: int) -> tuple[Trial, float]:
        trial = self.trials(batch)
        self.measure.extra.append(
            replace(trial, peak_bytes=trial.peak_bytes - self.s.parent_extra, length=self.length)
        )
        noise = trial_noise(trial.peak_bytes)
        equal = self.curve.largest_batch(trial.peak_bytes + noise)
        return trial, min(1.0, max(self.tokens, equal / batch))
