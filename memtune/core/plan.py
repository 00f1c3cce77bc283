"""What a plan is: the batch, the data mode, the length buckets and the predicted peak, with
the reasons (``suggest --json``), and the options that shape one. Made by
:mod:`memtune.core.choose`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memtune.core.curve import MemoryCurve, Trial
from memtune.core.pipeline_memory import Mode


@dataclass(frozen=True)
class Bucket:
    """One length bucket: rows up to ``length`` long, padded to it, trained ``batch_size``
    at a time; ``samples`` of the training rows fall in it."""

    length: int
    batch_size: int
    samples: int


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
    has_tensors: bool = False  # some feed is an N-D sample (images, audio frames)
    validating: bool = False  # fit evaluates each epoch, unbucketed at the plan's batch
    blocks: bool = True  # streaming caches padded blocks (not rows read where they lie)
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
    # Measured: every bucket's batch shapes trained one after another in one process, as
    # fit runs them (each adds memory TensorFlow keeps); the prediction is never under it.
    buckets_together: int = 0


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
    ``worker_index`` (tf.distribute; ``global_batch_size`` = batch × replicas);
    ``batch_size_forced`` (``--batch-size`` chose the batch).
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
    batch_size_forced: bool = False  # --batch-size chose the batch, not the memory bound
    # The curve the plan was made on: what a kept plan judges other batches by (not JSON's).
    curve: MemoryCurve | None = field(default=None, compare=False, repr=False)

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
            "batch_size_forced": self.batch_size_forced,
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


def plan_from_json(value: dict[str, Any], curve: MemoryCurve | None = None) -> Plan:
    """A plan from its JSON (:meth:`Plan.to_json`), as a plan file keeps it. A malformed
    value raises KeyError / TypeError / ValueError for the caller to name."""
    ints = (
        "batch_size", "gradient_accumulation_steps", "budget_bytes", "usable_bytes",
        "num_samples", "per_sample_bytes", "predicted_peak_bytes", "replicas", "workers",
        "worker_index", "largest_safe_batch_size",
    )  # fmt: skip
    for key in ints:
        if isinstance(value[key], bool) or not isinstance(value[key], int):
            raise ValueError(f"{key}: {value[key]!r} is not an integer")
    if value["mode"] not in ("in-memory", "streaming"):
        raise ValueError(f"mode: {value['mode']!r}")
    tokens = value.get("tokens") or {}
    buckets = [
        Bucket(int(b["length"]), int(b["batch_size"]), int(b["samples"]))
        for b in value.get("buckets", [])
    ]
    samples = sum(b.samples for b in buckets)
    return Plan(
        **{key: value[key] for key in ints},
        mode=value["mode"],
        device=str(value["device"]),
        trials=[
            Trial(int(t["batch_size"]), int(t["peak_bytes"]), bool(t["exceeded"]), t.get("length"))
            for t in value["trials"]
        ],
        reasons=[str(r) for r in value["reasons"]],
        strategy=str(value["strategy"]),
        buckets=buckets,
        pad_length=int(tokens.get("without_buckets", 0)) // samples if samples else 0,
        real_tokens=int(tokens.get("real", 0)),
        batch_size_forced=bool(value.get("batch_size_forced", False)),
        curve=curve,
    )


def _tokens(buckets: list[Bucket], pad_length: int) -> tuple[int, int]:
    return (
        pad_length * sum(b.samples for b in buckets),
        sum(b.length * b.samples for b in buckets),
    )


def _padding_cut(buckets: list[Bucket], pad_length: int, real_tokens: int) -> float:
    without, with_ = _tokens(buckets, pad_length)
    padding = without - real_tokens
    return (without - with_) / padding if padding > 0 else 0.0
