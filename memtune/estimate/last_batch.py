"""An epoch's last, partial batch: a shape of its own that no trial may have run, what it
may cost, and the plans that avoid the risk (pure, like the search that uses them)."""

from __future__ import annotations

from collections.abc import Callable

from memtune.core.curve import MemoryCurve, Trial
from memtune.core.plan import Plan

PlanFor = Callable[[MemoryCurve, "int | None"], Plan]  # (curve, batch cap) -> plan

# A trial, and a plan whose epoch's last batch no trial ran, may step down this share of
# the batch to one that divides the epoch: with no partial batch it runs one shape, so a
# trial reads the line itself and the line between trials holds the plan, unmeasured.
EVEN_SHARE = 0.05


def unmeasured_risk(plan: Plan, curve: MemoryCurve, trials: list[Trial]) -> bool:
    """A plan no trial ran whose epoch's last batch could pass the usable budget.

    An epoch of n rows at batch b ends with a batch of n mod b rows, and a new batch shape
    can cost up to its rows' growth again: under about 1,024 rows TensorFlow's oneDNN
    kernels hold more (gone with ``TF_ENABLE_ONEDNN_OPTS=0``). embedding-lstm on 3,200
    rows: batch 2,150 (a last batch of 1,050) peaked 1,501 MiB, batch 2,180 (1,020) 1,870.
    Only a trial of that batch, its last one included, measures it. An epoch with no partial
    batch has no such shape: the line between trials, each with its own partial batch, holds
    it."""
    b = plan.batch_size
    if divides(plan) or any(t.batch_size == b and not t.exceeded for t in trials):
        return False
    growth = curve.peak(b) - curve.peak(1)
    return plan.predicted_peak_bytes + growth > plan.usable_bytes


def one_shape(plan: Plan) -> bool:
    """``plan``'s epoch is batches of its batch size and one last batch (no length buckets,
    one replica, less than the whole dataset): an even batch leaves it one shape."""
    return not plan.buckets and plan.replicas == 1 and plan.batch_size < plan.num_samples


def divides(plan: Plan) -> bool:
    """Every batch of ``plan``'s epoch is its batch: no partial last batch, one shape."""
    return one_shape(plan) and plan.num_samples % plan.batch_size == 0


def evened(plan: Plan, curve: MemoryCurve, trials: list[Trial], choose: PlanFor) -> Plan | None:
    """The plan at the largest batch up to :data:`EVEN_SHARE` under ``plan``'s that divides
    its training samples, when ``plan``'s own epoch ends in a batch no trial ran that could
    pass the usable budget (:func:`unmeasured_risk`); None when there is none, or when
    batches are not one shape an epoch (length buckets, replicas)."""
    if not one_shape(plan) or not unmeasured_risk(plan, curve, trials):
        return None
    even = even_below(plan.batch_size, plan.num_samples)
    if even is None:
        return None
    stepped = choose(curve, even)
    return stepped if stepped.batch_size == even else None


def even_below(b: int, n: int) -> int | None:
    """The largest batch from ``b`` down to :data:`EVEN_SHARE` under it that divides ``n``
    rows evenly, or None."""
    return _divisor(n, b, int(b * (1 - EVEN_SHARE)))


def _divisor(n: int, most: int, least: int = 1) -> int | None:
    """The largest batch from ``most`` down to ``least`` that divides ``n`` rows, short of
    all of them, or None."""
    return next((e for e in range(min(most, n - 1), max(least, 1) - 1, -1) if n % e == 0), None)


def hedged(curve: MemoryCurve, choose: PlanFor, cap: int) -> Plan | None:
    """The plan at the largest batch up to ``cap`` that :func:`unmeasured_risk` clears:
    it fits even if its epoch's last batch costs its rows' growth again (chosen on the
    curve with every point's growth doubled, then planned on the curve itself)."""
    if cap < 1:
        return None
    base = curve.peak(1)
    steep = curve.with_points([(b, 2 * p - base) for b, p in curve.points])
    b = choose(steep, cap).batch_size
    plan = choose(curve, b)
    if plan.batch_size != b or unmeasured_risk(plan, curve, []):
        return None
    return plan


def even_under(top: int, n: int, completed: MemoryCurve, choose: PlanFor) -> Plan | None:
    """The plan at the largest batch up to ``top`` (a batch measured to fit) that divides
    ``n`` rows, on the curve through the trials that completed: one shape, so it holds no
    more than ``top``'s trial did with its own last batch beside it, whatever a trial
    stopped between them read (its own partial batch's cost). Where the curve's choice at
    a divisor is smaller, the next divisor under that choice is tried; None when none is
    left."""
    even = _divisor(n, top)
    while even is not None:
        plan = choose(completed, even)
        if plan.batch_size == even:
            return plan if divides(plan) else None
        even = _divisor(n, plan.batch_size)
    return None
