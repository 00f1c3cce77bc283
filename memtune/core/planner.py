"""The :class:`Planner`: everything a plan needs but the memory curve — the budget, the
training samples, one sample's bytes, the options, the reasons so far — carried down to the
estimators, which plan on each curve they measure."""

from __future__ import annotations

from dataclasses import dataclass, replace

from memtune.core.budget import Budget
from memtune.core.choose import make_plan, usable_bytes
from memtune.core.curve import MemoryCurve, Trial
from memtune.core.pipeline_memory import Mode
from memtune.core.plan import Plan, PlanOptions

# A measured plan aims at this share of the usable budget, not all of it: ``fit``'s long run
# peaks 1-4 % above a few-step trial (bench_estimate), and a verification aimed at the very
# edge overshoots often, spending a trial to step down.
MEASURED_AIM = 0.95


@dataclass(frozen=True)
class Planner:
    """Everything a plan needs but the memory curve: the budget, the training samples, one
    sample's bytes, the options and the reasons gathered so far. Handed down to the
    estimators, which plan on each curve they measure (:meth:`plan`)."""

    budget: Budget
    num_samples: int
    per_sample_bytes: int
    options: PlanOptions
    notes: tuple[str, ...] = ()

    @property
    def usable_bytes(self) -> int:
        return usable_bytes(self.budget, self.options.safety)

    def noted(self, *lines: str) -> Planner:
        return replace(self, notes=(*self.notes, *lines))

    def plan(
        self,
        curve: MemoryCurve,
        verified: int | None = None,
        *,
        notes: list[str] | None = None,
        within: int | None = None,
        scale: tuple[float, ...] | None = None,
        together: int = 0,
    ) -> Plan:
        """The plan on ``curve``. ``verified``: the largest batch the trials support;
        ``within``: a tighter bound (bytes) for a measured choice; ``scale``: the buckets'
        measured memory shares; ``together``: every bucket's shapes measured in one process;
        ``notes``: reasons in place of the planner's own."""
        aim = MEASURED_AIM if curve.source == "measured" else 1.0
        if within is not None and curve.source == "measured":
            aim = min(aim, within / self.usable_bytes)
        chosen = replace(self.options, verified_cap=verified, aim=aim)
        if scale is not None:
            chosen = replace(chosen, bucket_scale=scale, buckets_together=together)
        return make_plan(
            self.budget,
            curve,
            num_samples=self.num_samples,
            per_sample_bytes=self.per_sample_bytes,
            options=chosen,
            notes=list(self.notes) if notes is None else notes,
        )

    def at(
        self, batch_size: int, mode: Mode | None, curve: MemoryCurve, trials: list[Trial]
    ) -> Plan:
        """The plan for a given batch (and mode) on ``curve``: what ``check`` judges."""
        forced = replace(self.options, batch_size=batch_size, mode=mode, force=True)
        return make_plan(
            self.budget,
            curve,
            num_samples=self.num_samples,
            per_sample_bytes=self.per_sample_bytes,
            options=forced,
            trials=trials,
            notes=list(self.notes),
        )
