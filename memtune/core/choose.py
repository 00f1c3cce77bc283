"""Choosing a plan: from a budget, a memory curve and the data's size to a batch, a data mode
and length buckets, in named stages (:func:`make_plan`).

Pure: no TensorFlow, no I/O. Every number is an int of bytes; ``reasons`` say why in words.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from memtune.core.bucket_batches import MIN_STEPS, bucket_batches, bucketed_rows
from memtune.core.budget import Budget
from memtune.core.constants import (
    BUCKET_INDEX_BYTES_PER_SAMPLE,
    NOISE_FLOOR,
    NOISE_SHARE,
)
from memtune.core.curve import MemoryCurve, Trial
from memtune.core.errors import MemtuneError, NothingFits
from memtune.core.pipeline_memory import Mode, pipeline_bytes
from memtune.core.plan import Bucket, Plan, PlanOptions, _padding_cut
from memtune.core.refusals import forced_refused, in_memory_refused, nothing_fits
from memtune.core.units import format_bytes


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def usable_bytes(budget: Budget, safety: float) -> int:
    """The budget less its safety margin."""
    return int(budget.budget_bytes * (1 - safety))


@dataclass(frozen=True)
class _Ask:
    """One plan being made: the inputs every stage of :func:`make_plan` reads."""

    budget: Budget
    curve: MemoryCurve
    num_samples: int
    per_sample_bytes: int
    options: PlanOptions

    @property
    def gpu(self) -> bool:
        return self.budget.device != "cpu"

    @property
    def usable(self) -> int:
        return usable_bytes(self.budget, self.options.safety)

    @property
    def dataset(self) -> int:
        return self.num_samples * self.per_sample_bytes

    def host_extra(self, mode: Mode, batch: int) -> int:
        """What the data pipeline holds in host memory beside training."""
        o = self.options
        index = BUCKET_INDEX_BYTES_PER_SAMPLE * self.num_samples if o.buckets else 0
        return index + pipeline_bytes(
            mode,
            batch * o.local_replicas,
            num_samples=self.num_samples + o.held_out,
            per_sample_bytes=self.per_sample_bytes,
            with_queue=self.curve.source == "analytic",
            whole_blocks=o.whole_blocks,
            blocks=o.blocks,
        )

    def extra(self, mode: Mode) -> Callable[[int], int]:
        """The pipeline's share of the budget: on the CPU all of it; on a GPU none (it lives
        in host RAM)."""
        return lambda b: 0 if self.gpu else self.host_extra(mode, b)

    def search_extra(self, b: int) -> int:
        """The batch is the largest that fits in some mode: the forced one, else whichever
        holds less there (streaming, unless decoding Parquet row groups costs more)."""
        if self.options.mode is not None:
            return self.extra(self.options.mode)(b)
        return min(self.extra("streaming")(b), self.extra("in-memory")(b))


@dataclass(frozen=True)
class _Bound:
    """Where the memory bound put the batch."""

    batch: int
    accumulation: int
    largest_safe: int
    fits: int  # the memory bound in samples (0 for a forced batch)


def make_plan(
    budget: Budget,
    curve: MemoryCurve,
    *,
    num_samples: int,
    per_sample_bytes: int,
    options: PlanOptions,
    trials: list[Trial] | None = None,
    notes: list[str] | None = None,
) -> Plan:
    """The largest batch whose predicted peak stays under the usable budget, and the mode."""
    _validate(options)
    ask = _Ask(budget, curve, num_samples, per_sample_bytes, options)
    reasons = [*_opening(ask), *(notes or [])]
    bound = _forced(ask, reasons) if options.batch_size is not None else _bounded(ask, reasons)
    mode = _mode(ask, bound.batch, reasons)
    if options.strategy != "none":
        where = f" over {options.workers} workers" if options.workers > 1 else ""
        reasons.append(
            f"{options.strategy} strategy, {options.replicas} replicas{where}: batch "
            f"{bound.batch} per replica, global batch {bound.batch * options.replicas}"
        )
    buckets = _buckets(ask, bound, mode, reasons)
    predicted = _predicted(ask, bound.batch, mode, reasons, bucketed_rows(buckets, options))
    if options.batch_size is not None and predicted > ask.usable and not options.force:
        raise NothingFits(
            forced_refused(
                bound.batch,
                bound.largest_safe,
                options.effective_batch_size or bound.batch,
                (predicted, ask.usable),
                measured=curve.source == "measured",
            )
        )
    return Plan(
        batch_size=bound.batch,
        gradient_accumulation_steps=bound.accumulation,
        mode=mode,
        device=budget.device,
        budget_bytes=budget.budget_bytes,
        usable_bytes=ask.usable,
        num_samples=num_samples,
        per_sample_bytes=per_sample_bytes,
        predicted_peak_bytes=predicted,
        trials=list(trials or []),
        reasons=reasons,
        largest_safe_batch_size=bound.largest_safe,
        buckets=buckets,
        pad_length=options.pad_length if buckets else 0,
        real_tokens=options.real_tokens if buckets else 0,
        strategy=options.strategy,
        replicas=options.replicas,
        workers=options.workers,
        worker_index=options.worker_index,
        batch_size_forced=options.batch_size is not None,
        curve=curve,
    )


def _validate(options: PlanOptions) -> None:
    if not 0 <= options.safety < 1:
        raise MemtuneError(f"--safety {options.safety}: must be in [0, 1)")
    for flag, value in (
        ("--batch-size", options.batch_size),
        ("--max-batch-size", options.max_batch_size),
        ("--effective-batch-size", options.effective_batch_size),
    ):
        if value is not None and value < 1:
            raise MemtuneError(f"{flag} {value}: must be a positive integer")


def _opening(ask: _Ask) -> list[str]:
    """The budget and the data, in words."""
    o = ask.options
    held = f" ({o.held_out:,} more held out for validation)" if o.held_out else ""
    return [
        f"budget {format_bytes(ask.budget.budget_bytes)} ({ask.budget.source}) less a "
        f"{o.safety:.0%} safety margin: {format_bytes(ask.usable)} usable on {ask.budget.device}",
        f"one sample is {ask.per_sample_bytes:,} B{' after padding' * o.has_sequences}; "
        f"{ask.num_samples:,} training samples are {format_bytes(ask.dataset)}{held}",
    ]


def _forced(ask: _Ask, reasons: list[str]) -> _Bound:
    """``--batch-size``: that batch (with the accumulation an effective batch asks for)."""
    o = ask.options
    assert o.batch_size is not None
    accumulation = 1
    if o.effective_batch_size is not None:
        accumulation = max(1, -(-o.effective_batch_size // o.batch_size))
    reasons.append(f"batch {o.batch_size} forced by --batch-size")
    largest = max(0, min(ask.curve.largest_batch(ask.usable, ask.search_extra), ask.num_samples))
    return _Bound(o.batch_size, accumulation, largest, 0)


def _fits(ask: _Ask) -> int:
    """The largest batch memory allows (at the aim for a measured curve), or NothingFits."""
    o, curve, usable = ask.options, ask.curve, ask.usable
    fits = curve.largest_batch(usable, ask.search_extra)
    if fits >= 1 and o.aim < 1:
        fits = max(1, curve.largest_batch(int(usable * o.aim), ask.search_extra))
    if fits < 1 and o.mode == "in-memory":
        fits = curve.largest_batch(usable, ask.extra("streaming"))
        if fits >= 1 and not o.force:
            need = curve.peak(1) + ask.extra("in-memory")(1)
            raise NothingFits(in_memory_refused(need, usable, ask.dataset))
    if fits < 1:
        need = curve.peak(1) + ask.search_extra(1)
        raise NothingFits(nothing_fits(need, usable, o, ask.gpu))
    return fits


def _bounded(ask: _Ask, reasons: list[str]) -> _Bound:
    """The memory bound, then the caps (dataset, step floor, --max-batch-size, effective
    batch, what the trials support), each with its reason; accumulation last."""
    o = ask.options
    fits = _fits(ask)
    whole = -(-ask.num_samples // o.replicas)  # the dataset in one step per replica
    largest_safe = min(fits, whole, _measured_reach(ask) or whole)
    caps = [(whole, "the dataset's size")]
    floor = f"keeping at least {MIN_STEPS} steps per epoch"
    if o.max_batch_size is not None:
        caps.append((o.max_batch_size, "--max-batch-size"))
    else:
        caps.append((max(1, ask.num_samples // (MIN_STEPS * o.replicas)), floor))
    if o.effective_batch_size is not None:
        caps.append((o.effective_batch_size, "--effective-batch-size"))
    if o.verified_cap is not None:
        caps.append((o.verified_cap, "what the trials support"))
    cap, why = min(caps, key=lambda c: c[0])
    batch = min(fits, cap)
    reasons.extend(_cap_reasons(o, fits, cap, why, batch, largest_safe, floor))
    accumulation = 1
    if o.effective_batch_size is not None and o.effective_batch_size > batch:
        target = o.effective_batch_size
        batch = _largest_divisor_at_most(target, batch)
        accumulation = target // batch
        reasons.append(
            f"--effective-batch-size {target:,}: batch {batch:,} × {accumulation} accumulation "
            "steps"
        )
    return _Bound(batch, accumulation, largest_safe, fits)


def _measured_reach(ask: _Ask) -> int | None:
    """On a measured curve, the largest batch ``largest_safe_batch_size`` may report: the
    largest batch measured to fit, plus what one measured slope leaves room for past it —
    the steeper of the line from the smallest trial and the last segment. Growth inside
    the trials' noise is no slope: then the batch measured is the answer (flat or falling
    trials once reported the whole dataset). None: no trial fitted, or the curve is not
    measured."""
    curve = ask.curve
    if curve.source != "measured":
        return None
    fitted = [(b, p) for b, p in curve.points if p + ask.search_extra(b) <= ask.usable]
    whole = curve.whole
    if whole is not None and whole[1] + ask.search_extra(whole[0]) <= ask.usable:
        return whole[0]  # the whole dataset measured to fit: nothing past it is asked for
    if not fitted:
        return None
    top, at_top = fitted[-1]
    below = [(b, p) for b, p in curve.points if b < top]
    if not below:
        return top
    (first, at_first), (last, at_last) = below[0], below[-1]
    if at_top - at_first <= max(NOISE_FLOOR, int(NOISE_SHARE * at_top)):
        return top
    slope = max((at_top - at_first) / (top - first), (at_top - at_last) / (top - last))
    line = MemoryCurve(0, math.ceil(slope), "measured", points=((top, at_top),))
    return max(top, line.largest_batch(ask.usable, ask.search_extra))


def _cap_reasons(
    o: PlanOptions, fits: int, cap: int, why: str, batch: int, largest_safe: int, floor: str
) -> list[str]:
    """Why the batch is what it is: a cap, or the memory bound itself."""
    if fits > cap and why == "what the trials support":
        # The curve past the trials is a line nobody measured: it may hold a cliff.
        return [
            f"the curve fitted to the trials allows more than {cap:,}; batch {cap:,} is "
            "capped by what the trials support (no batch past it is measured to fit)"
        ]
    if fits > cap:
        out = [f"more than {cap:,} would fit; batch {cap:,} is capped by {why}"]
        if why == floor:
            verified = o.verified_cap
            how = (
                f"; the trials support up to {verified:,}"
                if verified is not None and verified < largest_safe
                else ""
            )
            out.append(
                f"the memory allows batch {largest_safe:,} (largest_safe_batch_size{how}); "
                f"--max-batch-size N lifts the {MIN_STEPS}-step floor"
            )
        return out
    if o.aim < 1:
        return [
            f"batch {batch:,} is the largest whose predicted peak fits in {o.aim:.0%} of "
            "usable: room for fit's longer run (measured 1-4 % above a short trial)"
        ]
    return [f"batch {batch:,} is the largest whose predicted peak fits"]


def _mode(ask: _Ask, batch: int, reasons: list[str]) -> Mode:
    """In memory when the padded dataset plus training fits, else streaming (or forced)."""
    o, dataset = ask.options, ask.dataset
    padded = "padded " * o.has_sequences
    in_memory_peak = ask.curve.peak(batch) + ask.extra("in-memory")(batch)
    if ask.gpu:
        in_memory_fits = ask.host_extra("in-memory", batch) <= ask.budget.host_available_bytes // 2
    else:
        in_memory_fits = in_memory_peak <= ask.usable
    if o.mode is not None:
        if o.mode == "in-memory" and not in_memory_fits and not o.force:
            raise NothingFits(in_memory_refused(in_memory_peak, ask.usable, dataset))
        reasons.append(f"{o.mode} forced by {o.mode_why}")
        return o.mode
    if in_memory_fits:
        reasons.append(
            f"in-memory: the {padded}dataset ({format_bytes(dataset)}) plus training fits"
        )
        return "in-memory"
    reasons.append(
        f"streaming: the {padded}dataset ({format_bytes(dataset)}) plus training would not fit;"
        " shards are read and padded one batch at a time"
    )
    return "streaming"


def _buckets(ask: _Ask, bound: _Bound, mode: Mode, reasons: list[str]) -> list[Bucket]:
    """Each length bucket's batch, with the reason lines."""
    o = ask.options
    if not o.buckets or o.batch_size is not None:
        return []
    buckets = bucket_batches(bound.batch, bound.fits, mode, ask.num_samples, o)
    sizes = ", ".join(f"{b.length}: {b.batch_size:,}" for b in buckets)
    cut = _padding_cut(buckets, o.pad_length, o.real_tokens)
    if len({b.batch_size for b in buckets}) > 1:
        how = "measured" if ask.curve.source == "measured" else "tokens, unverified"
        grows = f"a shorter bucket's batch is larger, as its samples take less memory ({how})"
    else:
        grows = f"every bucket trains at the longest bucket's batch, {bound.batch:,}"
        if o.max_batch_size is not None and bound.batch >= o.max_batch_size:
            grows = f"every bucket trains at batch {bound.batch:,} (--max-batch-size)"
    reasons.append(
        f"{len(buckets)} length buckets (length: batch) {sizes}; {grows}; {cut:.0%} of the "
        "padding is gone"
    )
    reasons.append(
        f"each row weighs what it would at batch {bound.batch:,} without buckets: a bucket "
        f"batch of n rows has its loss weighted by n / {bound.batch:,} (a per-row sample weight)"
    )
    return buckets


