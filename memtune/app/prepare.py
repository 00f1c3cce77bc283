"""Planning: where a run goes (device, topology, budget: resolved once), the inputs read,
the footprint sized, and a plan from the estimate path that applies — analytic, a GPU this
machine lacks, a forced batch, or measured trials. ``suggest``, ``fit`` and ``check`` share
it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from memtune.app import plan_cache, plan_file
from memtune.app.early import start_early
from memtune.app.inputs import named, scan_data, scanned, train_samples
from memtune.app.length_buckets import length_buckets
from memtune.app.plan_file import KeptPlan
from memtune.app.where import Where, locate
from memtune.core.budget import resolve_budget
from memtune.core.curve import MemoryCurve, Trial
from memtune.core.options import Options
from memtune.core.plan import Mode, Plan
from memtune.core.planner import Planner
from memtune.data.arrays import held_bytes
from memtune.data.blocks import whole_blocks
from memtune.data.buckets import LengthBuckets
from memtune.data.footprint import Footprint, footprint
from memtune.data.images import folder_of
from memtune.data.layout import layout_for
from memtune.data.scan import DataInfo, scan
from memtune.data.values import check_ids, check_values
from memtune.model.info import ModelInfo
from memtune.model.load import check_spec
from memtune.probe import Probe
from memtune.proc import progress, warm
from memtune.proc import tf as _tf

# A measured plan aims at this share of the usable budget, not all of it: ``fit``'s long run
# peaks 1-4 % above a few-step trial (bench_estimate), and a verification aimed at the very
# edge overshoots often, spending a trial to step down.
MEASURED_AIM = 0.95


WARM_PRELOAD = ("memtune.estimate.trial_child:preload",)


@dataclass(frozen=True)
class Prepared:
    """What suggest and fit share: where, the data, the model, the footprint and the plan.

    ``model_source`` is what the user gave; :attr:`model` loads it on first use, after
    planning, so the planning process never holds TensorFlow for a model given as a spec.
    """

    options: Options
    where: Where
    info: DataInfo
    model_source: Any
    footprint: Footprint
    planner: Planner
    plan: Plan
    curve: MemoryCurve
    # One more trial at a batch, its peak as fit's process reaches it (None: no trials).
    trial_at: Callable[[int], Trial | None] | None = None
    model_info: ModelInfo | None = None
    kept_from: str | None = None  # where a plan made before came from (a file, the cache)

    def depends_on(self, data: Any) -> dict[str, Any]:
        """What this plan holds for (a plan file's ``depends_on``)."""
        assert self.model_info is not None
        return plan_file.depends_on(self.model_info, data, self.info, self.where)

    @property
    def probe(self) -> Probe:
        return self.where.probe

    @cached_property
    def model(self) -> Any:
        """The compiled Keras model (loaded here the first time it is asked for)."""
        from memtune.model.load import load_model

        return load_model(self.model_source)

    def plan_at(
        self, batch_size: int, mode: Mode | None = None, curve: MemoryCurve | None = None
    ) -> Plan:
        """The plan for a given batch (and mode) on the same curve — what ``check`` judges."""
        return self.planner.at(batch_size, mode, curve or self.curve, self.plan.trials)


@dataclass(frozen=True)
class _Inputs:
    """The data scanned, the model read (in a child unless it is an object here), and one
    padded sample's footprint."""

    data: Any
    options: Options
    info: DataInfo
    model: ModelInfo
    loaded: Any  # the model, when it was read in this process
    footprint: Footprint


def prepare(
    model: Any,
    data: Any,
    options: Options,
    *,
    where: Where | None = None,
    kept: KeptPlan | None = None,
    check: Callable[[Options, Footprint, DataInfo], None] | None = None,
) -> Prepared:
    """Scan the data, read the model, size one sample, estimate and plan — or take ``kept``,
    a plan made before, when nothing it depends on has changed.

    A model given as a spec is read in a child process (``memtune.model.info``): this process
    loads TensorFlow only when ``fit`` asks for :attr:`Prepared.model`, after planning.
    ``check`` sees the options, footprint and data once they are read, before any trial.
    On a CPU the model reader and the trials fork from one warm parent (:mod:`memtune.proc.
    warm`) that loads TensorFlow once, on first use; it is gone before this returns.
    """
    where = where or locate(options)
    forks = where.device == "cpu" and not options.analytic
    with warm.scope(WARM_PRELOAD, enabled=forks, debug=_tf.debug_enabled()):
        return _prepare(model, data, options, where, kept, check)


def _prepare(
    model: Any,
    data: Any,
    options: Options,
    where: Where,
    kept: KeptPlan | None,
    check: Callable[[Options, Footprint, DataInfo], None] | None,
) -> Prepared:
    if kept is None and not options.no_cache:
        cached = plan_cache.lookup(model, data, options, where)
        kept = KeptPlan(_from_cache(cached), plan_cache.LABEL) if cached else None
    if kept is None:
        start_early(data)
    got = _read(model, data, options)
    if check is not None:
        check(got.options, got.footprint, got.info)
    prior = _prior(got, where)
    planner, buckets = _planner(got, where)
    source = model if got.loaded is None else got.loaded
    if kept is not None and plan_file.holds(
        kept, got.model, data, got.info, where, (planner.num_samples, planner.per_sample_bytes)
    ):
        plan, curve = kept.plan, kept.plan.curve or prior
        later = None if got.options.analytic or where.virtual else _trial_later(model, got, where)
        return Prepared(
            got.options, where, got.info, source, got.footprint, planner, plan, curve, later,
            got.model, kept.label,
        )  # fmt: skip
    if got.options.analytic:
        plan, curve, planner, trial_at = _analytic(planner, prior)
    elif where.virtual:
        plan, curve, planner, trial_at = _virtual_gpu(model, got, where, planner, prior)
    else:
        setup = _setup(got, where)
        if got.options.batch_size is not None:
            plan, curve, planner, trial_at = _forced(setup, planner, prior)
        else:
            plan, curve, planner, trial_at = _measured(model, got, setup, planner, prior, buckets)
    plan_cache.store(model, data, options, where, plan)
    return Prepared(
        got.options,
        where,
        got.info,
        source,
        got.footprint,
        planner,
        plan,
        curve,
        trial_at,
        got.model,
    )


def _trial_later(model: Any, got: _Inputs, where: Where) -> Callable[[int], Trial | None]:
    """``check`` on a kept plan: a trial at a batch past its trials, set up when asked."""

    def trial_at(batch: int) -> Trial | None:
        from memtune.estimate import runner

        return runner.one_trial(model, _setup(got, where), batch)

    return trial_at


def suggest_plan(model: Any, data: Any, options: Options) -> tuple[Plan, Probe]:
    """``suggest``: the plan cache's plan when nothing it depends on changed (no trial, no
    model-reading child, no scan), else a plan made now; and what the probe saw."""
    where = locate(options)
    if not options.no_cache:
        cached = plan_cache.lookup(model, data, options, where)
        if cached is not None:
            return _from_cache(cached), where.probe
    return prepare(model, data, options, where=where).plan, where.probe


def _from_cache(plan: Plan) -> Plan:
    note = "the plan cache's plan: nothing it depends on changed (--no-cache plans afresh)"
    return replace(plan, reasons=[*plan.reasons, note])


def _read(model: Any, data: Any, options: Options) -> _Inputs:
    """Data first (bad data fails before TensorFlow loads), unless it is named after the
    model's inputs and outputs; then the model; then the footprint."""
    from memtune.data.arrays import has_nd
    from memtune.data.images import is_image_folder
    from memtune.data.npy import is_npy_folder
    from memtune.data.python import is_dataset, is_pair
    from memtune.model import info as modelinfo
    from memtune.proc import tf as _tf

    check_spec(model)  # a typo in --model fails now, not after the data scan
    by_model = is_pair(data) or is_dataset(data) or has_nd(data) or is_image_folder(data)
    by_model = by_model or is_npy_folder(data)
    info = None if by_model else scanned(lambda: scan(data))
    progress.report("stage", what="reading the model")
    model_info, loaded = modelinfo.read(model, debug=_tf.debug_enabled())
    sig = model_info.signature
    if info is None:
        data, options = named(data, sig, options)
        info = scanned(lambda: scan_data(data, sig, options))
    fp = footprint(
        sig, info, targets=options.target, maxlen=options.maxlen, weight=options.sample_weight
    )
    fed = [(c, f.dtype, f.role) for f in fp.feeds for c in f.columns]
    labels = [s.label for s in info.source.shards]
    check_values(info.stats, fed, labels, allow_nonfinite=options.allow_nonfinite)
    single = [(f.name, f.columns[0]) for f in fp.inputs if len(f.columns) == 1]
    check_ids(info.stats, single, model_info.vocabularies, labels)
    return _Inputs(data, options, info, model_info, loaded, fp)


def _prior(got: _Inputs, where: Where) -> MemoryCurve:
    """The analytic curve; replicas on one CPU share its RAM (each step: the global batch)."""
    from memtune.estimate.analytic import analytic_curve, profile

    gpu = where.device != "cpu"
    prior = analytic_curve(profile(got.model.shape, got.footprint), got.footprint, gpu=gpu)
    replicas = where.topology.local_replicas if not gpu else 1
    if replicas > 1:
        prior = replace(prior, per_sample_bytes=prior.per_sample_bytes * replicas)
    return prior


def _planner(got: _Inputs, where: Where) -> tuple[Planner, LengthBuckets | None]:
    """Everything a plan needs but the curve: the data's shape, the topology, the buckets."""
    info, fp, options, topology = got.info, got.footprint, got.options, where.topology
    notes = list(info.warnings) + fp.notes
    if topology.active and where.device != "cpu" and len(topology.devices) > 1:
        notes.append(
            f"planned per replica against {where.device}, the GPU with the least free memory"
        )
    tensors = any(not f.sequence and len(f.shape) > 1 for f in fp.inputs)
    plan_options = options.plan_options(any(f.sequence for f in fp.feeds), tensors)
    if info.source.kind == "dataset" and folder_of(info) is None:
        why = f"the {info.source.label[1:-1]} (memtune streams it)"
        plan_options = replace(plan_options, mode="streaming", mode_why=why)
    per_sample = fp.per_sample_bytes
    if info.source.kind in ("arrays", "dataset"):  # rows read where they lie: no block cache
        plan_options = replace(plan_options, blocks=False)
    if info.source.kind == "arrays" and info.source.shards[0].path is not None:
        why = "memory-mapped .npy shards (rows are read as batches need them)"
        plan_options = replace(plan_options, mode="streaming", mode_why=why)
    elif info.source.kind == "arrays":  # held by the caller's process, where fit trains
        why = "the caller's arrays, already in memory"
        plan_options = replace(plan_options, mode="in-memory", mode_why=why)
        per_sample = max(per_sample, held_bytes(info))
    training = train_samples(info, options)
    whole = whole_blocks(info.source)
    plan_options = replace(
        plan_options,
        whole_blocks=(whole.smallest_rows, whole.largest_rows, whole.largest_decoded_bytes),
        held_out=info.num_samples - training,
        local_replicas=topology.local_replicas,
        strategy=topology.strategy,
        replicas=topology.replicas,
        workers=topology.workers,
        worker_index=topology.worker_index,
    )
    buckets, why_not = length_buckets(info, fp, options, topology, training)
    if why_not:
        notes.append(why_not)
    if buckets is not None:
        plan_options = replace(
            plan_options,
            buckets=tuple(zip(buckets.boundaries, buckets.samples, strict=True)),
            bucket_scale=tuple(b / buckets.pad_length for b in buckets.boundaries),
            pad_length=buckets.pad_length,
            real_tokens=buckets.real_tokens,
        )
    planner = Planner(where.budget, training, per_sample, plan_options, tuple(notes))
    return planner, buckets


Estimated = tuple[Plan, MemoryCurve, Planner, "Callable[[int], Trial | None] | None"]


def _analytic(planner: Planner, prior: MemoryCurve) -> Estimated:
    """``--analytic``: the prior alone, said to be unverified."""
    planner = planner.noted("no trials (--analytic): the plan is unverified")
    return planner.plan(prior), prior, planner, None


def _virtual_gpu(
    model: Any, got: _Inputs, where: Where, planner: Planner, prior: MemoryCurve
) -> Estimated:
    """A GPU this machine lacks: the prior's device state, the growth measured on CPU."""
    from memtune.estimate import measured, runner

    cpu_budget = resolve_budget(where.probe, "cpu", None)
    training = train_samples(got.info, got.options)
    setup = runner.setup(got.model, got.footprint, got.options, cpu_budget, where.probe, training)
    curve, trials = measured.slope_from_cpu(model, setup, prior)
    planner = planner.noted(
        f"estimate: this machine has no {where.device}; the peak is the analytic device state "
        "plus the per-sample growth measured in CPU trials"
    )
    return replace(planner.plan(curve), trials=trials), curve, planner, None


def _setup(got: _Inputs, where: Where) -> Any:  # -> memtune.estimate.runner.Setup
    """What every trial of this plan shares."""
    from memtune.estimate import runner

    cpu_replicas = where.topology.local_replicas if where.device == "cpu" else 1
    return runner.setup(
        got.model,
        got.footprint,
        got.options,
        where.budget,
        where.probe,
        train_samples(got.info, got.options) // where.topology.workers,
        cpu_replicas=cpu_replicas,
        rows=_trial_rows(got.info, got.footprint, got.options),
    )


def _forced(setup: Any, planner: Planner, prior: MemoryCurve) -> Estimated:
    """``--batch-size``: no new trials; the cache's earlier ones may still inform the peak."""
    from memtune.estimate import runner

    curve, trials = runner.cached_curve(setup, prior)
    why = f"{len(trials)} cached trial(s) used" if trials else "the plan is unverified"
    planner = planner.noted(f"no new trials (--batch-size is forced); {why}")
    return replace(planner.plan(curve), trials=trials), curve, planner, None


def _measured(
    model: Any,
    got: _Inputs,
    setup: Any,
    planner: Planner,
    prior: MemoryCurve,
    buckets: LengthBuckets | None,
) -> Estimated:
    """Trials, the search, and (with buckets) a trial at the shortest bucket's length."""
    from memtune.estimate import lengths, measured, runner

    shortest = None
    if buckets is not None:
        rows = _trial_rows(
            got.info, got.footprint, got.options, (buckets.feed, buckets.boundaries[0])
        )
        shortest = lengths.LengthTrial(
            buckets.feed,
            buckets.boundaries[0],
            buckets.pad_length,
            buckets.boundaries,
            buckets.samples[0],
            rows,
        )
    plan, curve, planner = measured.measured_plan(model, setup, prior, planner, shortest)
    return plan, curve, planner, functools.partial(runner.one_trial, model, setup)


def _trial_rows(
    info: DataInfo, fp: Footprint, options: Options, bucket: tuple[str, int] | None = None
) -> Callable[[int, Path], Path] | None:
    """Writes the user's rows for a trial batch (None for a tf.data pipeline: synthetic);
    ``bucket`` (input, length): rows no longer than that, cut to it."""
    if info.source.kind == "dataset":
        return None
    if info.source.kind == "arrays":
        from memtune.data.arrays import write_array_rows

        return lambda batch, path: write_array_rows(info, fp, batch, path)
    from memtune.data.sample import write_trial_rows

    layout = layout_for(info, fp, options)
    return lambda batch, path: write_trial_rows(layout, batch, path, bucket=bucket)
