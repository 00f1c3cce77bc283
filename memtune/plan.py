"""The Plan: from a probe, a footprint and a memory curve to a batch size and a data mode.

Pure: no TensorFlow, no I/O. Every number is an int of bytes; ``reasons`` say why in words.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from memtune.constants import (
    BLOCK_ROWS,
    BUCKET_INDEX_BYTES_PER_SAMPLE,
    DECODE_FACTOR,
    INDEX_BYTES_PER_SAMPLE,
    NOISE_FLOOR,
    NOISE_SHARE,
    STREAM_QUEUE_BATCHES,
    WORKERS,
)
from memtune.errors import MemtuneError, NothingFits
from memtune.estimate.curve import MemoryCurve
from memtune.probe import Probe
from memtune.units import format_bytes

MIN_STEPS = 16  # a default plan keeps at least this many training steps per epoch

Mode = Literal["in-memory", "streaming"]


@dataclass(frozen=True)
class Trial:
    """One measured training run: its batch and the peak it reached.

    ``exceeded``: the run passed its limit and was stopped, so the true peak is higher.
    """

    batch_size: int
    peak_bytes: int
    exceeded: bool = False
    length: int | None = None  # a length bucket's trial: the input padded to this, not all


@dataclass(frozen=True)
class Bucket:
    """One length bucket: rows up to ``length`` long, padded to it, trained ``batch_size``
    at a time; ``samples`` of the training rows fall in it."""

    length: int
    batch_size: int
    samples: int


@dataclass(frozen=True)
class Budget:
    """The memory a plan must stay under, and where that number came from."""

    device: str
    budget_bytes: int
    source: str
    host_available_bytes: int  # for the dataset, which lives in host RAM even on a GPU


@dataclass(frozen=True)
class PlanOptions:
    """The options that shape a plan (CLI flags in snake_case)."""

    safety: float = 0.10
    effective_batch_size: int | None = None
    max_batch_size: int | None = None
    batch_size: int | None = None
    mode: Mode | None = None
    mode_why: str = "--mode"  # what forced ``mode``, for the reason line
    force: bool = False
    has_sequences: bool = False
    verified_cap: int | None = None  # the largest batch the trials support (search.REACH)
    aim: float = 1.0  # choose the largest batch predicted to fit in this share of usable
    local_replicas: int = 1  # replicas this process feeds: its pipeline holds their batches
    held_out: int = 0  # validation rows loaded beside the training samples (in-memory)
    # Streaming from Parquet: row groups read whole (fewest rows, most rows, most bytes
    # decoding one takes), which the pipeline caches and decodes beside training.
    whole_blocks: tuple[int, int, int] = (0, 0, 0)
    strategy: str = "none"
    replicas: int = 1  # in sync, over every worker
    workers: int = 1
    worker_index: int = 0
    # Length buckets of the one None-length input: (length, samples) ascending, the last
    # the longest row; ``bucket_scale[k]``: one sample of bucket k's memory growth as a
    # share of one at the full padded length (measured, or tokens when unverified).
    buckets: tuple[tuple[int, int], ...] = ()
    bucket_scale: tuple[float, ...] = ()
    pad_length: int = 0  # what every row is padded to without buckets
    real_tokens: int = 0  # the bucketed input's tokens that are not padding, per epoch


@dataclass(frozen=True)
class Plan:
    """What memtune suggests; ``to_json`` is the contract's ``suggest --json``.

    Attributes: ``batch_size`` (per replica) and ``gradient_accumulation_steps`` (their
    product is ``effective_batch_size``); ``mode`` (``"in-memory"`` | ``"streaming"``);
    ``device``; ``budget_bytes`` and ``usable_bytes`` (budget less the safety margin);
    ``num_samples`` and ``per_sample_bytes`` (all inputs and targets of one padded sample;
    ``dataset_bytes`` is their product); ``predicted_peak_bytes`` (the whole training
    process: host RSS on cpu, device memory on gpu); ``trials`` (measured runs);
    ``reasons`` (why, one line each); ``largest_safe_batch_size`` (the memory bound alone,
    before the 16-steps-per-epoch floor); ``strategy``, ``replicas``, ``workers`` and
    ``worker_index`` (tf.distribute; ``global_batch_size`` = batch × replicas).
    """

    batch_size: int
    gradient_accumulation_steps: int
    mode: Mode
    device: str
    budget_bytes: int
    usable_bytes: int
    num_samples: int
    per_sample_bytes: int
    predicted_peak_bytes: int
    trials: list[Trial] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    strategy: str = "none"
    replicas: int = 1
    workers: int = 1
    worker_index: int = 0
    largest_safe_batch_size: int = 0  # the memory bound alone, before the step floor
    buckets: list[Bucket] = field(default_factory=list)  # by length; [] when not bucketed
    pad_length: int = 0  # the bucketed input's length without buckets
    real_tokens: int = 0  # its tokens that are not padding, per epoch

    @property
    def tokens(self) -> tuple[int, int]:
        """Tokens of the bucketed input fed per epoch (real and padding): without buckets,
        with them."""
        return _tokens(self.buckets, self.pad_length)

    @property
    def padding_cut(self) -> float:
        """The share of padding tokens the buckets remove."""
        return _padding_cut(self.buckets, self.pad_length, self.real_tokens)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    @property
    def global_batch_size(self) -> int:
        """Samples one training step takes over every replica (``batch_size`` is per replica)."""
        return self.batch_size * self.replicas

    @property
    def dataset_bytes(self) -> int:
        return self.num_samples * self.per_sample_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "effective_batch_size": self.effective_batch_size,
            "mode": self.mode,
            "device": self.device,
            "budget_bytes": self.budget_bytes,
            "usable_bytes": self.usable_bytes,
            "num_samples": self.num_samples,
            "per_sample_bytes": self.per_sample_bytes,
            "dataset_bytes": self.dataset_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "trials": [
                {"batch_size": t.batch_size, "peak_bytes": t.peak_bytes, "exceeded": t.exceeded}
                | ({"length": t.length} if t.length is not None else {})
                for t in self.trials
            ],
            "reasons": list(self.reasons),
            "strategy": self.strategy,
            "replicas": self.replicas,
            "global_batch_size": self.global_batch_size,
            "workers": self.workers,
            "worker_index": self.worker_index,
            "largest_safe_batch_size": self.largest_safe_batch_size,
        } | (
            {
                "buckets": [
                    {"length": b.length, "batch_size": b.batch_size, "samples": b.samples}
                    for b in self.buckets
                ],
                "tokens": {
                    "real": self.real_tokens,
                    "without_buckets": self.tokens[0],
                    "with_buckets": self.tokens[1],
                },
            }
            if self.buckets
            else {}
        )


def resolve_device(probe: Probe, device: str, *, virtual: bool = False) -> str:
    """``auto`` → the GPU with most free memory, else ``cpu``; ``gpu`` → likewise but required.

    ``virtual`` (``--gpu-memory``): a GPU may be named that this machine does not have.
    """
    device = device.strip().lower()
    if device == "cpu":
        return "cpu"
    if virtual and not probe.gpus and (device == "gpu" or device.startswith("gpu:")):
        return "gpu:0" if device == "gpu" else device
    if device in ("auto", "gpu"):
        if probe.gpus:
            best = max(probe.gpus, key=lambda g: (g.free_bytes, -g.index))
            return f"gpu:{best.index}"
        if device == "gpu":
            raise MemtuneError("--device gpu: no GPU is visible (NVML found none)")
        return "cpu"
    if device.startswith("gpu:") and device[4:].isdigit():
        index = int(device[4:])
        if not any(g.index == index for g in probe.gpus):
            seen = ", ".join(f"gpu:{g.index}" for g in probe.gpus) or "none"
            raise MemtuneError(f"--device {device}: no such GPU (visible: {seen})")
        return f"gpu:{index}"
    raise MemtuneError(f"--device {device!r}: expected auto, cpu, gpu or gpu:N")


def resolve_budget(
    probe: Probe, device: str, budget_bytes: int | None, source: str = "--budget"
) -> Budget:
    """The budget for ``device``: as given, or ``auto`` (what is free there now).

    On the CPU the budget bounds the memory memtune's process tree holds (anonymous and
    shared pages, page tables: :mod:`memtune.probe.process`). ``auto`` is what the host
    (or the memory cgroup) has available less the reserve it must keep, plus what memtune
    already holds. A given budget above that is clipped to it, and the source says so: a
    budget the machine cannot honour would only let the plan run into the kernel.
    """
    host = probe.host
    if device == "cpu":
        can_give = host.can_give
        reserve = format_bytes(host.reserve_bytes)
        if budget_bytes is not None and budget_bytes > can_give:
            return Budget(
                device,
                can_give,
                f"{source} {format_bytes(budget_bytes)} clipped to what the host can give: "
                f"{format_bytes(host.available_bytes)} available less the {reserve} reserve, "
                f"+ {format_bytes(host.process_bytes)} memtune holds",
                host.available_bytes,
            )
        if budget_bytes is not None:
            return Budget(device, budget_bytes, source, host.available_bytes)
        where = "available host memory" + (
            " (capped by the cgroup limit)" if host.limit_bytes is not None else ""
        )
        return Budget(device, can_give, f"{where} less the {reserve} reserve", host.available_bytes)
    if budget_bytes is not None:
        return Budget(device, budget_bytes, source, host.available_bytes)
    index = int(device.split(":")[1])
    gpu = next(g for g in probe.gpus if g.index == index)
    return Budget(
        device, gpu.free_bytes, f"free memory of {device} ({gpu.name})", host.available_bytes
    )


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def pipeline_bytes(
    mode: Mode,
    batch: int,
    *,
    num_samples: int,
    per_sample_bytes: int,
    with_queue: bool,
    whole_blocks: tuple[int, int, int] = (0, 0, 0),
) -> int:
    """Host memory the data pipeline holds beside training at this batch.

    In-memory: the padded dataset and its shuffle index. Streaming: the cache of padded
    blocks (never more than the dataset): the blocks of the batches the builders are
    building, each batch's rows plus a block running on at its end, and the block read ahead
    (blocks no batch still to come reads are dropped; counted at the cache's capacity, a
    40,044-row stream was predicted 8.9 % over its fit). Parquet row groups are read whole:
    each batch builder and the read-ahead may be decoding one (at ``DECODE_FACTOR`` times its
    size, however small the group: an 8,192-row stream ran 8-16 % over a plan without it),
    and with row groups larger than a batch the cache holds as many of them as a batch spans
    plus three (``StreamingBatches.capacity``). A trial trains on rows handed to it, not
    through this reader, so the whole term is added to measured plans too. ``with_queue``
    adds the prefetched batches, which a measured trial already includes and the analytic
    prior does not.
    """
    dataset = num_samples * per_sample_bytes
    queue = STREAM_QUEUE_BATCHES * batch * per_sample_bytes if with_queue else 0
    if mode == "in-memory":
        return dataset + num_samples * INDEX_BYTES_PER_SAMPLE + queue
    smallest, largest, decoded = whole_blocks
    block = largest or max(BLOCK_ROWS, batch)  # a row group, or a block of CSV rows
    cache = (WORKERS * batch + (WORKERS + 1) * block) * per_sample_bytes
    if largest > max(BLOCK_ROWS, batch):
        held = (math.ceil(batch / max(smallest, 1)) + 3) * largest * per_sample_bytes
        cache = max(cache, held)
    decoding = (WORKERS + 1) * DECODE_FACTOR * decoded
    return min(dataset, cache) + decoding + queue


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
    if not 0 <= options.safety < 1:
        raise MemtuneError(f"--safety {options.safety}: must be in [0, 1)")
    for flag, value in (
        ("--batch-size", options.batch_size),
        ("--max-batch-size", options.max_batch_size),
        ("--effective-batch-size", options.effective_batch_size),
    ):
        if value is not None and value < 1:
            raise MemtuneError(f"{flag} {value}: must be a positive integer")
    gpu = budget.device != "cpu"
    usable = int(budget.budget_bytes * (1 - options.safety))
    dataset = num_samples * per_sample_bytes

    index = BUCKET_INDEX_BYTES_PER_SAMPLE * num_samples if options.buckets else 0

    def host_extra(mode: Mode, batch: int) -> int:
        return index + pipeline_bytes(
            mode,
            batch * options.local_replicas,
            num_samples=num_samples + options.held_out,
            per_sample_bytes=per_sample_bytes,
            with_queue=curve.source == "analytic",
            whole_blocks=options.whole_blocks,
        )

    def extra(mode: Mode) -> Callable[[int], int]:
        # On the CPU the pipeline shares the budget; on a GPU it lives in host RAM.
        return lambda b: 0 if gpu else host_extra(mode, b)

    reasons = [
        f"budget {format_bytes(budget.budget_bytes)} ({budget.source}) less a "
        f"{options.safety:.0%} safety margin: {format_bytes(usable)} usable on {budget.device}",
        f"one sample is {per_sample_bytes:,} B after padding; {num_samples:,} training samples "
        f"are {format_bytes(dataset)}"
        + (f" ({options.held_out:,} more held out for validation)" if options.held_out else ""),
        *(notes or []),
    ]

    # The batch is the largest that fits in some mode: the forced one, else whichever holds
    # less there (streaming, unless decoding Parquet row groups costs more than the data).
    def search_extra(b: int) -> int:
        if options.mode is not None:
            return extra(options.mode)(b)
        return min(extra("streaming")(b), extra("in-memory")(b))

    fits = 0
    if options.batch_size is not None:
        batch = options.batch_size
        accumulation = 1
        if options.effective_batch_size is not None:
            accumulation = max(1, -(-options.effective_batch_size // batch))
        reasons.append(f"batch {batch} forced by --batch-size")
        largest_safe = max(0, min(curve.largest_batch(usable, search_extra), num_samples))
    else:
        fits = curve.largest_batch(usable, search_extra)
        if fits >= 1 and options.aim < 1:
            fits = max(1, curve.largest_batch(int(usable * options.aim), search_extra))
        if fits < 1 and options.mode == "in-memory":
            fits = curve.largest_batch(usable, extra("streaming"))
            if fits >= 1 and not options.force:
                raise NothingFits(
                    _in_memory_refused(curve.peak(1) + extra("in-memory")(1), usable, dataset)
                )
        if fits < 1:
            need = curve.peak(1) + search_extra(1)
            raise NothingFits(_nothing_fits(need, usable, options, gpu))
        whole = -(-num_samples // options.replicas)  # the dataset in one step per replica
        largest_safe = min(fits, whole)  # the memory bound alone
        caps = [(whole, "the dataset's size")]
        floor = f"keeping at least {MIN_STEPS} steps per epoch"
        if options.max_batch_size is not None:
            caps.append((options.max_batch_size, "--max-batch-size"))
        else:
            caps.append((max(1, num_samples // (MIN_STEPS * options.replicas)), floor))
        if options.effective_batch_size is not None:
            caps.append((options.effective_batch_size, "--effective-batch-size"))
        if options.verified_cap is not None:
            caps.append((options.verified_cap, "what the trials support"))
        cap, cap_why = min(caps, key=lambda c: c[0])
        batch = min(fits, cap)
        if fits > cap and cap_why == "what the trials support":
            # The curve past the trials is a line nobody measured: it may hold a cliff.
            reasons.append(
                f"the curve fitted to the trials allows more than {cap:,}; batch {cap:,} is "
                "capped by what the trials support (no batch past it is measured to fit)"
            )
        elif fits > cap:
            reasons.append(f"more than {cap:,} would fit; batch {cap:,} is capped by {cap_why}")
            if cap_why == floor:
                verified = options.verified_cap
                how = (
                    f"; the trials support up to {verified:,}"
                    if verified is not None and verified < largest_safe
                    else ""
                )
                reasons.append(
                    f"the memory allows batch {largest_safe:,} (largest_safe_batch_size{how}); "
                    f"--max-batch-size N lifts the {MIN_STEPS}-step floor"
                )
        elif options.aim < 1:
            reasons.append(
                f"batch {batch:,} is the largest whose predicted peak fits in {options.aim:.0%} "
                "of usable: room for fit's longer run (measured 1-4 % above a short trial)"
            )
        else:
            reasons.append(f"batch {batch:,} is the largest whose predicted peak fits")
        accumulation = 1
        if options.effective_batch_size is not None and options.effective_batch_size > batch:
            target = options.effective_batch_size
            batch = _largest_divisor_at_most(target, batch)
            accumulation = target // batch
            reasons.append(
                f"--effective-batch-size {target}: batch {batch} × {accumulation} accumulation "
                "steps"
            )

    peak = curve.peak(batch)
    in_memory_peak = peak + extra("in-memory")(batch)
    if gpu:
        in_memory_fits = host_extra("in-memory", batch) <= budget.host_available_bytes // 2
    else:
        in_memory_fits = in_memory_peak <= usable
    if options.mode is not None:
        mode = options.mode
        if mode == "in-memory" and not in_memory_fits and not options.force:
            raise NothingFits(_in_memory_refused(in_memory_peak, usable, dataset))
        reasons.append(f"{mode} forced by {options.mode_why}")
    elif in_memory_fits:
        mode = "in-memory"
        reasons.append(
            f"in-memory: the padded dataset ({format_bytes(dataset)}) plus training fits"
        )
    else:
        mode = "streaming"
        reasons.append(
            f"streaming: the padded dataset ({format_bytes(dataset)}) plus training would not fit;"
            " shards are read and padded one batch at a time"
        )
    if options.strategy != "none":
        where = f" over {options.workers} workers" if options.workers > 1 else ""
        reasons.append(
            f"{options.strategy} strategy, {options.replicas} replicas{where}: batch {batch} per "
            f"replica, global batch {batch * options.replicas}"
        )
    buckets: list[Bucket] = []
    if options.buckets and options.batch_size is None:
        buckets = _bucket_batches(batch, fits, mode, num_samples, options)
        sizes = ", ".join(f"{b.length}: {b.batch_size:,}" for b in buckets)
        how = "measured" if curve.source == "measured" else "tokens, unverified"
        cut = _padding_cut(buckets, options.pad_length, options.real_tokens)
        reasons.append(
            f"{len(buckets)} length buckets (length: batch) {sizes}; each bucket's batch grows "
            f"as its samples' memory shrinks ({how}); {cut:.0%} of the padding is gone"
        )
        reasons.append(
            "Keras averages the loss over each batch: a step of a short bucket weighs as much "
            "as one of the longest, so a short row counts for less per sample"
        )
    predicted = peak + extra(mode)(batch)
    if curve.source == "measured":
        noise = max(NOISE_FLOOR, int(NOISE_SHARE * predicted))
        reasons.append(
            f"predicted training peak {format_bytes(predicted)} ± {format_bytes(noise)} "
            "(fitted to measured trials; ± is how much trials of one batch differ between runs)"
        )
    else:
        reasons.append(f"predicted training peak {format_bytes(predicted)} (analytic, unverified)")
    if predicted > usable:
        reasons.append(
            "warning: predicted peak is over the usable budget by "
            f"{format_bytes(predicted - usable)}"
        )
    return Plan(
        batch_size=batch,
        gradient_accumulation_steps=accumulation,
        mode=mode,
        device=budget.device,
        budget_bytes=budget.budget_bytes,
        usable_bytes=usable,
        num_samples=num_samples,
        per_sample_bytes=per_sample_bytes,
        predicted_peak_bytes=predicted,
        trials=list(trials or []),
        reasons=reasons,
        largest_safe_batch_size=largest_safe,
        buckets=buckets,
        pad_length=options.pad_length if buckets else 0,
        real_tokens=options.real_tokens if buckets else 0,
        strategy=options.strategy,
        replicas=options.replicas,
        workers=options.workers,
        worker_index=options.worker_index,
    )


def _bucket_batches(
    batch: int, fits: int, mode: Mode, num_samples: int, options: PlanOptions
) -> list[Bucket]:
    """Each bucket's batch: as many of its samples as take the memory the longest bucket's
    batch may take — the memory bound (``fits`` samples at the full length), the trials'
    reach and the step floor, each divided by the bucket's memory share — then capped by
    ``--max-batch-size``, the bucket's own samples and, when streaming, the block a batch
    is cut from. Never below the longest bucket's batch."""
    equal = [fits]  # in samples at the full length
    plain = []  # in samples of the bucket
    if options.verified_cap is not None:
        equal.append(options.verified_cap)
    if options.max_batch_size is not None:
        plain.append(options.max_batch_size)
    else:
        equal.append(max(1, num_samples // MIN_STEPS))
    if mode == "streaming":
        plain.append(max(BLOCK_ROWS, batch))
    out = []
    for (length, samples), scale in zip(options.buckets, options.bucket_scale, strict=True):
        share = min(1.0, max(scale, 1e-6))
        limit = [math.floor(e / share) for e in equal] + plain + [max(samples, 1)]
        out.append(Bucket(length, max(batch, min(limit)), samples))
    last = out[-1]
    out[-1] = Bucket(last.length, batch, last.samples)
    return out


def _tokens(buckets: list[Bucket], pad_length: int) -> tuple[int, int]:
    return (
        pad_length * sum(b.samples for b in buckets),
        sum(b.length * b.samples for b in buckets),
    )


def _padding_cut(buckets: list[Bucket], pad_length: int, real_tokens: int) -> float:
    without, with_ = _tokens(buckets, pad_length)
    padding = without - real_tokens
    return (without - with_) / padding if padding > 0 else 0.0


def _in_memory_refused(need: int, usable: int, dataset: int) -> str:
    return (
        f"--mode in-memory: the padded dataset ({format_bytes(dataset)}) plus training would "
        f"need {format_bytes(need)}, over the usable {format_bytes(usable)} by "
        f"{format_bytes(need - usable)}; use --mode streaming, or --force to try anyway"
    )


def _nothing_fits(need: int, usable: int, options: PlanOptions, gpu: bool) -> str:
    helps = []
    if options.has_sequences:
        helps.append("a smaller --maxlen")
    helps.append("mixed precision")
    if not gpu:
        helps.append("a GPU (--device gpu)")
    helps.append("a larger --budget or smaller --safety")
    rows = options.whole_blocks[1]
    if rows > BLOCK_ROWS:
        helps.insert(
            0,
            f"Parquet row groups of at most {BLOCK_ROWS:,} rows (these hold up to {rows:,}, "
            "each read whole by every reading thread)",
        )
    return (
        f"nothing fits: even batch 1 needs {format_bytes(need)}, "
        f"{format_bytes(need - usable)} over the usable {format_bytes(usable)}; "
        f"what could help: {', '.join(helps)}"
    )
