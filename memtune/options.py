"""The options every command shares, validated once, named as the CLI flags in snake_case."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from memtune.constants import DEFAULT_BUCKETS
from memtune.distribute import STRATEGIES
from memtune.errors import MemtuneError
from memtune.footprint import parse_maxlen
from memtune.plan import Mode, PlanOptions
from memtune.units import parse_size

_SIDES = ("pre", "post")
_MODES = ("in-memory", "streaming")


@dataclass(frozen=True)
class Options:
    """Validated options; build with :func:`make_options`."""

    target: tuple[str, ...] = ()
    maxlen: dict[str | None, int] = field(default_factory=dict)
    padding: str = "pre"
    truncating: str = "pre"
    budget_bytes: int | None = None  # None: auto
    gpu_memory_bytes: int | None = None  # plan for a GPU of this size (maybe not present)
    safety: float = 0.10
    device: str = "auto"
    effective_batch_size: int | None = None
    max_batch_size: int | None = None
    batch_size: int | None = None
    mode: Mode | None = None
    force: bool = False
    analytic: bool = False
    no_cache: bool = False
    validation_data: Any = None
    validation_split: float | None = None
    strategy: str = "auto"
    cpu_replicas: int | None = None
    buckets: int = DEFAULT_BUCKETS  # length buckets of a None-length input; 0: off

    def plan_options(self, has_sequences: bool) -> PlanOptions:
        return PlanOptions(
            safety=self.safety,
            effective_batch_size=self.effective_batch_size,
            max_batch_size=self.max_batch_size,
            batch_size=self.batch_size,
            mode=self.mode,
            force=self.force,
            has_sequences=has_sequences,
        )


def _positive_int(flag: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MemtuneError(f"{flag} {value!r}: must be a positive integer")
    return value


def make_options(**kwargs: Any) -> Options:
    """Options from keyword arguments (the Python API and the CLI share this)."""
    known = {f.name for f in fields(Options)} | {"budget", "gpu_memory"}
    strategy = str(kwargs.get("strategy") or "auto").strip().lower()
    if strategy not in STRATEGIES:
        raise MemtuneError(f"--strategy {strategy!r}: expected {', '.join(STRATEGIES)}")
    for key in kwargs:
        if key not in known:
            raise MemtuneError(f"unknown option {key!r}")
    target = kwargs.get("target") or ()
    if isinstance(target, str):
        target = (target,)
    budget = kwargs.get("budget", "auto")
    if isinstance(budget, int) and not isinstance(budget, bool):
        if budget <= 0:
            raise MemtuneError(f"--budget {budget}: a size must be positive")
        budget_bytes: int | None = budget
    elif budget is None or str(budget).strip().lower() == "auto":
        budget_bytes = None
    else:
        budget_bytes = parse_size(str(budget), what="--budget")
    gpu_memory = kwargs.get("gpu_memory")
    gpu_memory_bytes = (
        None if gpu_memory is None else parse_size(str(gpu_memory), what="--gpu-memory")
    )
    safety = kwargs.get("safety", 0.10)
    try:
        safety = float(safety)
    except (TypeError, ValueError):
        raise MemtuneError(f"--safety {safety!r}: must be a number in [0, 1)") from None
    if not 0 <= safety < 1:
        raise MemtuneError(f"--safety {safety}: must be in [0, 1)")
    for flag in ("padding", "truncating"):
        if kwargs.get(flag, "pre") not in _SIDES:
            raise MemtuneError(f"--{flag} {kwargs[flag]!r}: expected pre or post")
    mode = kwargs.get("mode")
    if mode is not None and mode not in _MODES:
        raise MemtuneError(f"--mode {mode!r}: expected in-memory or streaming")
    split = kwargs.get("validation_split")
    if split is not None and not 0 < float(split) < 1:
        raise MemtuneError(f"--validation-split {split}: must be in (0, 1)")
    maxlen_value = kwargs.get("maxlen")
    if isinstance(maxlen_value, dict):
        maxlen = parse_maxlen([f"{k}={v}" if k else str(v) for k, v in maxlen_value.items()])
    else:
        maxlen = parse_maxlen([maxlen_value] if isinstance(maxlen_value, str) else maxlen_value)
    return Options(
        target=tuple(target),
        maxlen=maxlen,
        padding=kwargs.get("padding", "pre"),
        truncating=kwargs.get("truncating", "pre"),
        budget_bytes=budget_bytes,
        gpu_memory_bytes=gpu_memory_bytes,
        safety=safety,
        device=str(kwargs.get("device", "auto")),
        effective_batch_size=_positive_int(
            "--effective-batch-size", kwargs.get("effective_batch_size")
        ),
        max_batch_size=_positive_int("--max-batch-size", kwargs.get("max_batch_size")),
        batch_size=_positive_int("--batch-size", kwargs.get("batch_size")),
        mode=mode,
        force=bool(kwargs.get("force", False)),
        analytic=bool(kwargs.get("analytic", False)),
        no_cache=bool(kwargs.get("no_cache", False)),
        validation_data=kwargs.get("validation_data"),
        validation_split=None if split is None else float(split),
        strategy=strategy,
        cpu_replicas=_positive_int("--cpu-replicas", kwargs.get("cpu_replicas")),
        buckets=_buckets(kwargs.get("buckets")),
    )


def _buckets(value: Any) -> int:
    """``--buckets N`` (at most N buckets), ``off`` (or 0 / False), or None (the default)."""
    if value is None or value is True:
        return DEFAULT_BUCKETS
    if value is False or str(value).strip().lower() in ("off", "0"):
        return 0
    try:
        count = int(str(value).strip())
    except ValueError:
        raise MemtuneError(f"--buckets {value!r}: expected a positive integer or off") from None
    if count < 1:
        raise MemtuneError(f"--buckets {value!r}: expected a positive integer or off")
    return count
