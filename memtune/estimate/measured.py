"""Planning from measurements: the search run on trials (:mod:`memtune.estimate.runner`),
length buckets measured, and a GPU this machine lacks estimated from CPU trials."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from memtune.core.curve import MemoryCurve, Trial
from memtune.core.plan import Plan
from memtune.core.planner import Planner
from memtune.core.units import format_bytes
from memtune.estimate.fitting import trial_noise
from memtune.estimate.lengths import LengthTrial, bucket_scale, together
from memtune.estimate.runner import Setup, _trial_model, child_share, trials
from memtune.estimate.search import SearchResult, search
from memtune.estimate.trials import (
    MAX_STEPS,
    TrialSpec,
    run_trial,
)

TRIAL_AIM = 0.97  # a trial aims this far under its limit: one stopped by noise is one lost


def measured_plan(
    model: Any,
    s: Setup,
    prior: MemoryCurve,
    planner: Planner,
    lengths: LengthTrial | None = None,
) -> tuple[Plan, MemoryCurve, Planner]:
    """Trials in child processes (cached) refine the prior; the choice lies on or near them.
    Returns the plan, the measured curve, and the planner with the trials' reasons noted."""
    with trials(model, s) as measure:
        if measure is None:
            planner = planner.noted(
                "no trials: the model could not be saved for a trial process; unverified"
            )
            return planner.plan(prior), prior, planner
        measure.prior = prior
        anchored = measure.anchor()
        # A trial must run beside this process within the limit, with room for its noise;
        # the choice may then extrapolate a little past it (search.REACH) up to the aim.
        within = None
        if s.device == "cpu":
            within = int((child_share(s) + s.parent_extra) * TRIAL_AIM)
        result = search(
            prior,
            measure,
            lambda curve, cap: planner.plan(curve, cap, within=within),
            lambda curve, cap: planner.plan(curve, cap),
            s.num_samples,
            noise=trial_noise,
        )
        scale, both = None, 0
        if lengths is not None:
            reach = planner.plan(result.curve, result.cap, within=within).largest_safe_batch_size
            if result.cap is not None:
                reach = min(reach, result.cap)
            scale = bucket_scale(measure, s, lengths, result.curve, reach, result.notes)
            if s.device == "cpu" and not s.validation:
                first = planner.plan(result.curve, result.cap, scale=scale)
                both = together(measure, s, lengths, first, result.notes)
    planner = planner.noted(*result.notes, _summary(s, result), *([anchored] if anchored else []))
    plan = planner.plan(result.curve, result.cap, scale=scale, together=both)
    # The plan lists what each trial measured; the curve adds this process's share.
    measured = [replace(t, peak_bytes=t.peak_bytes - s.parent_extra) for t in result.trials]
    return replace(plan, trials=measured + measure.extra), result.curve, planner


def _summary(s: Setup, result: SearchResult) -> str:
    """How the trials were measured, in one reason line."""
    data = "synthetic rows"
    if s.rows:
        data = "the data's own rows" + (", its longest included" if s.sequences else "")
    summary = (
        f"{len(result.trials)} trial(s) measured in a child process on {data}, each "
        f"training until its peak held (at most {MAX_STEPS} steps); planning and trial "
        f"together kept within {format_bytes(s.limit_bytes)}; {s.cache.hits} from the cache"
    )
    if s.parent_extra:
        summary += (
            f"; peaks include the {format_bytes(s.parent_extra)} this process holds beyond a "
            "trial process (data readers), which fit's process holds too"
        )
    return summary


SLOPE_BATCHES = (8, 64)


def slope_from_cpu(model: Any, s: Setup, prior: MemoryCurve) -> tuple[MemoryCurve, list[Trial]]:
    """A device curve for a GPU this machine lacks: the prior's fixed part (context, weights,
    gradients, optimizer) and the per-sample growth measured by two CPU trials."""
    with contextlib.ExitStack() as stack:
        model_arg = _trial_model(model, stack)
        if model_arg is None:
            return prior, []
        trial_spec = TrialSpec(model_arg, s.feeds, s.accumulation, "cpu", num_samples=None)
        trials = []
        for batch in SLOPE_BATCHES:
            hit = s.cache.get(batch, child_share(s))
            trial = hit or run_trial(trial_spec, batch, limit_bytes=s.limit_bytes)
            s.cache.put(trial)
            trials.append(trial)
    (b0, p0), (b1, p1) = ((t.batch_size, t.peak_bytes) for t in trials)
    slope = max(prior.per_sample_bytes // 4, (p1 - p0) // (b1 - b0))
    return MemoryCurve(prior.fixed_bytes, slope, "analytic"), trials
