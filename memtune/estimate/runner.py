"""Trials as one plan runs them: what every trial of the plan shares (:class:`Setup`), the
limit the planning tree keeps, and :class:`Trials` — this run's, the cache's, or a new one
in a watched child — with the cache's drift anchor."""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memtune.core.budget import Budget
from memtune.core.curve import MemoryCurve, Trial
from memtune.core.options import Options
from memtune.core.units import format_bytes
from memtune.data.footprint import ITEM_BYTES, Footprint
from memtune.estimate.cache import TrialCache, cache_key
from memtune.estimate.fitting import trial_noise
from memtune.estimate.search import FIRST_BATCH
from memtune.estimate.trials import FeedSpec, TrialSpec, bare_child_bytes, own_held, run_trial
from memtune.model.info import ModelInfo, is_spec
from memtune.probe import Probe
from memtune.proc import heap, progress, warm
from memtune.proc import tf as _tf

# What the warm parent may hold of its own while a trial runs beside it (pages the child
# wrote, copied: 20-50 MiB measured), with room to spare; and the extrapolation's margin.
WARM_ROOM = 96 * 1024**2
WARM_SLOPE_MARGIN = 1.25
MEMTUNE_TRIAL_FORMAT = "9"  # bump when what a trial measures changes (9: fixed mmap threshold)


@dataclass(frozen=True)
class Setup:
    """What every trial of one plan shares."""

    feeds: tuple[FeedSpec, ...]
    accumulation: int
    device: str
    limit_bytes: int
    cache: TrialCache
    num_samples: int
    cpu_replicas: int = 1  # trials run under MirroredStrategy on this many logical CPUs
    # Writes the user's rows for a trial batch to a file (None: synthetic rows).
    rows: Callable[[int, Path], Path] | None = None
    # What this process holds beyond a bare trial child (its data readers, the scan's
    # results): fit trains in this process, so its peak is a trial's plus this.
    parent_extra: int = 0
    validation: bool = False  # fit evaluates held-out rows each epoch: trials do too
    sequences: bool = False  # some feed is padded: a trial's rows include the longest

    @property
    def row_bytes(self) -> int:
        """One sample of the rows a trial holds (inputs and targets, padded)."""
        return sum(math.prod(f.shape) * ITEM_BYTES[f.dtype] for f in self.feeds)


def setup(
    model: ModelInfo,
    fp: Footprint,
    options: Options,
    budget: Budget,
    seen: Probe,
    num_samples: int,
    cpu_replicas: int = 1,
    rows: Callable[[int, Path], Path] | None = None,
) -> Setup:
    """Trial parameters and the cache keyed by everything that shapes a trial's peak.

    On a CPU the limit is the whole tree's: the planning process and the trial child
    together stay within :func:`trial_limit` (and what the host can give)."""
    accumulation = 2 if options.effective_batch_size else 1  # accumulators cost the same for any k
    validation = options.validation_split is not None or options.validation_data is not None
    feeds = tuple(FeedSpec(f.name, f.role, f.shape, f.dtype) for f in fp.feeds)
    key = cache_key(
        {
            **model.key,
            "feeds": feeds,
            "accumulation": accumulation,
            "device": budget.device,
            "format": MEMTUNE_TRIAL_FORMAT,
            "num_samples": num_samples,
            "cpu_replicas": cpu_replicas,
            "real_rows": rows is not None,
            "validation": validation,
        }
    )
    if budget.device == "cpu":  # a trial may never take more than the host can give
        limit = min(trial_limit(budget.budget_bytes, options.safety), seen.host.can_give)
    else:
        limit = budget.budget_bytes
    cache = TrialCache(key, enabled=not options.no_cache)
    extra = 0
    if budget.device == "cpu" and "tensorflow" not in sys.modules and not options.analytic:
        heap.release()  # what this process holds, not what it freed (fit reuses that)
        extra = max(0, own_held() - bare_child_bytes())
    return Setup(
        feeds,
        accumulation,
        budget.device,
        limit,
        cache,
        num_samples,
        cpu_replicas,
        rows,
        extra,
        validation,
        sequences=any(f.sequence for f in fp.feeds),
    )


