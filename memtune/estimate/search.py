"""The search: four trials (a fifth after a late stop) to the largest batch that is safe, measured.

Pure: it is handed ``measure`` (one trial at batch b) and ``plan_for`` (the pure plan for a
curve), so its logic is tested on made-up trials — linear, a step, noise, an overshoot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memtune.core.curve import MemoryCurve, Trial
from memtune.core.errors import NothingFits
from memtune.core.plan import Plan
from memtune.core.units import format_bytes
from memtune.estimate.fitting import fitted, reach
from memtune.estimate.last_batch import (
    PlanFor,
    even_below,
    even_under,
    evened,
    hedged,
    unmeasured_risk,
)

MAX_TRIALS = 4
FIRST_BATCH = 8
NONLINEAR = 0.05  # a verification this far off the line means the curve bends
# While the slope is still the prior's, the second trial goes 1/PRIOR_SHARE of the way to
# the prior's choice (in batch): far enough that its growth stands clear of the trials'
# noise (±3 %), near enough that a prior too flat by up to this factor does not stop it.
# Half the way geometrically (8 → ~100 of ~1,300) measured a growth of 40 MiB against
# 40 MiB of noise: the third trial then missed by 18 % or was stopped.
PRIOR_SHARE = 2
# After a stop, the next trial goes this share of the way to the steepened choice (the
# stopped peak is only a lower bound; a second stop would leave the plan at the trial
# before). It still fits when the true peak at the stop lies up to a fifth of the headroom
# over the limit; the stops seen on bench_estimate came from noise and an upward bend, and
# 0.7 landed the plan at 0.71-0.84 of usable.
AFTER_STOP = 0.85
# After a stop with one trial completed (batch 8), the next goes this share of the way to
# the stopped batch, geometrically: far enough that the slope it gives stands clear of
# the trials' noise, near enough that a prior up to ~13x too flat is not stopped again.
# Half the way, bench_estimate's BiLSTM at 2 GiB read its slope over 8 -> 72 (860 and
# 989 MiB, ±30 MiB of noise) and its last trial, aimed on it, was stopped (plan 0.56 of
# usable). On a made-up linear truth with ±30 MiB of noise and priors 3-12x too flat
# (tests/test_search.py), half the way with no SPREAD left 4-6 of 40 plans under 0.85 of
# usable, down to 0.54; two thirds with SPREAD, none under 0.87.
AFTER_STOP_GEO = 2 / 3
# The last trial's extrapolation allows for the slope being off by this many times the
# noise of the trials it was read from (:func:`_within_noise`).
SPREAD = 1.0
# When the fourth trial was stopped, a fifth goes halfway (in log) between the largest
# batch that fitted and the smallest stopped, if that gap is wider than this: a step in
# the curve (an allocator's) lies somewhere in it, and the plan would otherwise stay at
# the batch under it (how-memtune-decides.md, "A late stop").
BISECT_GAP = 1.5

Measure = Callable[[int], Trial]


@dataclass(frozen=True)
class SearchResult:
    plan: Plan
    curve: MemoryCurve
    trials: list[Trial]
    notes: list[str]
    cap: int  # the largest batch the trials support: the plan's verified cap


def search(
    prior: MemoryCurve,
    measure: Measure,
    plan_for: PlanFor,
    choose: PlanFor | None = None,
    num_samples: int | None = None,
    noise: Callable[[int], int] | None = None,
) -> SearchResult:
    """Measure, refit, aim the next trial; then choose, on or under a batch a trial ran.

    ``plan_for`` is the plan a trial aims at (the limit a trial runs under, less noise);
    ``choose`` the final plan (the usable budget; default: ``plan_for``). While only one
    trial has completed, the curve's slope is the prior's, so the next trial goes half the
    way (:data:`PRIOR_SHARE`) to its choice: a prior too flat by up to that much still
    lands under the limit and gives a measured slope. A stopped trial steepens the curve
    (:func:`fitted`), but its peak is only a lower bound, so the next trial goes
    ``AFTER_STOP`` of the way to the steepened curve's choice. A choice at or near a batch
    already measured needs no trial, unless it is the whole dataset (``num_samples``: a
    regime of its own). The final batch lies at most ``REACH`` past the largest batch that
    fitted, or between it and a larger completed trial, and never at or past a stopped one.
    While trials remain, a plan near the budget that no trial ran is measured itself
    (:func:`unmeasured_risk`). ``noise`` gives how far a trial reading a peak may be off
    (None: trials are exact); the last trial, which a stop would waste, goes only as far
    as the slope allows at that noise (:func:`_within_noise`).
    """
    run = _Search(prior, measure, plan_for, choose or plan_for, num_samples, noise)
    run.start()
    while len(run.trials) < MAX_TRIALS:
        if len(run.trials) == MAX_TRIALS - 1:
            plan, _ = run.final()
            if unmeasured_risk(plan, run.curve, run.trials):
                break  # the last trial measures the plan itself (below)
        b = run.aim()
        if b is None:
            break
        run.measure_at(b)
    plan, cap = run.measure_the_plan()
    b = run.bisect()
    if b is not None:
        run.measure_at(b)
        plan, cap = run.measure_the_plan()
    if run.stepped is not None and run.stepped[0] == plan.batch_size:
        run.notes.append(
            f"batch {plan.batch_size:,} divides the {plan.num_samples:,} training samples "
            f"evenly: planned instead of {run.stepped[1]:,}, whose epoch would end in a "
            "partial batch of a shape no trial ran"
        )
    return SearchResult(plan, run.curve, run.trials, run.notes, cap)


class _Search:
    """One search's trials, the curve fitted to them, the batches shown to fit (with the
    pipeline beside them) and the notes, with the steps :func:`search` takes."""

    def __init__(
        self,
        prior: MemoryCurve,
        measure: Measure,
        plan_for: PlanFor,
        choose: PlanFor,
        n: int | None,
        noise: Callable[[int], int] | None,
    ) -> None:
        self.prior, self.measure, self.plan_for, self.choose = prior, measure, plan_for, choose
        self.n = n  # the training samples: a trial of them all is a regime of its own
        self.noise = noise
        self.trials: list[Trial] = []
        self.notes: list[str] = []
        self.good: list[int] = []
        self.curve = prior
        self.stepped: tuple[int, int] | None = None  # the last final plan's (even, from)

    def record(self, t: Trial) -> None:
        self.trials.append(t)
        self.curve = fitted(self.prior, self.trials, self.n)
        if t.exceeded:
            self.notes.append(
                f"the trial at batch {t.batch_size:,} passed its limit and was stopped"
            )
            return
        verified = self.choose(self.curve, t.batch_size)
        extra = verified.predicted_peak_bytes - self.curve.peak(verified.batch_size)
        if t.peak_bytes + extra <= verified.usable_bytes:
            self.good.append(t.batch_size)

    def start(self) -> None:
        """The first trial (batch 1 too when it is stopped); nothing fits without one."""
        try:
            first = max(1, min(FIRST_BATCH, self.plan_for(self.prior, None).batch_size))
        except NothingFits:
            first = 1  # the prior may be pessimistic: let a measurement decide
        self.record(self.measure(first))
        if self.trials[-1].exceeded and first > 1:
            self.record(self.measure(1))
        if not self.good:
            _refuse(self.prior, self.trials[-1], self.choose)

    def aim(self) -> int | None:
        """The next trial's batch, or None when the choice lies at or near one measured."""
        curve, trials, top = self.curve, self.trials, max(self.good)
        stops = [t for t in trials if t.exceeded and t.batch_size > top]
        bound = min((t.batch_size for t in stops), default=None)
        aimed = self.plan_for(curve, None)
        b = aimed.batch_size if bound is None else min(aimed.batch_size, bound - 1)
        measured = len({t.batch_size for t in trials if not t.exceeded}) >= 2  # a slope
        if not measured and bound is None:
            b = top + (b - top) // PRIOR_SHARE
        elif not measured:  # the prior is too flat by more than that: AFTER_STOP_GEO of the way
            b = max(top, int(top ** (1 - AFTER_STOP_GEO) * b**AFTER_STOP_GEO))
        elif any(curve.peak(t.batch_size) <= t.peak_bytes for t in stops):
            # a stop steepened the curve: it says the curve is too flat, not by how much
            b = top + int((b - top) * AFTER_STOP)
        if self.noise is not None and measured and len(trials) == MAX_TRIALS - 1:
            b = _within_noise(curve, trials, top, b, self.noise, self.n, self.plan_for)
        n = self.n or aimed.num_samples
        whole = b >= n > top  # its own regime: one step, a view
        # A batch that divides the epoch runs one shape: the line itself, with no partial
        # batch's cost on it that a batch beside it would not pay (benchmarks.md, "Even
        # batches").
        b = even_below(b, n) or b
        if b <= top + max(1, top // 20) and not whole:
            return None
        return b

    def bisect(self) -> int | None:
        """A fifth trial's batch, when the fourth was stopped far above the largest batch
        that fitted (:data:`BISECT_GAP`): the plan would otherwise fall back to that one."""
        if len(self.trials) != MAX_TRIALS or not self.trials[-1].exceeded:
            return None
        top = max(self.good)
        bound = min((t.batch_size for t in self.trials if t.exceeded and t.batch_size > top),
                    default=None)  # fmt: skip
        if bound is None or bound <= BISECT_GAP * top:
            return None
        return int((top * bound) ** 0.5)

    def final(self) -> tuple[Plan, int]:
        """The plan on the trials so far (:func:`_final`), stepped down to an even batch
        when its own epoch's last batch is an unmeasured risk and one lies near
        (:func:`evened`)."""
        plan, cap = _final(self.curve, self.trials, self.good, self.choose, self.n)
        even = evened(plan, self.curve, self.trials, self.choose)
        if even is None:
            self.stepped = None
            return plan, cap
        self.stepped = (even.batch_size, plan.batch_size)
        return even, even.batch_size  # the cap too: a plan made on it stays even

    def measure_at(self, b: int) -> None:
        """A trial at ``b``, noted when it lies off the line the earlier trials drew."""
        predicted = self.curve.peak(b)
        t = self.measure(b)
        if not t.exceeded and predicted and abs(t.peak_bytes - predicted) > NONLINEAR * predicted:
            side = "below" if t.peak_bytes < predicted else "above"
            self.notes.append(
                f"batch {b} measured {format_bytes(t.peak_bytes)}, "
                f"{abs(t.peak_bytes - predicted) / predicted:.0%} {side} the "
                f"{format_bytes(predicted)} the earlier trials suggested; the plan uses the "
                "measurement"
            )
        self.record(t)

    def measure_the_plan(self) -> tuple[Plan, int]:
        """The plan's own epoch, measured while trials remain: its last, partial batch has
        shapes no trial may have run, and their memory is not the line's
        (:func:`unmeasured_risk`); with none left between trials that are no line, the
        largest batch measured to fit."""
        plan, cap = self.final()
        while len(self.trials) < MAX_TRIALS and unmeasured_risk(plan, self.curve, self.trials):
            b = plan.batch_size
            if any(t.exceeded and t.batch_size == b for t in self.trials):
                break  # stopped already, under a batch that fitted: the curve is no line here
            self.record(self.measure(b))
            if b in self.good:  # measured to fit: the plan goes no further on the line
                plan, cap = self.choose(self.curve, b), b
            else:
                plan, cap = self.final()
                t = self.trials[-1]
                what = "passed its limit at" if t.exceeded else "measured"
                self.notes.append(
                    f"the plan's own batch {b} {what} {format_bytes(t.peak_bytes)} (its epoch's "
                    "last batch included), over the usable budget: the plan is smaller"
                )
        risky = unmeasured_risk(plan, self.curve, self.trials)
        if risky and _not_monotone(self.trials, self.n):  # no trial left
            return self._fallback(plan, cap)
        return plan, cap

    def _top_under_whole(self) -> int:
        """The largest batch measured to fit short of the whole dataset (a regime of its
        own, served as a view: no bound on a smaller batch's copies)."""
        return max((b for b in self.good if self.n is None or b < self.n), default=0)

    def _fallback(self, plan: Plan, cap: int) -> tuple[Plan, int]:
        """No trial left for a plan between trials that are no line: the largest of the
        largest batch measured to fit, the largest its epoch's last batch could not push past
        the budget (:func:`hedged`), and the largest that divides the epoch under a batch
        measured to fit (:func:`even_under`). The measured one alone put gru at 1 GiB on 394,
        0.50 of usable, between 394 and a stop at 1,342."""
        completed = fitted(self.prior, [t for t in self.trials if not t.exceeded], self.n)
        options = [
            (_largest_measured(self.curve, self.good, self.choose), "the largest measured to fit"),
            (
                hedged(self.curve, self.choose, plan.batch_size - 1),
                "the largest that fits even if its epoch's last batch costs its rows' growth again",
            ),
            (
                even_under(self._top_under_whole(), plan.num_samples, completed, self.choose),
                "the largest under a batch measured to fit that divides the epoch (one shape, "
                "held within what that batch's trial held)",
            ),
        ]
        found = [(p, why) for p, why in options if p is not None]
        if not found:
            return plan, cap
        best, why = max(found, key=lambda found: found[0].batch_size)  # ties: the first
        said = f"batch {plan.batch_size} lies between trials and none is left to measure it"
        self.notes.append(f"{said}: the plan is batch {best.batch_size}, {why}")
        return best, best.batch_size


def _refuse(prior: MemoryCurve, last: Trial, choose: PlanFor) -> None:
    """Raise :class:`NothingFits` with the figures: what ``last`` (batch 1, or the first
    batch when 1 was not tried) measured — or passed its limit at, a lower bound — and the
    usable budget, with what could help (the plan's own words)."""
    need = last.peak_bytes
    if last.exceeded:  # stopped at its limit, a lower bound: the prior may know more
        need = max(need, prior.peak(last.batch_size))
    measured = prior.with_points([(last.batch_size, need)])
    try:
        plan = choose(measured, None)
    except NothingFits as refused:
        if not last.exceeded:
            raise
        words = str(refused).replace(" needs ", " needs more than ", 1)
        words = words.replace(" over the usable", " or more over the usable", 1)
        raise NothingFits(words) from None
    over = "passed its limit at" if last.exceeded else "measured"
    raise NothingFits(
        f"nothing fits: even batch {last.batch_size} {over} "
        f"{format_bytes(last.peak_bytes)}, with the data pipeline beside it over the usable "
        f"{format_bytes(plan.usable_bytes)}; what could help: a smaller --maxlen, "
        "--mode streaming, mixed precision, or a larger --budget"
    )


def _within_noise(
    curve: MemoryCurve,
    trials: list[Trial],
    top: int,
    b: int,
    noise: Callable[[int], int],
    whole_from: int | None,
    plan_for: PlanFor,
) -> int:
    """The batch, up to ``b``, that ``plan_for`` chooses when the slope past ``top`` is
    steeper by ``SPREAD`` times the noise over the distance it was read across.

    Only an extrapolation past every completed trial: the slope the curve runs on past
    ``top`` (read from the trial below it, or toward a stopped trial that steepened it)
    carries their noise, and its error grows with the distance past ``top``. A short
    baseline, far extrapolated, is hedged most: bench_estimate's BiLSTM at 2 GiB read
    860 MiB at batch 8 and 989 at 72 (±30 MiB); on that slope its last trial, at 432,
    was stopped and the plan stayed at 72 (0.56 of usable), where batch 341 peaked at 0.94.
    """
    done = {t.batch_size: t.peak_bytes for t in trials if not t.exceeded}
    done = {k: v for k, v in done.items() if whole_from is None or k < whole_from}
    below = max((k for k in done if k < top), default=None)
    if below is None or top not in done or b <= top or max(done) > top:
        return b
    if whole_from is not None and b >= whole_from:
        return b  # the whole dataset: a regime of its own, measured as it is
    # Past ``top`` the curve runs toward a stopped trial that steepened it, if one did: its
    # slope is read over that longer stretch (text-cnn at 1.25 GiB, hedged over 8 -> 74
    # instead of 74 -> 344, planned 241 at 0.82 of usable where 361 read 0.93).
    above = min((k for k, _ in curve.points if k > top), default=None)
    stretch = above - top if above is not None else top - below
    allowance = int(SPREAD * noise(done[top]) * (b - top) / stretch)
    # The steeper line from ``top`` to ``b``, the curve beyond it; the planner's own aim
    # and pipeline on it (a target read off the curve at ``b`` is no limit where the
    # curve is flat: mlp's trials read 960 MiB at 2,074 and 927 at 2,836).
    steep = curve.with_points([*curve.points, (b, curve.peak(b) + allowance)])
    return min(b, plan_for(steep, None).batch_size)


def _not_monotone(trials: list[Trial], whole_from: int | None) -> bool:
    """A trial was stopped under a batch that completed (not the whole dataset's, a regime
    of its own): between trials, the curve may hold anything."""
    done = [t.batch_size for t in trials if not t.exceeded]
    done = [b for b in done if whole_from is None or b < whole_from]
    return any(t.exceeded and t.batch_size < max(done, default=0) for t in trials)


def _largest_measured(curve: MemoryCurve, good: list[int], choose: PlanFor) -> Plan | None:
    """The plan at the largest batch a trial showed to fit that the choice keeps whole."""
    for b in sorted(set(good), reverse=True):
        plan = choose(curve, b)
        if plan.batch_size == b:
            return plan
    return None


def _final(
    curve: MemoryCurve, trials: list[Trial], good: list[int], choose: PlanFor, n: int | None
) -> tuple[Plan, int]:
    """The plan on this curve and the cap the trials support (:func:`reach`); a plan under
    the whole dataset is bounded by the trials under it."""
    top = max(good)
    cap = reach(top, trials, n)
    plan = choose(curve, cap)
    if n is not None and plan.batch_size < n <= cap:
        cap = reach(max((b for b in good if b < n), default=top), trials, n)
        plan = choose(curve, cap)
    return plan, cap