def _predicted(
    ask: _Ask, batch: int, mode: Mode, reasons: list[str], rows: int | None = None
) -> int:
    """The predicted peak, with its noise (measured) or its word of caution (analytic);
    ``rows``: what the largest bucketed batch holds, in full-length samples."""
    alone = ask.curve.peak(min(batch, rows or batch))
    together = ask.options.buckets_together if rows else 0
    if together > alone:
        reasons.append(
            f"buckets: every bucket's batches trained one after another in one trial process "
            f"peaked at {format_bytes(together)}, over the {format_bytes(alone)} of the worst "
            "bucket alone (each new batch shape adds memory TensorFlow keeps): the prediction "
            "uses it"
        )
    predicted = max(alone, together) + ask.extra(mode)(batch)
    if ask.curve.source == "measured":
        noise = max(NOISE_FLOOR, int(NOISE_SHARE * predicted))
        reasons.append(
            f"predicted training peak {format_bytes(predicted)} ± {format_bytes(noise)} "
            "(fitted to measured trials; ± is how much trials of one batch differ between runs)"
        )
    else:
        reasons.append(f"predicted training peak {format_bytes(predicted)} (analytic, unverified)")
    if predicted > ask.usable:
        reasons.append(
            "warning: predicted peak is over the usable budget by "
            f"{format_bytes(predicted - ask.usable)}"
        )
    return predicted