def trial_limit(budget_bytes: int, safety: float) -> int:
    """What planning's whole tree may reach: the budget less half the safety margin.

    The margin covers a prediction for ``fit``, which nothing stops; a trial is watched
    every few milliseconds and stopped at this limit, so it needs less. Trials must reach
    the batch ``fit`` will run: beside the planning process (~130 MiB), a tree limited to
    the usable budget held them to 0.87-0.91 of it, and a stopped last trial left the plan
    at the one before (0.71-0.76 of usable on bench_estimate)."""
    return int(budget_bytes * (1 - safety / 2))


def child_share(s: Setup) -> int:
    """What a trial child may take now: the tree's limit less this process (CPU)."""
    return s.limit_bytes - own_held() if s.device == "cpu" else s.limit_bytes


def cached_curve(s: Setup, prior: MemoryCurve) -> tuple[MemoryCurve, list[Trial]]:
    """The prior refitted through whatever trials the cache already holds."""
    trials = s.cache.all()
    if not trials:
        return prior, []
    points = [(t.batch_size, _in_fit(s, t).peak_bytes) for t in trials]
    return prior.with_points(points, s.num_samples), trials


class Trials:
    """``trials(batch)``: one trial in a child process — this run's, the cache's, or a new
    one — its peak as ``fit``'s process would reach it."""

    def __init__(self, s: Setup, spec: TrialSpec, folder: Path) -> None:
        self.s, self.spec, self.folder = s, spec, folder
        self.fresh: dict[int, Trial] = {}  # measured by this run (the anchor)
        self.extra: list[Trial] = []  # trials at other lengths (buckets), as measured
        self.drifted = False  # the anchor moved or dropped the cache: measure lengths anew
        self.length: int | None = None  # a length bucket's trials: the input's length
        self.prior: MemoryCurve | None = None  # the search's prior (its slope, before two trials)
        self.seen: list[Trial] = []  # every trial of this plan, as measured

    def _beside_warm(self, batch: int) -> bool:
        """Whether a trial may be forked from the warm parent: no trial was stopped yet and
        its peak, extrapolated from the trials that fitted (after one, along the prior's
        slope), leaves room for what the warm parent holds of its own. A trial near its
        limit runs alone, sharing no page: the warm parent becomes it (or a fresh child
        does), and the trials after it start afresh."""
        if not warm.active() or any(t.exceeded for t in self.seen):
            return False
        points = sorted({(t.batch_size, t.peak_bytes) for t in self.seen if not t.exceeded})
        if not points:
            return batch <= FIRST_BATCH
        (b0, p0), (b1, p1) = points[-2] if len(points) > 1 else (0, 0), points[-1]
        if len(points) > 1:
            slope = max(0, (p1 - p0) // max(1, b1 - b0))
        elif self.prior is not None:
            slope = self.prior.per_sample_bytes
        else:
            return False
        predicted = p1 + int(slope * max(0, batch - b1) * WARM_SLOPE_MARGIN)
        return predicted + WARM_ROOM <= child_share(self.s)

    def apart(self, suffix: str, s: Setup, spec: TrialSpec) -> Trials:
        """Trials of another shape (a length bucket's, the buckets together), cached apart
        under ``suffix`` (measured anew when the anchor drifted). They judge room beside the
        warm parent by these full-length trials: a bound on theirs, for rows no longer;
        their own points stay apart, or the full-length slope would flatten."""
        cache = TrialCache(
            f"{self.s.cache.key}/{suffix}",
            enabled=self.s.cache.enabled,
            directory=self.s.cache.path.parent,
        )
        if self.drifted:  # measured in another period
            cache.clear()
        other = Trials(replace(s, cache=cache), spec, self.folder)
        other.seen, other.prior = list(self.seen), self.prior
        return other

    def run(self, batch: int, *, keep: bool = True) -> Trial:
        """A new trial, bypassing the cache (which it then updates if ``keep``)."""
        s = self.s
        progress.report("trial", batch=batch, limit=child_share(s), length=self.length)
        spec = self.spec
        if s.rows is not None:
            rows = s.rows(batch * s.cpu_replicas, self.folder / f"rows-{batch}.npz")
            spec = replace(spec, rows=str(rows))
        trial = run_trial(
            spec,
            batch,
            limit_bytes=s.limit_bytes,
            debug=_tf.debug_enabled(),
            alone=not self._beside_warm(batch),
        )
        self.seen.append(trial)
        if keep:
            s.cache.put(trial)
        return trial

    def __call__(self, batch: int) -> Trial:
        s = self.s
        trial = self.fresh.get(batch) or s.cache.get(batch, child_share(s))
        cached = trial is not None and batch not in self.fresh
        if trial is None:
            trial = self.run(batch)
        elif cached:
            self.seen.append(trial)
        progress.report(
            "trial_done",
            batch=batch,
            peak=trial.peak_bytes,
            exceeded=trial.exceeded,
            cached=cached,
            length=self.length,
        )
        return _in_fit(s, trial)

    def anchor(self) -> str | None:
        """Re-measure the cache's smallest batch now; shift every cached peak by the
        difference when it is beyond the noise (peaks drift between periods on one
        machine). Returns the reason line, or None with nothing cached."""
        cached = self.s.cache.all()
        if not cached:
            return None
        old = cached[0]
        now = self.run(old.batch_size, keep=False)
        progress.report(
            "trial_done",
            batch=now.batch_size,
            peak=now.peak_bytes,
            exceeded=now.exceeded,
            cached=False,
        )
        if now.exceeded:  # memory is tighter than when the cache was written: measure anew
            self.drifted = True
            self.s.cache.clear()
            return (
                f"a fresh trial at batch {old.batch_size:,} passed its limit where the cache "
                f"had {format_bytes(old.peak_bytes)}: the cached trials were dropped"
            )
        delta = now.peak_bytes - old.peak_bytes
        noise = trial_noise(old.peak_bytes)
        said = (
            f"a fresh trial at batch {old.batch_size:,} measured {format_bytes(now.peak_bytes)} "
            f"where the cache had {format_bytes(old.peak_bytes)}"
        )
        if abs(delta) <= noise:  # the cache's own value stays: the same search, the same plan
            return f"{said}: within the noise (± {format_bytes(noise)}), the cache holds"
        self.drifted = True
        self.fresh[now.batch_size] = now
        self.s.cache.put(now)
        self.s.cache.shift(delta, keep=now.batch_size)
        side = "up" if delta > 0 else "down"
        return f"{said}: the cached peaks are shifted {side} by {format_bytes(abs(delta))}"


@contextlib.contextmanager
def trials(model: Any, s: Setup) -> Iterator[Trials | None]:
    """The trial runner for this plan; None when the model cannot be handed to a child."""
    with contextlib.ExitStack() as stack:
        model_arg = _trial_model(model, stack)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="memtune-rows-")))
        if model_arg is None:
            yield None
            return
        spec = TrialSpec(
            model_arg,
            s.feeds,
            s.accumulation,
            s.device,
            num_samples=s.num_samples,
            cpu_replicas=s.cpu_replicas,
            validation=s.validation,
        )
        yield Trials(s, spec, folder)


