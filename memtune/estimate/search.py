"""The search: at most four trials to the largest batch that is safe, verified.

Pure: it is handed ``measure`` (one trial at batch b) and ``plan_for`` (the pure plan for a
curve), so its logic is tested on made-up trials — linear, a step, noise, an overshoot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from memtune.errors import NothingFits
from memtune.estimate.curve import MemoryCurve
from memtune.plan import Plan, Trial
from memtune.units import format_bytes

MAX_TRIALS = 4
FIRST_BATCH = 8
NONLINEAR = 0.05  # a verification this far off the line means the curve bends

Measure = Callable[[int], Trial]
PlanFor = Callable[[MemoryCurve, "int | None"], Plan]  # (curve, verified cap) -> plan


@dataclass(frozen=True)
class SearchResult:
    plan: Plan
    curve: MemoryCurve
    trials: list[Trial]
    notes: list[str]


def search(prior: MemoryCurve, measure: Measure, plan_for: PlanFor) -> SearchResult:
    """Measure, refit, choose, verify; step down when a verification overshoots.

    The curve is fitted to the trials that completed; a stopped trial only bounds the
    search from above. When the curve points at or past such a bound, the next try is the
    geometric mean of the largest good batch and the bound. A choice at or under a batch
    already measured to fit needs no trial: memory does not shrink as the batch grows.
    """
    trials: list[Trial] = []
    notes: list[str] = []
    good: list[int] = []  # batches a trial showed to fit, with the pipeline beside them

    def refit() -> MemoryCurve:
        points = [(t.batch_size, t.peak_bytes) for t in trials if not t.exceeded]
        return prior.with_points(points) if points else prior

    def record(t: Trial) -> MemoryCurve:
        trials.append(t)
        curve = refit()
        if t.exceeded:
            notes.append(
                f"the trial at batch {t.batch_size} passed the usable budget and was stopped"
            )
        else:
            verified = plan_for(curve, t.batch_size)
            extra = verified.predicted_peak_bytes - curve.peak(verified.batch_size)
            if t.peak_bytes + extra <= verified.usable_bytes:
                good.append(t.batch_size)
        return curve

    try:
        first = max(1, min(FIRST_BATCH, plan_for(prior, None).batch_size))
    except NothingFits:
        first = 1  # the prior may be pessimistic: let a measurement decide
    curve = record(measure(first))
    if trials[-1].exceeded and first > 1:
        curve = record(measure(1))
    if not good:
        plan_for(curve, None)  # raises NothingFits with the measured numbers
        raise NothingFits(
            f"nothing fits: even batch {trials[-1].batch_size} passed the usable budget"
        )
    while len(trials) < MAX_TRIALS:
        plan = plan_for(curve, None)
        b = plan.batch_size
        bound = min((t.batch_size for t in trials if t.exceeded), default=None)
        if bound is not None and b >= bound:
            b = max(max(good) + 1, int(math.sqrt(max(good) * bound)))
            if b >= bound:
                break
        if b <= max(good):  # at or under a batch measured to fit: safe, no trial needed
            return SearchResult(plan_for(curve, max(good)), curve, trials, notes)
        predicted = curve.peak(b)
        t = measure(b)
        if not t.exceeded and predicted and abs(t.peak_bytes - predicted) > NONLINEAR * predicted:
            side = "below" if t.peak_bytes < predicted else "above"
            notes.append(
                f"batch {b} measured {format_bytes(t.peak_bytes)}, "
                f"{abs(t.peak_bytes - predicted) / predicted:.0%} {side} the "
                f"{format_bytes(predicted)} the earlier trials suggested; the plan uses the "
                "measurement"
            )
        curve = record(t)
    best = max(good)
    return SearchResult(plan_for(curve, best), curve, trials, notes)