def one_trial(model: Any, s: Setup, batch: int) -> Trial | None:
    """One trial at ``batch`` (``check``: a configured batch past what the trials support)."""
    with trials(model, s) as measure:
        return None if measure is None else measure(batch)


def _in_fit(s: Setup, trial: Trial) -> Trial:
    """A trial's peak as ``fit``'s process would reach it, less the data: plus what this
    process holds, less the batch of rows the trial held beside its steps' copies. Those
    rows are the plan's to count (the padded dataset in memory, the stream's blocks):
    counted in both, a whole-dataset trial of wide-mlp was predicted 5.6 % over fit, mlp's
    and conv2d's 3-4 %. On a GPU the rows are in host memory, not in the device's peak."""
    rows = trial.batch_size * s.cpu_replicas * s.row_bytes if s.device == "cpu" else 0
    return replace(trial, peak_bytes=max(1, trial.peak_bytes + s.parent_extra - rows))


def _trial_model(model: Any, stack: contextlib.ExitStack) -> str | None:
    """What a trial child loads: the user's spec, or a model object saved for it."""
    return str(model) if is_spec(model) else _saved_copy(model, stack)


def _saved_copy(keras_model: Any, stack: contextlib.ExitStack) -> str | None:
    """A model object saved to a temporary .keras file, so a trial child can load it."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="memtune-model-")))
    path = folder / "model.keras"
    try:
        with _tf.native_stderr_quiet():
            keras_model.save(path)
    except Exception:
        return None
    return str(path)
